"""Shared fixtures: a tiny real-photo dataset in the Udacity layout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "landmark_images"
TINY_CLASSES = ("03.Eiffel_Tower", "11.Niagara_Falls")

torch.set_num_threads(2)
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")  # the local Hub server speaks plain HTTP
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def unavailable(why: str) -> NoReturn:
    """A tool the test needs is missing or cannot start: skipped with the reason, except
    under CI (`CI=true`), which installs every such tool and so must fail instead."""
    if os.environ.get("CI"):
        pytest.fail(f"CI needs this: {why}")
    pytest.skip(why)


def real_photos(cls: str, split: str = "train", n: int = 8) -> list[Path]:
    folder = SHARED / split / cls
    if not folder.is_dir():
        pytest.fail(f"shared photos missing: {folder} (clone next to ../shared)")
    return sorted(folder.iterdir())[:n]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROOT/{train,test}/{03.Eiffel_Tower,11.Niagara_Falls}: 8 train + 3 test real photos
    each, and ROOT/unknown/: 6 photos of other places."""
    root = tmp_path_factory.mktemp("tiny") / "landmark_images"
    for cls in TINY_CLASSES:
        for split, n in (("train", 8), ("test", 3)):
            dest = root / split / cls
            dest.mkdir(parents=True)
            for p in real_photos(cls, split, n):
                shutil.copy(p, dest / p.name)
    (root / "unknown").mkdir()
    for p in sorted((SHARED / "unknown").iterdir())[:6]:
        shutil.copy(p, root / "unknown" / p.name)
    return root


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def tiny_model(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real exported model (tiny CNN, 2 epochs) with its report and plots beside it."""
    out = tmp_path_factory.mktemp("tiny_model")
    res = subprocess.run(
        [sys.executable, "-m", "train.scratch", "--data", str(tiny_data), "--model", "tiny_cnn",
         "--epochs", "2", "--batch-size", "8", "--workers", "0", "--output", str(out),
         "--cache-dir", str(out / "cache")],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return out / "scratch.pt"
