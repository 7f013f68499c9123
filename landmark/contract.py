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
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landmark.imageio import center_crop, resize_short

EXTRA_FILES = ("classes.json", "metadata.json")
METHODS = ("embed", "probs_and_embedding")  # besides forward
# TorchScript is the contract here; its deprecation notice is not news to our users.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
MIN_SIDE = 32


class PresetLike(Protocol):
    """How a model wants its input (train.presets.Preset, or a file's metadata["preset"])."""

    crop_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str


def calibrated_softmax(logits: Tensor, temperature: float,
                       background: float | None = None) -> Tensor:
    """softmax(logits / T), with an implicit background logit b joining the softmax and
    then dropped when given: p_i = exp(z_i) / (sum_j exp(z_j) + exp(b)). TorchScript
    compiles this same function into every exported model (train.export)."""
    z = logits / temperature
    if background is not None:
        z = torch.cat([z, torch.full_like(z[:, :1], background)], 1)
    return z.softmax(1)[:, : logits.shape[1]]


class EvalPreprocess(nn.Module):
    """float RGB [0, 1], any size -> resized, centre-cropped, normalised batch."""

    def __init__(self, preset: PresetLike) -> None:
        super().__init__()
        self.resize_size = preset.resize_size
        self.crop_size = preset.crop_size
        self.interpolation = preset.interpolation
        self.register_buffer("mean", torch.tensor(preset.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(preset.std).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        x = resize_short(x, self.resize_size, self.interpolation)
        x = center_crop(x, self.crop_size)
        return (x - self.mean) / self.std


class ExportedClassifier(nn.Module):
    """Wraps a trained network with its preprocessing: probabilities and embeddings.

    With `background` b, an implicit "none of these" logit joins the softmax and is then
    dropped (`calibrated_softmax`): the top probability then also falls when every logit
    is low (an energy score), which separates unknown places better, while the ranking of
    classes stays the same. The embedding is the features' descriptor, L2-normalised; with
    a `projection` (D, K), the normalised descriptor times it, normalised again: a smaller
    vector for every taught photo to store and search (train.finish.reexport --project)."""

    def __init__(self, features: nn.Module, head: nn.Module, preset: PresetLike,
                 temperature: float = 1.0, flip: bool = False,
                 background: float | None = None, projection: Tensor | None = None,
                 upright: Upright | None = None) -> None:
        super().__init__()
        self.turns = upright is not None
        self.register_buffer("upright_weight", upright.weight.float() if upright is not None
                             else torch.zeros(0, 0))
        self.register_buffer("upright_bias", upright.bias.float() if upright is not None
                             else torch.zeros(0))
        self.upright_threshold = upright.threshold if upright is not None else 1.0
        self.project = projection is not None
        self.register_buffer("projection", projection.float() if projection is not None
                             else torch.zeros(0, 0))
        self.pre = EvalPreprocess(preset)
        self.features, self.head = features, head
        self.temperature = float(temperature)
        self.flip = flip
        self.use_background = background is not None
        self.background = float(background) if background is not None else 0.0

    def probs(self, logits: Tensor) -> Tensor:
        background: float | None = self.background if self.use_background else None
        return calibrated_softmax(logits, self.temperature, background)

    def _features(self, x: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
        """The checked, preprocessed photos' (pooled, descriptor, layout), turned upright
        by the upright head, and the mirrored view's with flip."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError("expected a float (N, 3, H, W) batch")
        if x.shape[-1] < 32 or x.shape[-2] < 32:
            raise ValueError("images must be at least 32x32 pixels")
        x = self.pre(x.float())
        views = [self.features(x)]
        if self.turns:
            x, views[0] = self._upright(x, views[0])
        if self.flip:
            views.append(self.features(x.flip(-1)))
        return views

    def _upright(self, x: Tensor, feats: tuple[Tensor, Tensor, Tensor],
                 ) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """The preprocessed (square) photos with every turn the head is sure of undone,
        and their features: only those photos pass through the network again."""
        conf, turns = (feats[2] @ self.upright_weight.T + self.upright_bias).softmax(1).max(1)
        todo = ((turns != 0) & (conf >= self.upright_threshold)).nonzero().flatten()
        if todo.numel() == 0:
            return x, feats
        fixed = torch.stack([torch.rot90(x[int(i)], -int(turns[int(i)]), [1, 2])
                             for i in todo])
        again = self.features(fixed)
        x, out = x.clone(), [feats[0].clone(), feats[1].clone(), feats[2].clone()]
        x[todo] = fixed
        for j in range(3):
            out[j][todo] = again[j]
        return x, (out[0], out[1], out[2])

    def _probs(self, views: list[tuple[Tensor, Tensor, Tensor]]) -> Tensor:
        probs = self.probs(self.head(views[0][0]))
        if len(views) == 2:
            probs = 0.5 * (probs + self.probs(self.head(views[1][0])))
        return probs

    def _embed(self, views: list[tuple[Tensor, Tensor, Tensor]]) -> Tensor:
        mean = views[0][1] if len(views) == 1 else 0.5 * (views[0][1] + views[1][1])
        if self.project:
            mean = F.normalize(mean, dim=1) @ self.projection
        return F.normalize(mean, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self._probs(self._features(x))

    @torch.jit.export
    def embed(self, x: Tensor) -> Tensor:
        return self._embed(self._features(x))

    @torch.jit.export
    def probs_and_embedding(self, x: Tensor) -> tuple[Tensor, Tensor]:
        views = self._features(x)
        return self._probs(views), self._embed(views)


@dataclass
class Upright:
    """A linear head on the features' layout that tells how many quarter turns
    counter-clockwise (0-3) a photo shows; a turn is undone when its probability is at
    least `threshold` (train.finish.upright chooses it)."""

    weight: Tensor  # (4, L)
    bias: Tensor  # (4,)
    threshold: float


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


def read_extra(path: str | Path) -> tuple[list[str], dict]:
    """A model file's classes and metadata, read from its archive without loading the
    TorchScript (for a runtime that serves the `.onnx` twin instead)."""
    with zipfile.ZipFile(path) as archive:
        found = {n.rsplit("/", 1)[-1]: n for n in archive.namelist() if "/extra/" in n}
        return (json.loads(archive.read(found["classes.json"])),
                json.loads(archive.read(found["metadata.json"])))


def load_exported(path: str | Path) -> Exported:
    """Load a model file written by train.export (on CPU)."""
    extra = dict.fromkeys(EXTRA_FILES, "")
    module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    module.eval()
    return Exported(module, json.loads(extra["classes.json"]), json.loads(extra["metadata.json"]))
