"""Writing the export contract (landmark.contract): a trained network with its
preprocessing, calibration, optional flip TTA and upright head, as one TorchScript file,
and its networks as an ONNX file beside it (landmark.runtime serves either).

A network to export only has to offer `split_head()` -> (features: photo -> (pooled
(N, F), descriptor (N, D), layout (N, L)), head: pooled -> logits); see
train.models.embedding.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from landmark.contract import METHODS, ExportedClassifier, Upright, load_exported, save
from landmark.places.index import model_key
from landmark.runtime import INPUT, KEY, OUTPUTS, onnx_classifier, onnx_path
from train.presets import Preset


class ExportError(RuntimeError):
    """An export that failed its own verification."""


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
                 upright: Upright | None = None, onnx: bool = True) -> Path:
    """Write the TorchScript file, reload it and check it matches the eager model.

    `samples` are float (3, H, W) photos in [0, 1] of any size; each is run through the
    eager wrapper and the reloaded file, whose probabilities and embeddings must agree to
    within `atol`. `freeze` inlines the weights as constants (`torch.jit.freeze`): about
    10% faster on a CPU, but the file no longer has weights to train or re-export from.
    `projection` (D, K) maps the embedding to K dimensions (see ExportedClassifier);
    `upright` turns photos lying on their side upright first (see Upright). `onnx`
    writes the ONNX twin beside it (export_onnx).
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
    try:
        check(eager, load_exported(tmp).module, samples, atol, "exported model")
    except ExportError:
        tmp.unlink()
        raise
    tmp.replace(path)
    if onnx and projection is None:
        export_onnx(eager, meta, path, samples, atol)
    else:  # no twin (asked for none, or a projected embedding): never a stale one
        onnx_path(path).unlink(missing_ok=True)
    return path


def check(eager: nn.Module, module: nn.Module, samples: list[Tensor], atol: float,
          what: str) -> None:
    """Raise ExportError unless `module` gives the eager wrapper's probabilities and
    embeddings, within `atol`, on every sample photo (3, H, W)."""
    with torch.no_grad():
        for img in samples:
            want, got = eager.probs_and_embedding(img[None]), module.probs_and_embedding(
                img[None])
            diff = max((w - g).abs().max().item() for w, g in zip(want, got, strict=True))
            if diff > atol or got[0].shape != want[0].shape:
                raise ExportError(f"{what} disagrees with the eager model (max diff {diff})")


class Networks(nn.Module):
    """What the `.onnx` file computes (landmark.runtime): a preprocessed crop -> (logits,
    descriptor, upright scores), the networks alone; the wrapper stays the contract's."""

    def __init__(self, eager: ExportedClassifier) -> None:
        super().__init__()
        self.features, self.head = eager.features, eager.head
        weight, bias = eager.upright_weight, eager.upright_bias
        if not eager.turns:  # no upright head: scores that never turn a photo
            weight, bias = torch.zeros(4, 1), torch.zeros(4)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.turns = eager.turns

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pooled, descriptor, layout = self.features(x)
        scores = layout @ self.weight.T + self.bias if self.turns else \
            self.bias.expand(x.shape[0], 4)
        return self.head(pooled), descriptor, scores


def export_onnx(eager: ExportedClassifier, metadata: dict, model: Path,
                samples: list[Tensor], atol: float = 1e-4) -> Path:
    """Write the ONNX twin of the model file `model` beside it (its networks; see
    Networks), recording which file it was made from, then check that ONNX Runtime
    through the contract's wrapper matches the eager model on `samples`."""
    import onnx  # training side only: serving needs onnxruntime alone
    crop = int(metadata["preset"]["crop_size"])
    nets = Networks(eager).eval()
    path = onnx_path(model)
    tmp = path.with_name(f".{path.name}.tmp")
    dims = {"crop": {0: "photos"}, **{o: {0: "photos"} for o in OUTPUTS}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        torch.onnx.export(nets, (torch.rand(2, 3, crop, crop),), str(tmp), dynamo=True,
                          input_names=[INPUT], output_names=list(OUTPUTS),
                          dynamic_axes=dims, verbose=False, external_data=False)
    graph = onnx.load(str(tmp))
    onnx.helper.set_model_props(graph, {KEY: model_key(model)})
    onnx.save(graph, str(tmp))
    try:
        check(eager, onnx_classifier(tmp, metadata, threads=1, key=model_key(model)),
              samples, atol, "ONNX twin")
    except ExportError:
        tmp.unlink()
        raise
    tmp.replace(path)
    return path
