"""Frozen-backbone features, computed once and cached: seconds per epoch on a CPU."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from landmark.data.cache import CachedSplit
from landmark.presets import Preset, eval_transform, train_transform


def _state_digest(module: nn.Module) -> str:
    h = hashlib.sha1()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().float().sum().item().hex().encode())
    return h.hexdigest()[:12]


@torch.no_grad()
def extract(backbone: nn.Module, data: CachedSplit, preset: Preset, views: int = 1,
            batch: int = 64, seed: int = 0, desc: str = "features") -> tuple[Tensor, Tensor]:
    """Pooled features of every photo: view 0 is the eval crop, view 1 its mirror image,
    further views are random training augmentations. Returns (N * views, F), labels."""
    backbone.eval()
    gen_state = torch.get_rng_state()
    torch.manual_seed(seed)
    ev, aug = eval_transform(preset), train_transform(preset)
    feats = []
    bar = tqdm(total=len(data.labels) * views, desc=desc, unit="img")
    for v in range(views):
        for i in range(0, len(data.labels), batch):
            imgs = data.images[i:i + batch]
            x = torch.stack([aug(img) if v >= 2 else ev(img) for img in imgs])
            if v == 1:
                x = x.flip(-1)
            feats.append(backbone(x.contiguous(memory_format=torch.channels_last)).float())
            bar.update(len(imgs))
    bar.close()
    torch.set_rng_state(gen_state)
    return torch.cat(feats), data.labels.repeat(views)


def cached_features(backbone: nn.Module, data: CachedSplit, preset: Preset, views: int,
                    cache_dir: Path | None, desc: str) -> tuple[Tensor, Tensor]:
    """`extract`, memoised on disk by backbone weights, photos and views."""
    if cache_dir is None:
        return extract(backbone, data, preset, views, desc=desc)
    key = hashlib.sha1(f"{_state_digest(backbone)}{preset}{views}{data.paths}".encode())
    path = Path(cache_dir) / f"feat-{desc}-{key.hexdigest()[:16]}.pt"
    if path.exists():
        return tuple(torch.load(path))
    out = extract(backbone, data, preset, views, desc=desc)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)
    return out
