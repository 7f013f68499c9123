"""Writing the export contract (landmark.contract): a trained network with its
preprocessing, calibration, optional flip TTA and upright head, as one TorchScript file.

A network to export only has to offer `split_head()` -> (features: photo -> (pooled
(N, F), descriptor (N, D), layout (N, L)), head: pooled -> logits); see
train.models.embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landmark.contract import METHODS, load_exported, save
from train.calibration import calibrated_softmax
from train.presets import EvalPreprocess, Preset


class ExportError(RuntimeError):
    """An export that failed its own verification."""


class ExportedClassifier(nn.Module):
    """Wraps a trained network with its preprocessing: probabilities and embeddings.

    With `background` b, an implicit "none of these" logit joins the softmax and is then
    dropped (`calibrated_softmax`): the top probability then also falls when every logit
    is low (an energy score), which separates unknown places better, while the ranking of
    classes stays the same. The embedding is the features' descriptor, L2-normalised; with
    a `projection` (D, K), the normalised descriptor times it, normalised again: a smaller
    vector for every taught photo to store and search (train.finish.reexport --project)."""

    def __init__(self, features: nn.Module, head: nn.Module, preset: Preset,
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


def wrap(net: nn.Module, preset: Preset, temperature: float = 1.0, flip: bool = False,
         background: float | None = None, projection: Tensor | None = None,
         upright: Upright | None = None) -> ExportedClassifier:
    """The eager wrapper around `net` (which offers `split_head()`)."""
    features, head = net.eval().cpu().split_head()
    return ExportedClassifier(features, head, preset, temperature, flip, background,
                              projection, upright).eval()


def kept_parts(m: nn.Module) -> dict:
    """A wrapper's embedding projection and upright head (eager, or a loaded file's
    module), as keyword arguments of `wrap` and `export_model`: what exporting its network
    again must keep."""
    upright = (Upright(m.upright_weight, m.upright_bias, m.upright_threshold)
               if getattr(m, "turns", False) else None)
    return {"projection": m.projection if getattr(m, "project", False) else None,
            "upright": upright}


def script(eager: ExportedClassifier, preset: Preset) -> torch.jit.ScriptModule:
    """TorchScript the wrapper: the networks are traced at the crop size, the rest scripted."""
    example = torch.rand(1, 3, preset.crop_size, preset.crop_size)
    with torch.no_grad():
        features = torch.jit.trace(eager.features.to(memory_format=torch.contiguous_format),
                                   example)
        pooled = features(example)[0]
        head = torch.jit.trace(eager.head, pooled)
    background = eager.background if eager.use_background else None
    return torch.jit.script(ExportedClassifier(features, head, preset, eager.temperature,
                                               eager.flip, background, **kept_parts(eager)))


def export_model(net: nn.Module, preset: Preset, classes: list[str], metadata: dict,
                 path: str | Path, samples: list[Tensor], temperature: float = 1.0,
                 flip: bool = False, background: float | None = None, atol: float = 1e-4,
                 freeze: bool = False, projection: Tensor | None = None,
                 upright: Upright | None = None) -> Path:
    """Write the TorchScript file, reload it and check it matches the eager model.

    `samples` are float (3, H, W) photos in [0, 1] of any size; each is run through the
    eager wrapper and the reloaded file, whose probabilities and embeddings must agree to
    within `atol`. `freeze` inlines the weights as constants (`torch.jit.freeze`): about
    10% faster on a CPU, but the file no longer has weights to train or re-export from.
    `projection` (D, K) maps the embedding to K dimensions (see ExportedClassifier);
    `upright` turns photos lying on their side upright first (see Upright).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    eager = wrap(net, preset, temperature, flip, background, projection, upright)
    scripted = script(eager, preset)
    if freeze:
        scripted = torch.jit.freeze(scripted.eval(), preserved_attrs=list(METHODS))
    with torch.no_grad():
        dim = eager.embed(samples[0][None]).shape[1]
    meta = {**metadata, "preset": preset.to_dict(), "temperature": temperature,
            "tta_flip": flip, "background_logit": background, "num_classes": len(classes),
            "embedding_dim": dim, "frozen": freeze, "embedding": eager.features.kind + (
                f", projected to {dim} dimensions" if projection is not None else ""),
            "upright_threshold": upright.threshold if upright is not None else None}
    tmp = path.with_name(f".{path.name}.tmp")
    save(scripted, tmp, classes, meta)
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
