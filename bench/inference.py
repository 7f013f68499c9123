"""Inference speed of shipped models on this machine.

    python -m bench.inference --data ../shared/data/landmark_images [--models scratch transfer]

For each model file: single-photo latency p50/p95 (decode + preprocessing + model, the
app's path), batch throughput of `python -m landmark.tag` over the test photos, and the
model alone: the network's raw forward on random tensors at its crop size, the TorchScript
file (called with all threads, and on the single-threaded streams tagging uses), and the
same weights in eager PyTorch. Writes its section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from bench.report import take_turns, update_section
from landmark.cli import add_data_arg
from landmark.predict import BatchPlan, Predictor, stream_plan
from landmark.resolve import MODELS_DIR, resolve
from landmark.tag import run as tag_run
from landmark.tag import torch_threads
from train.data import scan_split
from train.export import ExportError, export_model, kept_parts, wrap
from train.finish.reexport import rebuild
from train.models import create_model

LATENCY_PHOTOS = 60


def streamed(fn, threads: int, calls: int = 5) -> float:
    """Calls per second of `fn` run as `landmark.tag` runs the model: parallel streams
    with a share of the intra-op threads each (`stream_plan`)."""
    streams, per_stream = stream_plan(threads)

    def call(_: int) -> None:
        with torch.no_grad():  # grad mode is per thread
            fn()

    with torch_threads(per_stream), ThreadPoolExecutor(streams) as pool:
        list(pool.map(call, range(streams)))
        start = time.perf_counter()
        list(pool.map(call, range(calls * streams)))
        return calls * streams / (time.perf_counter() - start)


def eager_twin(path: Path) -> torch.nn.Module | None:
    """The exported network rebuilt in eager PyTorch with the file's own weights (None for
    a frozen file, whose weights are inlined constants)."""
    try:
        net, preset, exp = rebuild(path)
    except ExportError:
        return None
    meta = exp.metadata
    return wrap(net, preset, meta["temperature"], meta["tta_flip"], meta["background_logit"],
                **kept_parts(exp.module))


def frozen_lite2_baseline(folder: Path) -> Path:
    """The issue's yardstick as a model file: ImageNet EfficientNet-Lite2 (the offline
    weights) with a linear head, exported at its own 260 px like any trained model. Only
    its speed is measured, so the head is left untrained."""
    net = create_model("efficientnet_lite2", 19).eval()
    return export_model(net, net.preset, [f"c{i}" for i in range(19)],
                        {"architecture": "efficientnet_lite2"}, folder / "frozen_lite2.pt",
                        [torch.rand(3, 300, 400)])


@torch.no_grad()
def latencies(preds: list[Predictor], photos: list[Path]) -> list[dict[str, float]]:
    """Single-photo latency p50/p95 (ms) of every model, interleaved photo by photo, so
    that drift on a shared VM falls on all models alike rather than on whichever ran
    while the machine was busy. Every model first tags every photo once: the file cache,
    and TorchScript's per-shape specialisation."""
    for pred in preds:
        for photo in photos:
            pred.tag(photo)
    lat = take_turns([lambda i, p=pred: p.tag(photos[i]) for pred in preds], len(photos))
    return [{"p50": np.percentile(t, 50) * 1e3, "p95": np.percentile(t, 95) * 1e3}
            for t in lat]


@torch.no_grad()
def bench_model(pred: Predictor, photos: list[Path], batch: int, repeats: int = 3) -> dict:
    """Throughputs as the median of `repeats` interleaved rounds, since a shared 2-core
    VM drifts between runs: `landmark.tag` on its own plan, the model alone on `batch`."""
    path = pred.path
    preset = pred.metadata["preset"]
    crop, size = preset["crop_size"], preset["resize_size"]
    x = torch.rand(batch, 3, size, size)
    eager = eager_twin(path)
    raw = torch.randn(batch, 3, crop, crop)
    models = [("torchscript", lambda: pred.module(x))]
    if eager is not None:
        models += [("eager", lambda: eager(x)),
                   ("raw forward", lambda: eager.head(eager.features(raw)[0]))]
    for _, fn in models:  # TorchScript's profiling executor optimises per batch shape
        for _ in range(2):
            fn()
    threads = torch.get_num_threads()
    rounds: dict[str, list[float]] = {}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            counts = tag_run(photos, pred, Path(tmp) / "t.jsonl")  # its own plan
            rounds.setdefault("tag", []).append(counts["tagged"] / (time.perf_counter() - start))
        for name, fn in models:
            fn()
            seconds = take_turns([lambda _, f=fn: f()], 5)[0]
            rounds.setdefault(name, []).append(batch / np.median(seconds))
        rounds.setdefault("streams", []).append(batch * streamed(models[0][1], threads))
    return {**{k: float(np.median(v)) for k, v in rounds.items()},
            "arch": pred.metadata["architecture"],
            "crop": crop, "frozen": bool(pred.metadata.get("frozen"))}


