"""The export contract: one self-contained TorchScript file per model.

    m = torch.jit.load(path)
    probs = m(x)        # x: float32 (N, 3, H, W) RGB in [0, 1], any H, W >= 32 -> (N, C)
    emb = m.embed(x)    # (N, D) L2-normalised embeddings, for places the model never saw
    probs, emb = m.probs_and_embedding(x)   # both from one pass

Resize, crop and normalisation live inside the file; calibration temperature and the
optional flip test-time augmentation too. Extra files inside the archive:
`classes.json` (class folder names in output order) and `metadata.json`.
This module imports no architecture: serving code uses `load_exported` only; a network
to export only has to offer `split_head()` -> (features: photo -> (pooled (N, F),
descriptor (N, D)), head: pooled -> logits); see landmark.models.embedding.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landmark.calibration import calibrated_softmax
from landmark.presets import EvalPreprocess, Preset

EXTRA_FILES = ("classes.json", "metadata.json")
METHODS = ("embed", "probs_and_embedding")  # besides forward
# TorchScript is the contract here; its deprecation notice is not news to our users.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
MIN_SIDE = 32


class ExportError(RuntimeError):
    """An export that failed its own verification."""


class ExportedClassifier(nn.Module):
    """Wraps a trained network with its preprocessing: probabilities and embeddings.

    With `background` b, an implicit "none of these" logit joins the softmax and is then
    dropped (`calibrated_softmax`): the top probability then also falls when every logit
    is low (an energy score), which separates unknown places better, while the ranking of
    classes stays the same. The embedding is the features' descriptor, L2-normalised; with
    a `projection` (D, K), the normalised descriptor times it, normalised again: a smaller
    vector for every taught photo to store and search (train.reexport --project)."""

    def __init__(self, features: nn.Module, head: nn.Module, preset: Preset,
                 temperature: float = 1.0, flip: bool = False,
                 background: float | None = None, projection: Tensor | None = None) -> None:
        super().__init__()
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

    def _features(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """The checked, preprocessed photos' (pooled, descriptor), and the mirrored view's
        with flip."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError("expected a float (N, 3, H, W) batch")
        if x.shape[-1] < 32 or x.shape[-2] < 32:
            raise ValueError("images must be at least 32x32 pixels")
        x = self.pre(x.float())
        views = [self.features(x)]
        if self.flip:
            views.append(self.features(x.flip(-1)))
        return views

    def _probs(self, views: list[tuple[Tensor, Tensor]]) -> Tensor:
        probs = self.probs(self.head(views[0][0]))
        if len(views) == 2:
            probs = 0.5 * (probs + self.probs(self.head(views[1][0])))
        return probs

    def _embed(self, views: list[tuple[Tensor, Tensor]]) -> Tensor:
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
class Exported:
    """A loaded model file: the callable module, its classes and metadata."""

    module: torch.jit.ScriptModule
    classes: list[str]
    metadata: dict


def wrap(net: nn.Module, preset: Preset, temperature: float = 1.0, flip: bool = False,
         background: float | None = None, projection: Tensor | None = None,
         ) -> ExportedClassifier:
    """The eager wrapper around `net` (which offers `split_head()`)."""
    features, head = net.eval().cpu().split_head()
    return ExportedClassifier(features, head, preset, temperature, flip, background,
                              projection).eval()


def projection_of(exp: Exported) -> Tensor | None:
    """A loaded file's embedding projection, to export its network again with it."""
    return exp.module.projection if getattr(exp.module, "project", False) else None


def script(eager: ExportedClassifier, preset: Preset) -> torch.jit.ScriptModule:
    """TorchScript the wrapper: the networks are traced at the crop size, the rest scripted."""
    example = torch.rand(1, 3, preset.crop_size, preset.crop_size)
    with torch.no_grad():
        features = torch.jit.trace(eager.features.to(memory_format=torch.contiguous_format),
                                   example)
        pooled, _ = features(example)
        head = torch.jit.trace(eager.head, pooled)
    background = eager.background if eager.use_background else None
    projection = eager.projection if eager.project else None
    return torch.jit.script(ExportedClassifier(features, head, preset, eager.temperature,
                                               eager.flip, background, projection))


def export_model(net: nn.Module, preset: Preset, classes: list[str], metadata: dict,
                 path: str | Path, samples: list[Tensor], temperature: float = 1.0,
                 flip: bool = False, background: float | None = None, atol: float = 1e-4,
                 freeze: bool = False, projection: Tensor | None = None) -> Path:
    """Write the TorchScript file, reload it and check it matches the eager model.

    `samples` are float (3, H, W) photos in [0, 1] of any size; each is run through the
    eager wrapper and the reloaded file, whose probabilities and embeddings must agree to
    within `atol`. `freeze` inlines the weights as constants (`torch.jit.freeze`): about
    10% faster on a CPU, but the file no longer has weights to train or re-export from.
    `projection` (D, K) maps the embedding to K dimensions (see ExportedClassifier).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    eager = wrap(net, preset, temperature, flip, background, projection)
    scripted = script(eager, preset)
    if freeze:
        scripted = torch.jit.freeze(scripted.eval(), preserved_attrs=list(METHODS))
    with torch.no_grad():
        dim = eager.embed(samples[0][None]).shape[1]
    meta = {**metadata, "preset": preset.to_dict(), "temperature": temperature,
            "tta_flip": flip, "background_logit": background, "num_classes": len(classes),
            "embedding_dim": dim, "frozen": freeze, "embedding": eager.features.kind + (
                f", projected to {dim} dimensions" if projection is not None else "")}
    tmp = path.with_name(f".{path.name}.tmp")
    _save(scripted, tmp, classes, meta)
    loaded = load_exported(tmp)
    with torch.no_grad():
        for img in samples:
            want, got = eager.probs_and_embedding(img[None]), loaded.module.probs_and_embedding(
                img[None])
            diff = max((w - g).abs().max().item() for w, g in zip(want, got, strict=True))
            if diff > atol or got[0].shape != (1, len(classes)):
                tmp.unlink()
                raise ExportError(f"exported model disagrees with eager model (max diff {diff})")
    tmp.replace(path)
    return path


def _save(module: torch.jit.ScriptModule, path: Path, classes: list[str], meta: dict) -> None:
    extra = {"classes.json": json.dumps(classes), "metadata.json": json.dumps(meta, indent=2)}
    torch.jit.save(module, str(path), _extra_files=extra)


def update_metadata(path: str | Path, updates: dict) -> Path:
    """Merge `updates` into a model file's metadata.json in place (atomically); the
    network is untouched, so this works on frozen files too."""
    path = Path(path)
    exp = load_exported(path)
    tmp = path.with_name(f".{path.name}.tmp")
    _save(exp.module, tmp, exp.classes, {**exp.metadata, **updates})
    tmp.replace(path)
    return path


def load_exported(path: str | Path) -> Exported:
    """Load a model file written by export_model (on CPU)."""
    extra = dict.fromkeys(EXTRA_FILES, "")
    module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    module.eval()
    return Exported(module, json.loads(extra["classes.json"]), json.loads(extra["metadata.json"]))
