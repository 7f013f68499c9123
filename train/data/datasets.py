"""Torch datasets over cached splits, and the seeded stratified validation split."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset

from train.data.layout import Split, scan_split

VAL_FRACTION = 0.1  # the trainers' default share of each class held out


def stratified_split(split: Split, val_fraction: float, seed: int = 0,
                     fold: tuple[int, int] | None = None) -> tuple[Split, Split]:
    """Carve a validation split out of `split`, the same share of every class, seeded.

    With `fold=(i, k)`, validation is instead part i of every class cut into k near-equal
    parts of the same seeded order, so the k folds hold out each photo exactly once
    (k-fold cross-validation); classes of one photo always stay in training."""
    gen = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for c in range(len(split.classes)):
        idx = [i for i, y in enumerate(split.labels) if y == c]
        order = [idx[i] for i in torch.randperm(len(idx), generator=gen).tolist()]
        if len(idx) < 2:
            lo = hi = 0
        elif fold is None:
            lo, hi = 0, round(len(idx) * val_fraction)
        else:
            lo, hi = (round(len(idx) * j / fold[1]) for j in (fold[0], fold[0] + 1))
        val_idx += order[lo:hi]
        train_idx += order[:lo] + order[hi:]

    def pick(ids: Sequence[int]) -> Split:
        ids = sorted(ids)
        return Split([split.paths[i] for i in ids], [split.labels[i] for i in ids], split.classes)

    return pick(train_idx), pick(val_idx)


def default_val_split(root: Path, classes: list[str] | None = None) -> Split:
    """The validation photos a trainer with its default --val-fraction and --seed holds
    out of ROOT/train/: photos a model chooses on but never trained on."""
    return stratified_split(scan_split(root, "train", classes), VAL_FRACTION)[1]


def split_unknown(n: int, exposure: bool = False, seed: int = 0) -> dict[str, list[int]]:
    """Seeded parts of `n` photos of unknown places, as index lists.

    `hold` (every other photo) is only ever reported on, whatever the options; `tune`
    chooses the open-set rule; with outlier `exposure`, two thirds of the tuning half move
    to `train`, to be trained on as "none of these"."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    rest = order[::2]
    tune, train = (rest[::3], rest[1::3] + rest[2::3]) if exposure else (rest, [])
    return {"train": sorted(train), "tune": sorted(tune), "hold": sorted(order[1::2])}


class TensorImageDataset(Dataset):
    """uint8 images in memory, transformed on the fly: (transform(img), label)."""

    def __init__(self, images: Tensor, labels: Tensor,
                 transform: Callable[[Tensor], Tensor]) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.transform(self.images[i]), self.labels[i]


def dataset_labels(ds: Dataset) -> Tensor:
    """The labels of a training set, without loading its images: cached photos, cached
    features, and their concatenations (outliers are labelled -1)."""
    if isinstance(ds, ConcatDataset):
        return torch.cat([dataset_labels(d) for d in ds.datasets])
    if isinstance(ds, Subset):
        return dataset_labels(ds.dataset)[list(ds.indices)]
    if isinstance(ds, TensorDataset):
        return ds.tensors[1]
    if isinstance(ds, TensorImageDataset):
        return ds.labels
    raise TypeError(f"cannot read the labels of a {type(ds).__name__}")


def class_weights(labels: Tensor, num_classes: int) -> Tensor:
    """Per-class loss weights, inversely proportional to each class's photos and averaging
    1 over the photos, so a balanced loss keeps the usual scale."""
    known = labels[labels >= 0]
    counts = torch.bincount(known, minlength=num_classes).float().clamp_min(1)
    return len(known) / (num_classes * counts)


def per_photo_weights(labels: Tensor) -> Tensor:
    """Sampling weights that draw every class (and the outliers, as one more group)
    equally often."""
    groups = labels.clone()
    groups[groups < 0] = int(labels.max()) + 1
    counts = torch.bincount(groups).float()
    return 1.0 / counts[groups]
