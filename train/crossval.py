"""K-fold cross-validation of a training recipe: K runs, each holding out one part of every
class, pooled into out-of-fold figures and a "no known landmark" threshold.

A single run's validation split is small (157 photos of the shared set): too few errors
to rank recipes, and too few low-confidence photos to place the reject threshold (the
share of known photos it keeps has come out 2-5 points lower on new photos). Here every
training photo is held out once, by a model that never trained on it.

Runs `python -m train.TRAINER ARGS --fold I/K --output OUTPUT/foldI` for every fold I
(logs in OUTPUT/foldI/train.log; finished folds are skipped and interrupted ones resume,
so rerunning the command continues), then writes OUTPUT/crossval.json: out-of-fold top-1
and top-3 with 95% Wilson intervals, ECE, every fold's top-1, and the reject threshold
chosen on all out-of-fold photos + the tuning unknown photos by the rule a single run
uses; OUTPUT/threshold.png plots known accepted and unknown rejected at every threshold.
Ship that threshold with a finished run of the same recipe:
  python -m train.TRAINER ARGS --export-only --threshold-from OUTPUT/crossval.json

Examples:
  python -m train.crossval --output runs/cv/frozen transfer \\
      --data ../shared/data/landmark_images --model efficientnet_lite2
  python -m train.crossval --jobs 5 --output runs/cv/finetune transfer \\
      --data data/landmark_images --model efficientnet_lite2 --strategy finetune  # GPU box
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import torch
from tqdm import tqdm

from landmark.metrics import topk_accuracy, wilson_interval
from train import plots
from train.calibration import expected_calibration_error, open_set_report, reject_threshold
from train.runner import VAL_OUTPUTS, setup_logging

log = logging.getLogger("train")
OWNED = ("--fold", "--output", "--export", "--export-only", "--threshold-from", "--resume",
         "--push-to-hub")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.crossval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folds", type=int, default=5, help="K (default %(default)s)")
    p.add_argument("--jobs", type=int, default=1,
                   help="folds trained at once (default %(default)s; one per GPU or while "
                        "a GPU has room)")
    p.add_argument("--output", type=Path, default=Path("runs") / "crossval",
                   help="folder for the fold runs and crossval.json (default %(default)s)")
    p.add_argument("--accept-known", type=float, default=0.95,
                   help="share of out-of-fold photos the threshold keeps at least "
                        "(default %(default)s)")
    p.add_argument("trainer", choices=["scratch", "transfer"], help="training entry point")
    p.add_argument("args", nargs=argparse.REMAINDER,
                   help="its options, as for python -m train.TRAINER (--data is required)")
    args = p.parse_args(argv)
    if args.folds < 2 or args.jobs < 1:
        p.error("--folds must be at least 2 and --jobs at least 1")
    owned = [a for a in args.args if a.split("=")[0] in OWNED]
    if owned:
        p.error(f"{', '.join(owned)}: crossval sets these for each fold run itself")
    return args


def fold_command(args: argparse.Namespace, fold: int) -> list[str]:
    """The training command of one fold: resumes its own checkpoints when rerun."""
    return [sys.executable, "-m", f"train.{args.trainer}", *args.args,
            "--fold", f"{fold}/{args.folds}", "--output", str(args.output / f"fold{fold}"),
            "--resume"]


def fold_env(jobs: int) -> dict[str, str]:
    """The environment of a fold run: folds running side by side share the CPU cores
    (unless OMP_NUM_THREADS is set) instead of each starting a thread per core."""
    env = dict(os.environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env


def run_fold(args: argparse.Namespace, fold: int) -> dict:
    """Train and assess one fold (unless it already finished); its val_outputs.json."""
    out = args.output / f"fold{fold}"
    saved = out / VAL_OUTPUTS
    earlier = json.loads(saved.read_text()) if saved.is_file() else {}
    if earlier.get("fold") == [fold, args.folds]:
        log.info("fold %d/%d: finished earlier, reusing %s", fold, args.folds, saved)
        return earlier
    out.mkdir(parents=True, exist_ok=True)
    cmd = fold_command(args, fold)
    log.info("fold %d/%d: %s  (log: %s)", fold, args.folds, shlex.join(["python", *cmd[1:]]),
             out / "train.log")
    with open(out / "train.log", "a") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=fold_env(args.jobs)
                            ).returncode
    if rc != 0 or not saved.is_file():
        tail = (out / "train.log").read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"fold {fold} failed (exit {rc}); its log ends:\n  "
                           + "\n  ".join(tail))
    held = json.loads(saved.read_text())
    log.info("fold %d/%d: held-out top-1 %.4f on %d photos", fold, args.folds,
             fold_top1(held), len(held["labels"]))
    return held


def fold_top1(held: dict) -> float:
    """Top-1 of one fold's held-out photos."""
    return topk_accuracy(torch.tensor(held["probs"]), torch.tensor(held["labels"]))


