"""Decode each photo once, resize it, and keep the whole split as one uint8 tensor file.

Two CPU cores cannot afford to decode JPEGs every epoch; a cached 146 px square costs
microseconds to augment. The cache is keyed by the file list, sizes, mtimes and size.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from landmark.imageio import ImageError, cache_image, load_image, to_tensor
from train import checkpoint
from train.data.layout import Split

log = logging.getLogger(__name__)
# A spawned worker imports torch first (~2.5 s on a 2-core machine), the time this process
# takes to decode about 64 photos: smaller splits are decoded here.
SERIAL_MAX = 64
DEFAULT_CACHE_DIR = Path(os.environ.get("LANDMARK_CACHE", Path.home() / ".cache" / "landmark"))


@dataclass
class CachedSplit:
    """Decoded photos of a split: images (N, 3, S, S) uint8, labels (N,), kept paths."""

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str]
    classes: list[str]
    skipped: list[str]

    def joined(self, other: CachedSplit) -> CachedSplit:
        """These photos followed by `other`'s (same classes)."""
        return CachedSplit(torch.cat([self.images, other.images]),
                           torch.cat([self.labels, other.labels]), self.paths + other.paths,
                           self.classes, self.skipped + other.skipped)

    def subset(self, idx: list[int]) -> CachedSplit:
        """The photos at positions `idx`."""
        return CachedSplit(self.images[idx], self.labels[idx], [self.paths[i] for i in idx],
                           self.classes, [])


def _worker_init() -> None:
    torch.set_num_threads(1)


def _decode(args: tuple[str, int, str]) -> tuple[torch.Tensor | None, str]:
    path, size, interpolation = args
    try:
        img = load_image(path, max_side=size * 2)
    except ImageError as e:
        return None, str(e)
    return cache_image(to_tensor(img), size, interpolation), ""


def _key(split: Split, size: int, interpolation: str) -> str:
    # v3: bilinear and bicubic caches resized in uint8 (landmark.imageio.cache_image)
    h = hashlib.sha1(f"v3:{size}:{interpolation}:{split.classes}".encode())
    for p, y in zip(split.paths, split.labels, strict=True):
        st = p.stat()
        h.update(f"{p}:{y}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _decoded(jobs: list[tuple[str, int, str]],
             workers: int) -> Iterator[tuple[torch.Tensor | None, str]]:
    """`_decode` of every job, in order: in `workers` processes, or here when 1."""
    if workers <= 1:
        yield from map(_decode, jobs)
        return
    # spawn, not fork: a forked child of a process that ran OpenMP kernels can deadlock
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
        yield from pool.map(_decode, jobs, chunksize=16)


def decode_split(split: Split, size: int, interpolation: str = "bilinear",
                 workers: int | None = None, desc: str = "decode") -> CachedSplit:
    """Decode and resize every photo of `split`; unreadable files are skipped and listed.
    `workers` None: two processes, or this one for a split of up to SERIAL_MAX photos."""
    jobs = [(str(p), size, interpolation) for p in split.paths]
    if workers is None:
        workers = 1 if len(jobs) <= SERIAL_MAX else min(2, os.cpu_count() or 1)
    images, labels, kept, skipped = [], [], [], []
    for (path, _, _), y, (img, err) in zip(
            jobs, split.labels, tqdm(_decoded(jobs, workers), total=len(jobs), desc=desc,
                                     unit="img"), strict=True):
        if img is None:
            skipped.append(err)
            continue
        images.append(img)
        labels.append(y)
        kept.append(path)
    if skipped:
        log.warning("skipped %d unreadable file(s), e.g. %s", len(skipped), skipped[0])
    stacked = torch.stack(images) if images else torch.empty(0, 3, size, size, dtype=torch.uint8)
    return CachedSplit(stacked, torch.tensor(labels, dtype=torch.long), kept,
                       split.classes, skipped)


def cached_split(split: Split, size: int, interpolation: str = "bilinear",
                 cache_dir: Path | None = DEFAULT_CACHE_DIR, desc: str = "decode") -> CachedSplit:
    """`decode_split`, memoised on disk in `cache_dir` (None disables the cache)."""
    if cache_dir is None:
        return decode_split(split, size, interpolation, desc=desc)
    path = Path(cache_dir) / f"{desc}-{_key(split, size, interpolation)}.pt"
    if path.exists():
        return CachedSplit(**torch.load(path, weights_only=False))
    data = decode_split(split, size, interpolation, desc=desc)
    checkpoint.save_atomic(data.__dict__, path)  # concurrent runs may share the cache
    return data
