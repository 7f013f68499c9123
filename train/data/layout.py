"""The Udacity landmark layout: ROOT/{train,test}/NN.Class_Name/*.jpg."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from landmark.imageio import list_images


class DatasetError(RuntimeError):
    """A dataset folder that is missing, empty or not in the expected layout."""


@dataclass(frozen=True)
class Split:
    """The photos of one split: paths, integer labels and the class folder names."""

    paths: list[Path]
    labels: list[int]
    classes: list[str]


def scan_split(root: str | Path, split: str, classes: list[str] | None = None) -> Split:
    """Read ROOT/split/<class>/* ; with `classes`, use that class order (e.g. train's)."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise DatasetError(f"dataset folder not found: {folder} (expected ROOT/{split}/NN.Class/)")
    found = sorted(d.name for d in folder.iterdir() if d.is_dir())
    classes = classes or found
    unknown = set(found) - set(classes)
    if unknown:
        raise DatasetError(f"{folder}: class folders not in training classes: {sorted(unknown)}")
    paths, labels = [], []
    for idx, name in enumerate(classes):
        for p in list_images(folder / name) if (folder / name).is_dir() else []:
            paths.append(p)
            labels.append(idx)
    if not paths:
        raise DatasetError(f"no images found in {folder} (expected {folder}/NN.Class_Name/*.jpg)")
    return Split(paths, labels, list(classes))


def unknown_split(folder: Path, classes: list[str]) -> Split | None:
    """Photos of other places (labelled -1) below `folder`, or None when it has none."""
    paths = list_images(folder) if folder.is_dir() else []
    return Split(paths, [-1] * len(paths), classes) if paths else None


def shown_places(places_root: Path) -> set[str]:
    """File names of the unknown/ photos that `places_root/places.json` says show one of
    its places (`also_in_unknown`): photos that stop being unknown once the place is taught."""
    info = json.loads((places_root / "places.json").read_text())
    return {f for meta in info.values() for f in meta.get("also_in_unknown", [])}
