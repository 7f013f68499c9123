"""Frozen-backbone features, computed once and cached: seconds per epoch on a CPU."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from train import checkpoint
from train.data.cache import CachedSplit
from train.presets import Preset, eval_transform, train_transform


def _state_digest(module: nn.Module) -> str:
    h = hashlib.sha1()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().float().sum().item().hex().encode())
    return h.hexdigest()[:12]


def _view(data: CachedSplit, preset: Preset, view: int, seed: int) -> Callable[[Tensor], Tensor]:
    """View 0: the eval crop; 1: its mirror image; 2+: random training augmentations."""
    ev, aug = eval_transform(preset), train_transform(preset)
    if view == 0:
        return ev
    if view == 1:
        return lambda img: ev(img).flip(-1)
    return aug


@torch.no_grad()
def extract(backbone: nn.Module, data: CachedSplit, preset: Preset, view: int = 0,
            batch: int = 64, seed: int = 0, desc: str = "features") -> Tensor:
    """Pooled backbone features (N, F) of one view of every photo (see `_view`)."""
    backbone.eval()
    device = next(backbone.parameters()).device
    rng = torch.get_rng_state()
    torch.manual_seed(seed + view)
    transform = _view(data, preset, view, seed)
    feats = []
    for i in tqdm(range(0, len(data.labels), batch), desc=f"{desc} view {view}", unit="batch"):
        x = torch.stack([transform(img) for img in data.images[i:i + batch]])
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        feats.append(backbone(x).float().cpu())
    torch.set_rng_state(rng)
    return torch.cat(feats)


def cached_features(backbone: nn.Module, data: CachedSplit, preset: Preset, views: int,
                    cache_dir: Path | None, desc: str) -> tuple[Tensor, Tensor]:
    """Features of `views` views of every photo stacked (N * views, F), with labels.

    Each view is memoised on disk by backbone weights, photos and view index, so asking
    for 4 views after 2 computes only the two new ones."""
    digest = _state_digest(backbone)
    out = []
    for view in range(views):
        if cache_dir is None:
            out.append(extract(backbone, data, preset, view, desc=desc))
            continue
        # the eval views (0, 1) depend only on the fields that compare (not augmentation)
        shape = preset if view >= 2 else [getattr(preset, f.name) for f in fields(preset)
                                          if f.compare]
        key = hashlib.sha1(f"{digest}{shape}{view}{data.paths}".encode()).hexdigest()[:16]
        path = Path(cache_dir) / f"feat-{desc}-{key}.pt"
        if path.exists():
            out.append(torch.load(path))
        else:
            out.append(extract(backbone, data, preset, view, desc=desc))
            checkpoint.save_atomic(out[-1], path)
    return torch.cat(out), data.labels.repeat(views)
