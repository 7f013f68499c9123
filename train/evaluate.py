"""Evaluate any model file that follows the export contract.

    python -m train.evaluate models/transfer.pt --data ../shared/data/landmark_images

Prints and writes (beside the model, or --out): top-1/top-3, per-class accuracy, ECE with
a reliability diagram, and the open-set figures at the model's own reject_threshold:
AUROC of known (test split) against unknown photos, share of known accepted and of
unknown rejected. Unknown photos default to DATA/unknown; only the half that training
did not use for choosing the threshold is scored unless --all-unknown is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from landmark.contract import Exported, load_exported
from landmark.metrics import classification_report, per_class_rows
from train import plots
from train.calibration import expected_calibration_error, open_set_report, reliability_bins
from train.data import DatasetError, scan_split, split_unknown
from train.data.cache import DEFAULT_CACHE_DIR, CachedSplit, cached_split
from train.data.layout import unknown_split


@torch.no_grad()
def file_probs(model: Exported, data: CachedSplit, batch: int = 64) -> torch.Tensor:
    """Run the TorchScript file itself over cached photos."""
    out = [model.module(data.images[i:i + batch].float() / 255.0)
           for i in range(0, len(data.paths), batch)]
    return torch.cat(out) if out else torch.empty(0, len(model.classes))


def evaluate(model_path: Path, data_root: Path, unknown: Path | None, split: str = "test",
             all_unknown: bool = False, cache_dir: Path | None = DEFAULT_CACHE_DIR) -> dict:
    """The full report of one model file on one labelled split (+ unknown photos)."""
    model = load_exported(model_path)
    preset = model.metadata["preset"]
    size, interp = preset["resize_size"], preset["interpolation"]
    known = cached_split(scan_split(data_root, split, model.classes), size, interp, cache_dir,
                         desc=split)
    probs = file_probs(model, known)
    report = classification_report(probs, known.labels, model.classes)
    report.update(model=str(model_path), split=split,
                  ece=expected_calibration_error(probs, known.labels),
                  reliability=reliability_bins(probs, known.labels))
    others = unknown_split(unknown or data_root / "unknown", model.classes)
    if others:
        unk = cached_split(others, size, interp, cache_dir, desc="unknown")
        keep = list(range(len(unk.paths))) if all_unknown else split_unknown(len(unk.paths))["hold"]
        unk_scores = file_probs(model, unk).max(1).values[keep]
        report["open_set"] = open_set_report(probs.max(1).values, unk_scores,
                                             float(model.metadata.get("reject_threshold", 0)))
        report["open_set"]["unknown_photos"] = "all" if all_unknown else "held-out half"
    return report


def print_report(r: dict) -> None:
    print(f"{r['model']} on {r['split']} ({r['n']} photos): top-1 {r['top1']:.4f}  "
          f"top-3 {r['top3']:.4f}  ECE {r['ece']:.4f}")
    for name, acc, n in per_class_rows(r["per_class"]):
        print(f"  {name:40s} {acc}  ({n} photos)")
    if "open_set" in r:
        o = r["open_set"]
        print(f"open set ({o['n_known']} known vs {o['n_unknown']} unknown, "
              f"{o['unknown_photos']}): AUROC {o['auroc']:.4f}; at threshold "
              f"{o['threshold']:.3f}: known accepted {o['known_accepted']:.3f}, unknown "
              f"rejected {o['unknown_rejected']:.3f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="TorchScript model file")
    p.add_argument("--data", type=Path, required=True, help="dataset root (with test/)")
    p.add_argument("--split", default="test", help="labelled split to score (default test)")
    p.add_argument("--unknown", type=Path, default=None, help="photos of other places")
    p.add_argument("--all-unknown", action="store_true",
                   help="score every unknown photo, also those used to pick the threshold")
    p.add_argument("--out", type=Path, default=None,
                   help="report stem (default: beside the model, MODEL.eval-SPLIT)")
    args = p.parse_args(argv)
    try:
        report = evaluate(args.model, args.data, args.unknown, args.split, args.all_unknown)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print_report(report)
    stem = args.out or args.model.with_suffix(f".eval-{args.split}")
    Path(f"{stem}.json").write_text(json.dumps(report, indent=2))
    plots.reliability_png(report["reliability"], report["reliability"], f"{stem}.reliability.png",
                          title=f"{args.model.name} on {args.split}: ECE {report['ece']:.3f}")
    print(f"wrote {stem}.json and {stem}.reliability.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
