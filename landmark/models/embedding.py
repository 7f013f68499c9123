"""What a network's exported `embed` returns: its features for the head, plus a descriptor.

A network's `split_head()` gives (features, head); `features(x)` returns the pair
(pooled features the head reads, descriptor for places), so the classifier and the
places index share one pass. Measured on `new_places` (docs/decisions.md, "Teaching
places"): GeM over the last two blocks and the final map beats the pooled features alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def gem(x: Tensor, p: float = 3.0, eps: float = 1e-6) -> Tensor:
    """Generalised-mean pooling of (N, C, H, W) maps: between average (p=1) and max."""
    return x.clamp(min=eps).pow(p).mean((-2, -1)).pow(1.0 / p)


class Pooled(nn.Module):
    """The embedding is the head's input itself."""

    kind = "pooled features"

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.net(x)
        return f, f


class MultiLayerGeM(nn.Module):
    """A timm backbone's pooled features, and GeM of some blocks' maps and its final map,
    each L2-normalised, concatenated (every layer weighs the same)."""

    def __init__(self, net: nn.Module, blocks: tuple[int, ...], p: float = 3.0) -> None:
        super().__init__()
        self.net = net
        self.indices = [b + 1 for b in blocks]  # timm counts the stem as index 0
        self.p = p
        self.kind = f"GeM (p={p:g}) of blocks {', '.join(map(str, blocks))} and the final map"

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        final, maps = self.net.forward_intermediates(x, indices=self.indices, extra_blocks=True)
        pooled = self.net.forward_head(final, pre_logits=True)
        parts = [F.normalize(gem(m, self.p), dim=1) for m in [*maps, final]]
        return pooled, torch.cat(parts, 1)
