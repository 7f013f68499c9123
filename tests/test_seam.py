"""The seam: `landmark/` (what serves) never imports `train/` (what only training needs)."""

import pkgutil
import subprocess
import sys

import landmark
from tests.conftest import REPO

BLOCK_TRAIN = """
import importlib, importlib.abc, sys

class NoTrain(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "train" or name.startswith("train."):
            raise ImportError(f"serving imported training code: {name}")

sys.meta_path.insert(0, NoTrain())
for name in sys.argv[1:]:
    importlib.import_module(name)
import app  # noqa: F401  the Gradio app is serving code too
print("imported", len(sys.argv) - 1)
"""


def landmark_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(landmark.__path__, "landmark."))


def test_every_landmark_module_imports_with_train_blocked() -> None:
    modules = landmark_modules()
    assert {"landmark.contract", "landmark.predict", "landmark.tag", "landmark.places.store",
            "landmark.hub"} <= set(modules)
    res = subprocess.run([sys.executable, "-c", BLOCK_TRAIN, *modules], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"imported {len(modules)}" in res.stdout


def test_the_blocker_catches_an_import_of_train() -> None:
    res = subprocess.run([sys.executable, "-c", BLOCK_TRAIN, "train.engine"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "serving imported training code: train" in res.stderr
