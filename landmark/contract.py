"""The export contract: one self-contained TorchScript file per model.

    m = torch.jit.load(path)
    probs = m(x)        # x: float32 (N, 3, H, W) RGB in [0, 1], any H, W >= 32 -> (N, C)
    emb = m.embed(x)    # (N, D) L2-normalised embeddings, for places the model never saw
    probs, emb = m.probs_and_embedding(x)   # both from one pass

Resize, crop and normalisation live inside the file; calibration temperature and the
optional flip test-time augmentation too, and optionally an upright head. Extra files
inside the archive: `classes.json` (class folder names in output order) and
`metadata.json`. This is the seam between training and serving: serving code loads files
with `load_exported` and never imports an architecture or `train/` (train.export writes
them).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

EXTRA_FILES = ("classes.json", "metadata.json")
METHODS = ("embed", "probs_and_embedding")  # besides forward
# TorchScript is the contract here; its deprecation notice is not news to our users.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
MIN_SIDE = 32


@dataclass
class Exported:
    """A loaded model file: the callable module, its classes and metadata."""

    module: torch.jit.ScriptModule
    classes: list[str]
    metadata: dict


def save(module: torch.jit.ScriptModule, path: Path, classes: list[str], meta: dict) -> None:
    """Write a module with its classes and metadata as the contract's extra files."""
    extra = {"classes.json": json.dumps(classes), "metadata.json": json.dumps(meta, indent=2)}
    torch.jit.save(module, str(path), _extra_files=extra)


def update_metadata(path: str | Path, updates: dict) -> Path:
    """Merge `updates` into a model file's metadata.json in place (atomically); the
    network is untouched, so this works on frozen files too."""
    path = Path(path)
    exp = load_exported(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save(exp.module, tmp, exp.classes, {**exp.metadata, **updates})
    tmp.replace(path)
    return path


def load_exported(path: str | Path) -> Exported:
    """Load a model file written by train.export (on CPU)."""
    extra = dict.fromkeys(EXTRA_FILES, "")
    module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    module.eval()
    return Exported(module, json.loads(extra["classes.json"]), json.loads(extra["metadata.json"]))
