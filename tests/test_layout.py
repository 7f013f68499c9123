from pathlib import Path

import pytest

from landmark.facts import display_name
from tests.conftest import SHARED
from train.data import DatasetError, scan_split, stratified_split


@pytest.mark.parametrize(("folder", "name"), [
    ("05.Golden_Gate_Bridge", "Golden Gate Bridge"),
    ("10.Mount_Rushmore_National_Memorial", "Mount Rushmore National Memorial"),
    ("00.Haleakala_National_Park", "Haleakala National Park"),
    ("Plain", "Plain"),
])
def test_display_name(folder: str, name: str) -> None:
    assert display_name(folder) == name


def test_scan_shared_layout() -> None:
    train = scan_split(SHARED, "train")
    assert len(train.classes) == 19
    assert train.classes[5] == "05.Golden_Gate_Bridge"
    assert len(train.paths) == 1553
    assert sorted(set(train.labels)) == list(range(19))
    test = scan_split(SHARED, "test", classes=train.classes)
    assert len(test.paths) == 536
    pairs = zip(test.paths, test.labels, strict=True)
    assert all(p.parent.name == test.classes[y] for p, y in pairs)


def test_missing_and_empty_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset folder not found"):
        scan_split(tmp_path / "nope", "train")
    (tmp_path / "train" / "00.A").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images found"):
        scan_split(tmp_path, "train")


def test_test_split_with_unknown_class_is_an_error(tiny_data: Path, tmp_path: Path) -> None:
    train = scan_split(tiny_data, "train")
    with pytest.raises(DatasetError, match="not in training classes"):
        scan_split(tiny_data, "test", classes=train.classes[:1])


def test_stratified_split_is_seeded_and_disjoint() -> None:
    full = scan_split(SHARED, "train")
    tr, va = stratified_split(full, 0.1, seed=3)
    tr2, va2 = stratified_split(full, 0.1, seed=3)
    assert va.paths == va2.paths and tr.paths == tr2.paths
    assert not set(tr.paths) & set(va.paths)
    assert len(tr.paths) + len(va.paths) == len(full.paths)
    for c in range(19):  # every class keeps ~10% in validation
        n = full.labels.count(c)
        assert va.labels.count(c) == round(n * 0.1)
    assert stratified_split(full, 0.1, seed=4)[1].paths != va.paths
