"""Training input pipeline against the model's own train step.

    python -m bench.pipeline --data ../shared/data/landmark_images [--model landmark_resnet]

Times the training loop (Trainer's own epoch code) over the real pipeline (cached photos,
RandAugment in a DataLoader worker) and over pre-made random tensors of the same shape.
The ratio says whether decoding/augmenting is the bottleneck; the goal is >= 90%.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from bench.report import update_section
from landmark.cli import add_data_arg
from landmark.imageio import resolve_workers
from train.data import TensorImageDataset, scan_split
from train.data.cache import cached_split
from train.engine import TrainConfig, Trainer
from train.models import create_model
from train.presets import train_transform


def time_epoch(trainer: Trainer, loader: DataLoader) -> float:
    """Images per second of one pass of Trainer.train_epoch over `loader`."""
    trainer.schedule(1, 10_000)
    start = time.perf_counter()
    trainer.train_epoch(loader, 0)
    return len(loader) * loader.batch_size / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arg(p)
    p.add_argument("--model", default="landmark_resnet",
                   help="registry architecture to train (default %(default)s)")
    p.add_argument("--batches", type=int, default=15, help="training batches timed per input")
    p.add_argument("--workers", type=int, default=-1, help="DataLoader workers (-1: auto)")
    args = p.parse_args()
    model = create_model(args.model, 19)
    cfg = TrainConfig(batch_size=64, workers=args.workers)
    trainer = Trainer(model, 19, cfg, Path("runs/bench_pipeline"))
    n = args.batches * cfg.batch_size
    data = cached_split(scan_split(args.data, "train"), model.preset.resize_size, desc="train")
    real = Subset(TensorImageDataset(data.images, data.labels, train_transform(model.preset)),
                  range(n))
    crop = model.preset.crop_size
    fake = TensorDataset(torch.randn(n, 3, crop, crop), torch.randint(0, 19, (n,)))
    loaders = {"pipeline": trainer.loader(real, True), "random tensors":
               DataLoader(fake, cfg.batch_size, shuffle=True, drop_last=True)}
    time_epoch(trainer, loaders["random tensors"])  # warm-up: allocator, oneDNN kernels
    rates = {k: time_epoch(trainer, dl) for k, dl in loaders.items()}
    ratio = rates["pipeline"] / rates["random tensors"]
    body = (f"Model `{args.model}` ({model.preset.crop_size} px crops), batch {cfg.batch_size}, "
            f"{args.batches} batches, precision {trainer.dtype}, {torch.get_num_threads()} "
            f"threads, {resolve_workers(args.workers, trainer.device)} DataLoader worker(s). "
            "Both rows run Trainer's own epoch code; the pipeline row feeds cached photos "
            "through RandAugment etc.\n\n"
            "| input | train images/s |\n|---|---|\n"
            + "".join(f"| {k} | {v:.1f} |\n" for k, v in rates.items())
            + f"\nPipeline / raw train step: **{ratio:.1%}** (goal >= 90%).")
    update_section("pipeline", "Training input pipeline", body)


if __name__ == "__main__":
    main()