def row(label: str, r: dict, baseline_p50: float) -> str:
    """One table row; a frozen file has no eager twin, so its eager columns are blank."""
    measured = [r[k] for k in ("torchscript", "streams", "eager", "raw forward") if k in r]
    cells = [f"{r[k]:.1f}" if k in r else "—"
             for k in ("raw forward", "torchscript", "streams", "eager")]
    vs_raw = f"{r['tag'] / r['raw forward']:.0%}" if "raw forward" in r else "—"
    return (f"| {label} | {r['arch']} | {r['crop']} | {'yes' if r['frozen'] else 'no'} | "
            f"{r['p50']:.0f} | {r['p95']:.0f} | {r['p50'] / baseline_p50:.2f} | "
            f"{r['tag']:.1f} | {' | '.join(cells)} | {vs_raw} | "
            f"{r['tag'] / max(measured):.0%} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arg(p)
    p.add_argument("--models", nargs="+", default=["scratch", "transfer"],
                   help="bundled model names or .pt files")
    p.add_argument("--photos", type=int, default=None,
                   help="test photos for throughput (default: all)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="photos per call where the model runs alone (default 32)")
    p.add_argument("--runtimes", nargs="+", default=["torchscript", "onnx"],
                   choices=["torchscript", "onnx"],
                   help="runtimes of the shipped models, side by side (default both)")
    p.add_argument("--repeats", type=int, default=3,
                   help="interleaved rounds of the throughput figures (median reported)")
    args = p.parse_args()
    photos = scan_split(args.data, "test").paths[: args.photos]
    streams, _ = stream_plan(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        paths = [frozen_lite2_baseline(Path(tmp)), *(resolve(name) for name in args.models
                                                      for _ in args.runtimes)]
        runtimes = ["torchscript", *(rt for _ in args.models for rt in args.runtimes)]
        preds = [Predictor(path, rt) for path, rt in zip(paths, runtimes, strict=True)]
        lat = latencies(preds, photos[:LATENCY_PHOTOS])
        results = [{**bench_model(pred, photos, args.batch_size, args.repeats), **t}
                   for pred, t in zip(preds, lat, strict=True)]
    baseline = results[0]["p50"]
    rows = [row("frozen-Lite2 baseline", results[0], baseline)]
    for path, rt, r in zip(paths[1:], runtimes[1:], results[1:], strict=True):
        label = path.name if path.parent == MODELS_DIR else f"{path.parent.name}/{path.name}"
        rows.append(row(f"{label} ({rt})", r, baseline))
    plan = BatchPlan.for_device()
    body = (f"{len(photos)} test photos; photos/s unless noted; "
            f"throughputs are the median of {args.repeats} interleaved rounds. "
            f"Latency: one photo through `Predictor.tag` (decode, preprocessing, model), "
            f"{min(LATENCY_PHOTOS, len(photos))} photos, the models taking turns photo by "
            "photo; the "
            "frozen-Lite2 baseline is ImageNet EfficientNet-Lite2 with a linear head, exported "
            "at 260 px like a trained model, measured in the same run (the speed target is a "
            "p50 of at most 0.60 of it). "
            "Batch tagging: `landmark.tag` with its defaults (here: decoding in the main "
            f"process, batches of {plan.max_batch} on {streams} single-threaded streams). The "
            f"next four columns are the model alone on a batch of {args.batch_size} already in "
            "memory: the bare network's forward on random tensors (no preprocessing, all "
            "threads), the TorchScript file called with all threads, the same file on the "
            "streams tagging uses, and its eager twin (a frozen file has none). The last "
            "column divides batch tagging by the fastest of those. "
            "Each shipped file runs on each runtime in the same run: on an `(onnx)` row the "
            "TorchScript columns are its `.onnx` twin in ONNX Runtime, inside the contract's "
            "wrapper.\n\n"
            "| model | architecture | input px | frozen | latency p50 (ms) | p95 (ms) | "
            "p50 / baseline | batch tagging | raw forward | TorchScript | TorchScript, streams | "
            "eager | tagging / raw forward | tagging / fastest model alone |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows))
    update_section("inference", "Inference speed", body)


if __name__ == "__main__":
    main()
