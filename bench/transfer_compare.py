"""Compare transfer backbones and strategies by VALIDATION top-1 (never the test split).

    python -m bench.transfer_compare --data ../shared/data/landmark_images

Runs train.transfer for each backbone (frozen features, --feature-views 1/2/4...) and
writes the table to bench/results/transfer_compare.md. Features are cached per view, so
the runs share work.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from landmark.cli import add_data_arg
from train import transfer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arg(p)
    p.add_argument("--models", nargs="+", default=["mobilenet_v2", "efficientnet_lite0",
                                                     "efficientnet_lite1", "efficientnet_lite2"],
                   help="backbones to compare")
    p.add_argument("--views", nargs="+", type=int, default=[1, 4],
                   help="augmented feature views per training photo to compare")
    p.add_argument("--out", type=Path, default=Path("bench/results/transfer_compare.md"),
                   help="markdown table to write")
    args = p.parse_args()
    store = args.out.with_suffix(".json")
    results = json.loads(store.read_text()) if store.exists() else {}
    for name in args.models:
        for views in args.views:
            run_dir = Path("runs/bench_transfer") / f"{name}-v{views}"
            start = time.time()
            transfer.main(["--data", str(args.data), "--model", name, "--feature-views",
                           str(views), "--tta", "off", "--output", str(run_dir)])
            report = json.loads((run_dir / "transfer.report.json").read_text())
            results[f"{name}|{views}"] = {"seconds": time.time() - start, "n": report["val"]["n"],
                                          "val_top1": report["val"]["top1"]}
            store.write_text(json.dumps(results, indent=2))  # merged across invocations
            print(f"{name} views={views}: val top-1 {report['val']['top1']:.3f}", flush=True)
    rows = [(*k.split("|"), v["seconds"], v["val_top1"]) for k, v in results.items()]
    lines = ["Frozen backbone + linear head on cached features; validation split (10% of "
             f"train, {next(iter(results.values()))['n']} photos). "
             f"`python -m bench.transfer_compare --data {args.data} [--models ...] [--views ...]`",
             "",
             "| backbone | feature views | wall time (s, 2 cores, incl. extraction) | "
             "val top-1 |", "|---|---|---|---|"]
    lines += [f"| {n} | {v} | {s:.0f} | {a:.3f} |" for n, v, s, a in sorted(rows)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
