"""The export contract: one self-contained TorchScript file per model.

    m = torch.jit.load(path)
    probs = m(x)   # x: float32 (N, 3, H, W) RGB in [0, 1], any H, W >= 32 -> (N, C)

Resize, crop and normalisation live inside the file; calibration temperature and the
optional flip test-time augmentation too. Extra files inside the archive:
`classes.json` (class folder names in output order) and `metadata.json`.
This module imports no architecture: serving code uses `load_exported` only.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from landmark.presets import EvalPreprocess, Preset

EXTRA_FILES = ("classes.json", "metadata.json")
# TorchScript is the contract here; its deprecation notice is not news to our users.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
MIN_SIDE = 32


class ExportError(RuntimeError):
    """An export that failed its own verification."""


class ExportedClassifier(nn.Module):
    """Wraps a trained network with its preprocessing and turns logits into probabilities.

    With `background` b, an implicit "none of these" logit joins the softmax and is then
    dropped: p_i = exp(z_i) / (sum_j exp(z_j) + exp(b)), z = logits / T. The top
    probability then also falls when every logit is low (an energy score), which
    separates unknown places better, while the ranking of classes stays the same."""

    def __init__(self, net: nn.Module, preset: Preset, temperature: float = 1.0,
                 flip: bool = False, background: float | None = None) -> None:
        super().__init__()
        self.pre = EvalPreprocess(preset)
        self.net = net
        self.temperature = float(temperature)
        self.flip = flip
        self.use_background = background is not None
        self.background = float(background) if background is not None else 0.0

    def probs(self, logits: Tensor) -> Tensor:
        z = logits / self.temperature
        if self.use_background:
            z = torch.cat([z, torch.full_like(z[:, :1], self.background)], 1)
            return z.softmax(1)[:, :-1]
        return z.softmax(1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError("expected a float (N, 3, H, W) batch")
        if x.shape[-1] < 32 or x.shape[-2] < 32:
            raise ValueError("images must be at least 32x32 pixels")
        x = self.pre(x.float())
        probs = self.probs(self.net(x))
        if self.flip:
            probs = 0.5 * (probs + self.probs(self.net(x.flip(-1))))
        return probs


@dataclass
class Exported:
    """A loaded model file: the callable module, its classes and metadata."""

    module: torch.jit.ScriptModule
    classes: list[str]
    metadata: dict


def script(net: nn.Module, preset: Preset, temperature: float = 1.0,
           flip: bool = False, background: float | None = None) -> torch.jit.ScriptModule:
    """TorchScript the wrapper: the network is traced at its crop size, the rest scripted."""
    net = net.eval().to("cpu", memory_format=torch.contiguous_format)
    example = torch.rand(1, 3, preset.crop_size, preset.crop_size)
    with torch.no_grad():
        traced = torch.jit.trace(net, example)
    return torch.jit.script(ExportedClassifier(traced, preset, temperature, flip, background))


def export_model(net: nn.Module, preset: Preset, classes: list[str], metadata: dict,
                 path: str | Path, samples: list[Tensor], temperature: float = 1.0,
                 flip: bool = False, background: float | None = None,
                 atol: float = 1e-4) -> Path:
    """Write the TorchScript file, reload it and check it matches the eager model.

    `samples` are float (3, H, W) photos in [0, 1] of any size; each is run through the
    eager wrapper and the reloaded file, which must agree to within `atol`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    eager = ExportedClassifier(net.eval().cpu(), preset, temperature, flip, background).eval()
    scripted = script(net, preset, temperature, flip, background)
    meta = {**metadata, "preset": preset.to_dict(), "temperature": temperature,
            "tta_flip": flip, "background_logit": background, "num_classes": len(classes)}
    extra = {"classes.json": json.dumps(classes), "metadata.json": json.dumps(meta, indent=2)}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.jit.save(scripted, str(tmp), _extra_files=extra)
    loaded = load_exported(tmp)
    with torch.no_grad():
        for img in samples:
            want, got = eager(img[None]), loaded.module(img[None])
            diff = (want - got).abs().max().item()
            if diff > atol or got.shape != (1, len(classes)):
                tmp.unlink()
                raise ExportError(f"exported model disagrees with eager model (max diff {diff})")
    tmp.replace(path)
    return path


def load_exported(path: str | Path) -> Exported:
    """Load a model file written by export_model (on CPU)."""
    extra = dict.fromkeys(EXTRA_FILES, "")
    module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    module.eval()
    return Exported(module, json.loads(extra["classes.json"]), json.loads(extra["metadata.json"]))
