"""Train the from-scratch landmark CNN and export it as TorchScript.

Example (the command that produced models/scratch.pt is in README.md):
    python -m train.scratch --data ../shared/data/landmark_images
"""

from __future__ import annotations

import argparse

from train.engine import TrainConfig
from train.models import create_model, list_models
from train.runner import add_common_args, run

DEFAULTS = TrainConfig(epochs=500, batch_size=64, lr=3e-3, weight_decay=0.05,
                       warmup_epochs=3, label_smoothing=0.1, mixup=0.2, cutmix=1.0,
                       patience=150)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.scratch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="landmark_resnet", choices=list_models(),
                   help="architecture from the registry (default %(default)s)")
    p.add_argument("--crop-size", type=int, default=None,
                   help="training/eval crop in pixels (default: the model's own; "
                        "landmark_resnet: 160)")
    add_common_args(p, DEFAULTS, "scratch")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    kw = {"crop_size": args.crop_size} if args.crop_size else {}
    from train.data import scan_split  # class count decides the head
    from train.data.layout import DatasetError
    try:
        num_classes = len(scan_split(args.data, "train").classes)
    except DatasetError as e:
        raise SystemExit(f"error: {e}") from None
    model = create_model(args.model, num_classes, **kw)
    return run(args, model, "scratch")


if __name__ == "__main__":
    main()
