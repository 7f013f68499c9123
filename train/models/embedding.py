"""What a network's exported `embed` returns: its features for the head, plus a descriptor.

A network's `split_head()` gives (features, head); `features(x)` returns the triple
(pooled features the head reads, descriptor for places, layout), so the classifier, the
places index and the upright head share one pass. The layout is a 2x2 grid of the final
map's channel means: where things are in the frame, which global pooling discards and
which tells a photo lying on its side (train.export.Upright). Measured on `new_places`
(docs/decisions.md, "Teaching places"): GeM over the last two blocks and the final map
beats the pooled features alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def gem(x: Tensor, p: float = 3.0, eps: float = 1e-6) -> Tensor:
    """Generalised-mean pooling of (N, C, H, W) maps: between average (p=1) and max."""
    return x.clamp(min=eps).pow(p).mean((-2, -1)).pow(1.0 / p)


def layout(final: Tensor) -> Tensor:
    """(N, 4C): the means of a (N, C, H, W) map's four quadrants."""
    return F.adaptive_avg_pool2d(final, 2).flatten(1)


class Pooled(nn.Module):
    """The embedding is the head's input itself: `net` is a network to its final map
    followed by the layers that pool it."""

    kind = "pooled features"

    def __init__(self, maps: nn.Module, pool: nn.Module) -> None:
        super().__init__()
        self.net = nn.Sequential(maps, pool)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        final = self.net[0](x)
        f = self.net[1](final)
        return f, f, layout(final)


class TimmPooled(nn.Module):
    """A timm backbone's pooled features, as embedding too."""

    kind = "pooled features"

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        final = self.net.forward_features(x)
        f = self.net.forward_head(final, pre_logits=True)
        return f, f, layout(final)


class MultiLayerGeM(nn.Module):
    """A timm backbone's pooled features, and GeM of some blocks' maps and its final map,
    each L2-normalised, concatenated (every layer weighs the same)."""

    def __init__(self, net: nn.Module, blocks: tuple[int, ...], p: float = 3.0) -> None:
        super().__init__()
        self.net = net
        self.indices = [b + 1 for b in blocks]  # timm counts the stem as index 0
        self.p = p
        self.kind = f"GeM (p={p:g}) of blocks {', '.join(map(str, blocks))} and the final map"

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        final, maps = self.net.forward_intermediates(x, indices=self.indices, extra_blocks=True)
        pooled = self.net.forward_head(final, pre_logits=True)
        parts = [F.normalize(gem(m, self.p), dim=1) for m in [*maps, final]]
        return pooled, torch.cat(parts, 1), layout(final)
