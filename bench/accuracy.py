"""Accuracy of every shipped model on the test split, with calibration and open-set figures.

    python -m bench.accuracy --data ../shared/data/landmark_images

Runs train.evaluate on each models/*.pt (the TorchScript files themselves) and writes its
section of BENCHMARKS.md: top-1, top-3, ECE, the open-set figures at each model's own
threshold, and per-class accuracy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.report import update_section
from landmark.cli import add_data_arg
from landmark.facts import display_name
from landmark.metrics import share_text
from landmark.resolve import bundled, resolve
from train.evaluate import evaluate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arg(p)
    p.add_argument("--models", nargs="+", default=sorted(bundled()),
                   help="model names or .pt files (default: every bundled model)")
    args = p.parse_args()
    reports = {Path(m).stem: evaluate(resolve(m), args.data, None) for m in args.models}
    lines = ["Test split (536 photos, 19 classes) and the held-out half of `unknown/` (276 "
             "photos of other places, never used to choose anything). In brackets: 95% Wilson "
             "intervals, how far each share could move on another draw of as many photos.", "",
             "| model | top-1 | top-3 | ECE | open-set AUROC | known accepted | "
             "unknown rejected | threshold |", "|---|---|---|---|---|---|---|---|"]
    for name, r in reports.items():
        o = r.get("open_set", {})
        nan = float("nan")
        lines.append(f"| {name} | {share_text(r['top1'], r['n'])} | "
                     f"{share_text(r['top3'], r['n'])} | "
                     f"{r['ece']:.4f} | {o.get('auroc', nan):.4f} | "
                     f"{share_text(o.get('known_accepted', nan), o.get('n_known', 0))} | "
                     f"{share_text(o.get('unknown_rejected', nan), o.get('n_unknown', 0))} | "
                     f"{o.get('threshold', nan):.3f} |")
    names = list(reports)
    lines += ["", "Per-class test accuracy:", "",
              "| landmark | photos | " + " | ".join(names) + " |",
              "|---|---|" + "---|" * len(names)]
    first = reports[names[0]]["per_class"]
    for c, v in first.items():
        accs = " | ".join(f"{reports[n]['per_class'][c]['accuracy']:.3f}" for n in names)
        lines.append(f"| {display_name(c)} | {v['support']} | {accs} |")
    update_section("accuracy", "Accuracy of the shipped models", "\n".join(lines))


if __name__ == "__main__":
    main()
