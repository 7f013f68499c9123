"""Compare from-scratch architectures on the same budget, by VALIDATION top-1 only.

    python -m bench.scratch_arch --data ../shared/data/landmark_images --epochs 15

Each candidate is trained with train.scratch's defaults for the same number of epochs
(at 128 px, without MixUp/CutMix: the setting this comparison was run in);
the table (params, seconds/epoch, best validation top-1) goes to stdout and to
bench/results/scratch_arch.md. The test split is never looked at here.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from landmark.cli import add_data_arg
from train import scratch
from train.models import create_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arg(p)
    p.add_argument("--epochs", type=int, default=15, help="epochs per architecture")
    p.add_argument("--models", nargs="+", default=["vgg_bn", "landmark_resnet_s",
                                                     "landmark_resnet"],
                   help="registry architectures to compare")
    p.add_argument("--out", type=Path, default=Path("bench/results/scratch_arch.md"),
                   help="markdown table to write")
    args = p.parse_args()
    rows = []
    for name in args.models:
        run_dir = Path("runs/bench_arch") / name
        start = time.time()
        scratch.main(["--data", str(args.data), "--model", name, "--epochs", str(args.epochs),
                      "--warmup-epochs", "2", "--tta", "off",
                      "--crop-size", "128", "--mixup", "0", "--cutmix", "0",
                      "--output", str(run_dir)])
        history = json.loads((run_dir / "scratch.report.json").read_text())
        params = sum(t.numel() for t in create_model(name, 19).parameters())
        rows.append((name, params / 1e6, (time.time() - start) / args.epochs,
                     history["val"]["top1"]))
        print(f"{name}: val top-1 {rows[-1][3]:.3f}", flush=True)
    lines = [f"Budget: {args.epochs} epochs each, `python -m bench.scratch_arch --data "
             f"{args.data} --epochs {args.epochs}`; validation split (10% of train).", "",
             "| model | params (M) | s/epoch (2 CPU cores) | best val top-1 |", "|---|---|---|---|"]
    lines += [f"| {n} | {pm:.2f} | {s:.0f} | {a:.3f} |" for n, pm, s, a in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