def pooled(folds_out: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probabilities, labels) of every out-of-fold photo and every fold's tuning-unknown
    top probabilities."""
    return (torch.tensor([row for h in folds_out for row in h["probs"]]),
            torch.tensor([y for h in folds_out for y in h["labels"]]),
            torch.tensor([s for h in folds_out for s in h["unknown_tune"] or []]))


def summarize(folds_out: list[dict], accept_known: float) -> dict:
    """Out-of-fold accuracy, calibration and reject threshold from every fold's held-out
    photos (each fold's unknown-photo scores join the unknown side)."""
    paths = [p for h in folds_out for p in h["paths"]]
    if len(set(paths)) != len(paths):
        raise ValueError("fold runs held out overlapping photos: were they run with "
                         "different --seed or data?")
    probs, labels, unknown = pooled(folds_out)
    known = probs.max(1).values
    threshold = reject_threshold(known, accept_known, unknown)
    top1, top3 = topk_accuracy(probs, labels, 1), topk_accuracy(probs, labels, 3)
    summary = {"folds": len(folds_out), "n": len(labels),
               "top1": top1, "top1_interval": wilson_interval(top1, len(labels)),
               "top3": top3, "top3_interval": wilson_interval(top3, len(labels)),
               "ece": expected_calibration_error(probs, labels),
               "fold_top1": [fold_top1(h) for h in folds_out],
               "reject_threshold": threshold,
               "rule": f"most out-of-fold photos accepted + tuning unknown photos rejected "
                       f"(shares), keeping at least {accept_known:.0%} of out-of-fold photos"}
    if len(unknown):
        summary["open_set"] = open_set_report(known, unknown, threshold)
    return summary


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    setup_logging()
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_fold, args, i) for i in range(args.folds)]
        for f in tqdm(as_completed(futures), total=args.folds, desc="folds", unit="fold"):
            if f.exception():  # start no further folds
                for g in futures:
                    g.cancel()
                break
    failed = [f.exception() for f in futures if not f.cancelled() and f.exception()]
    if failed:
        sys.exit(f"error: {failed[0]}\nrerun the same command to resume")
    folds_out = [f.result() for f in futures]
    summary = {"command": shlex.join(["python", "-m", "train.crossval", *sys.argv[1:]]),
               **summarize(folds_out, args.accept_known)}
    (args.output / "crossval.json").write_text(json.dumps(summary, indent=2))
    probs, _, unknown = pooled(folds_out)
    plots.threshold_png(probs.max(1).values.tolist(), unknown.tolist(),
                        summary["reject_threshold"], args.output / "threshold.png",
                        title=f"{args.trainer}: {summary['folds']}-fold, out-of-fold photos")
    print(format_summary(summary))
    return summary


def format_summary(s: dict) -> str:
    """The figures a person reads after a cross-validation."""
    lines = [f"{s['folds']}-fold cross-validation, {s['n']} out-of-fold photos",
             "  top-1 {:.3f} ({:.3f}-{:.3f})".format(s["top1"], *s["top1_interval"]),
             "  top-3 {:.3f} ({:.3f}-{:.3f})".format(s["top3"], *s["top3_interval"]),
             f"  ECE   {s['ece']:.3f}",
             "  per fold top-1: " + " ".join(f"{a:.3f}" for a in s["fold_top1"]),
             f"  reject threshold {s['reject_threshold']:.4f}"]
    if "open_set" in s:
        o = s["open_set"]
        lines.append(f"  open set: AUROC {o['auroc']:.3f}, known accepted "
                     f"{o['known_accepted']:.3f}, unknown rejected {o['unknown_rejected']:.3f} "
                     f"({o['n_known']} known, {o['n_unknown']} unknown scores)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
