"""Would an int8 ONNX twin hold? Static quantization of a shipped model's `.onnx`, measured.

    python -m bench.int8 --data ../shared/data/landmark_images [--model transfer]

Quantizes the `.onnx` twin with ONNX Runtime's static quantization (QDQ, per-channel int8
weights, uint8 activations), calibrated on training photos outside the validation split.
Then compares it with the float twin, both inside the contract's wrapper: top-1 on the
validation split (the issue's rule: keep int8 only if it drops by at most 0.2 points) and on
test/ (reported, never chosen on), how often top-1 agrees, embedding cosine, and the ONNX
file alone on decoded crops from 1 and 2 threads. Nothing is written beside the model; the
quantized file lives in a temporary folder. Writes its section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.onnx_alone import onnx_input, onnx_rate
from bench.report import update_section
from landmark.cli import add_data_arg
from landmark.metrics import wilson_interval
from landmark.predict import Predictor
from landmark.resolve import resolve
from landmark.runtime import INPUT, onnx_classifier, onnx_path
from train.data import Split, scan_split
from train.data.datasets import VAL_FRACTION, stratified_split


def quantize(src: Path, out: Path, pred: Predictor, calibration: list[Path]) -> None:
    """Static QDQ quantization of `src` into `out`, calibrated on `calibration` photos."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Photos(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = iter(calibration)

        def get_next(self) -> dict | None:
            path = next(self.left, None)
            return None if path is None else {INPUT: onnx_input(pred, path)}

    prepared = out.with_suffix(".pre.onnx")
    # symbolic shape inference cannot follow the upright layout's Expand; ONNX's own can
    quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(out), Photos(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)


@torch.no_grad()
def compare(fp32: Predictor, int8: Predictor, split: Split) -> dict:
    """Top-1 of each, top-1 agreement and embedding cosine over `split`."""
    right, agree, cosines = np.zeros(2), 0, []
    for path, label in zip(split.paths, split.labels, strict=True):
        square = fp32.prepare(fp32.load(path))[None]
        (p, e), (q, f) = fp32.forward(square), int8.forward(square)
        right += [int(p[0].argmax() == label), int(q[0].argmax() == label)]
        agree += int(p[0].argmax() == q[0].argmax())
        cosines.append(float(torch.nn.functional.cosine_similarity(e, f)[0]))
    n = len(split.paths)
    return {"n": n, "top1": right / n, "agree": agree, "cos_median": float(np.median(cosines)),
            "cos_min": min(cosines)}


def twin_predictor(pred: Predictor, onnx_file: Path) -> Predictor:
    """`pred`'s model file served through another ONNX file of the same networks."""
    twin = Predictor(pred.path, "onnx")
    twin.module = onnx_classifier(onnx_file, twin.metadata)
    return twin


def report(root: Path, model: str, calibrate: int, photos: int) -> str:
    """The section's body: the rule's verdict, then a table per split and per thread count."""
    fp32 = Predictor(resolve(model), "onnx")
    train, val = stratified_split(scan_split(root, "train", fp32.classes), VAL_FRACTION)
    test = scan_split(root, "test", fp32.classes)
    calibration = random.Random(0).sample(list(train.paths), min(calibrate, len(train.paths)))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "int8.onnx"
        quantize(onnx_path(fp32.path), out, fp32, calibration)
        int8 = twin_predictor(fp32, out)
        results = {name: compare(fp32, int8, split) for name, split in (("validation", val),
                                                                         ("test", test))}
        crops = [onnx_input(fp32, p) for p in random.Random(1).sample(list(test.paths), photos)]
        rates = {(kind, t): onnx_rate(path, crops, t) for kind, path in
                 (("float", onnx_path(fp32.path)), ("int8", out)) for t in (1, 2)}
        sizes = (onnx_path(fp32.path).stat().st_size / 2**20, out.stat().st_size / 2**20)
    drop = (results["validation"]["top1"][0] - results["validation"]["top1"][1]) * 100
    lines = [f"Model `{model}`; {len(calibration)} calibration photos from train/ outside the "
             f"validation split; {photos} test crops for speed. Top-1 with its 95% Wilson "
             "interval. Rule: keep int8 only if validation top-1 drops by at most 0.2 points.",
             "", "| split | photos | float top-1 | int8 top-1 | same top-1 | embedding cosine, "
             "median (min) |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        cells = [f"{s:.4f} [{lo:.3f}, {hi:.3f}]" for s in r["top1"]
                 for lo, hi in [wilson_interval(s, r["n"])]]
        lines.append(f"| {name} | {r['n']} | {cells[0]} | {cells[1]} | {r['agree']}/{r['n']} | "
                     f"{r['cos_median']:.4f} ({r['cos_min']:.4f}) |")
    lines += ["", "| ONNX file alone | 1 thread | 2 threads | size (MB) |", "|---|---|---|---|",
              *(f"| {kind} | {rates[kind, 1]:.1f} | {rates[kind, 2]:.1f} | {size:.1f} |"
                for kind, size in zip(("float", "int8"), sizes, strict=True)),
              "", f"- Validation top-1 {'drops' if drop > 0 else 'changes'} by {drop:.2f} "
              f"points: the rule {'holds' if drop <= 0.2 else 'fails'}; int8 runs "
              f"{rates['int8', 2] / rates['float', 2]:.2f}× the float file from 2 threads."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.int8", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arg(p)
    p.add_argument("--model", default="transfer", help="bundled model name (default transfer)")
    p.add_argument("--calibrate", type=int, default=128,
                   help="training photos to calibrate on (default 128)")
    p.add_argument("--photos", type=int, default=96, help="test crops for speed (default 96)")
    args = p.parse_args()
    update_section("int8", "An int8 ONNX twin: would it hold?",
                   report(args.data, args.model, args.calibrate, args.photos))


if __name__ == "__main__":
    main()
