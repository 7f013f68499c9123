"""Two runtimes for one model file: TorchScript (the `.pt` itself, the design's contract)
and ONNX Runtime (the `.onnx` beside it, which train.export writes from the same network).

The `.onnx` holds only the networks: a preprocessed crop -> (logits, descriptor, upright
scores). Everything around them (preprocessing, the upright turn, the mirror view,
calibration, the embedding's normalisation) is `landmark.contract.ExportedClassifier`,
the very module compiled into the `.pt`, so both runtimes answer alike by construction.
`auto` takes ONNX Runtime when the `.onnx` file and onnxruntime are both there.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from landmark.contract import ExportedClassifier, Upright

RUNTIMES = ("auto", "onnx", "torchscript")
INPUT = "crop"
OUTPUTS = ("logits", "descriptor", "upright")
KEY = "model_key"  # metadata_props: the model_key of the .pt it was made from


class RuntimeChoiceError(ValueError):
    """A runtime asked for that this model file or this machine cannot give."""


def onnx_path(model: str | Path) -> Path:
    """Where a model file's ONNX twin lies: beside it, same stem."""
    return Path(model).with_suffix(".onnx")


def choose(model: str | Path, runtime: str | None = None) -> str:
    """"onnx" or "torchscript" for `model`: `runtime`, else LANDMARK_RUNTIME, else auto."""
    runtime = runtime or os.environ.get("LANDMARK_RUNTIME") or "auto"
    if runtime not in RUNTIMES:
        raise RuntimeChoiceError(f"runtime {runtime!r}: choose from {', '.join(RUNTIMES)}")
    twin = onnx_path(model)
    missing = (f"no {twin.name} beside {model}" if not twin.is_file() else
               "onnxruntime is not installed" if importlib.util.find_spec("onnxruntime") is None
               else None)
    if runtime == "onnx" and missing:
        raise RuntimeChoiceError(f"runtime onnx: {missing}")
    return "onnx" if runtime == "onnx" or (runtime == "auto" and not missing) else "torchscript"


def add_runtime_arg(p: argparse.ArgumentParser) -> None:
    """--runtime, the same in every command that serves a model."""
    p.add_argument("--runtime", choices=RUNTIMES, default=None,
                   help="how model files run: onnx (ONNX Runtime, the .onnx beside each "
                   ".pt), torchscript (the .pt), or auto: ONNX Runtime where both the file "
                   "and onnxruntime are there (default: LANDMARK_RUNTIME, else auto)")


class OnnxNetworks(nn.Module):
    """The `.onnx` file's networks in an ONNX Runtime session, called as the TorchScript
    file's `features` are: crop batch -> (logits, descriptor, upright scores)."""

    def __init__(self, path: Path, threads: int, key: str | None = None) -> None:
        super().__init__()
        import onnxruntime as ort  # only where the ONNX runtime is chosen
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        made_from = self.session.get_modelmeta().custom_metadata_map.get(KEY)
        if key is not None and made_from != key:
            raise RuntimeChoiceError(f"{path.name} was made from another model file than "
                                     "the one beside it (export it again: python -m "
                                     "train.finish.onnx)")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.session.run(list(OUTPUTS), {INPUT: x.contiguous().numpy()})
        return tuple(torch.from_numpy(o) for o in out)  # type: ignore[return-value]


def onnx_classifier(path: str | Path, metadata: dict, threads: int | None = None,
                    key: str | None = None) -> ExportedClassifier:
    """The model as ONNX Runtime serves it: the contract's own wrapper around the `.onnx`
    networks. Its logits come out of the networks, so the head is the identity, and the
    upright scores too, so the upright head's weights are the identity. With `key`, the
    file must record that it was made from the model file of that key (model_key)."""
    if metadata.get("embedding", "").endswith("dimensions"):
        raise RuntimeChoiceError("a file with a projected embedding (--project) is served by "
                                 "TorchScript only")
    threshold = metadata.get("upright_threshold")
    upright = Upright(torch.eye(4), torch.zeros(4), threshold) if threshold is not None else None
    return ExportedClassifier(
        OnnxNetworks(Path(path), threads or torch.get_num_threads(), key), nn.Identity(),
        SimpleNamespace(**metadata["preset"]), metadata["temperature"],
        metadata["tta_flip"], metadata["background_logit"], None, upright).eval()
