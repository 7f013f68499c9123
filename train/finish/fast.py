r"""A faster model file from a trained one: the same weights at a smaller input, frozen.

    python -m train.finish.fast models/transfer.pt --crop-size 224 \
        --data ../shared/data/landmark_images --out models/transfer_fast.pt

A CNN's cost grows with the square of its input side, and a network fine-tuned on random
resized crops has seen landmarks at many scales, so a smaller centre crop keeps most of
its accuracy. The network is rebuilt from the file's weights; the resize keeps the file's
crop ratio. Temperature and reject threshold are chosen again at the new size, on the
validation split and the tuning half of unknown/ (the rule of the trainers; the test split
is only reported). The export is frozen (`torch.jit.freeze`); an upright head
(train.finish.upright) is kept as it was fitted at the source's size. Afterwards, choose how
taught places compete at the new size: `python -m train.finish.places OUT --write ...`.

With `--match FLOAT.pt --known-extra ROOT`, the threshold is instead the one at which the
fast file accepts the same share of known photos it never trained on (validation plus
ROOT's) as FLOAT does at its own threshold: the float model's operating point, set on a
pool far larger than validation's photos, for a file that must keep its known-accepted
and unknown-rejected.
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
from torch import Tensor, nn

from landmark.cli import add_data_arg
from landmark.contract import Exported
from landmark.predict import Predictor
from train.assess import ThresholdRule, assess
from train.data import DatasetError
from train.data.cache import DEFAULT_CACHE_DIR, CachedSplit
from train.export import ExportError, export_model, kept_parts
from train.finish.places import add_known_extra_arg, known_photos
from train.finish.reexport import rebuild
from train.presets import Preset
from train.runner import headline_metrics, load_splits, setup_logging, write_report

log = logging.getLogger("train")
CONTRACT_KEYS = ("preset", "temperature", "tta_flip", "background_logit", "num_classes",
                 "embedding_dim", "frozen", "places", "places_command", "metrics",
                 "reject_threshold", "open_set", "reexport_command")


def smaller(preset: Preset, crop: int) -> Preset:
    """`preset` at crop side `crop`, resizing with the same crop ratio."""
    if not 32 <= crop <= preset.crop_size:
        raise ValueError(f"--crop-size must be between 32 and the model's own "
                         f"{preset.crop_size}, not {crop}")
    return replace(preset, crop_size=crop,
                   resize_size=math.floor(crop * preset.resize_size / preset.crop_size))


def data_args(args: argparse.Namespace, meta: dict) -> argparse.Namespace:
    """The trainers' data options, with the seed and outlier exposure the model trained
    with, so validation and the tuning unknown photos are the ones it never trained on.
    Nothing trains here, so no extra photos are decoded and no outlier is left out."""
    cfg = meta.get("train_config", {})
    return argparse.Namespace(data=args.data, val_fraction=args.val_fraction,
                              seed=cfg.get("seed", 0), fold=None, unknown=None,
                              extra_train=[], outlier_skip=[], no_cache=False,
                              cache_dir=args.cache_dir,
                              outlier_weight=cfg.get("outlier_weight", 0.0))


@dataclass
class Derived:
    """A network rebuilt from a model file, at the preset it is exported with, and what
    every export of it needs."""

    name: str
    net: nn.Module
    preset: Preset
    source: Exported
    samples: list[Tensor]
    freeze: bool = True

    def inherited(self) -> dict:
        """The source file's metadata that still holds for the new export: what it was
        trained on and how, not what the export contract or the calibration sets."""
        return {k: v for k, v in self.source.metadata.items() if k not in CONTRACT_KEYS}

    def export(self, path: Path, meta: dict, temperature: float,
               background: float | None, flip: bool = False) -> Path:
        return export_model(self.net, self.preset, self.source.classes, meta, path,
                            self.samples, temperature=temperature, flip=flip,
                            background=background, freeze=self.freeze,
                            **kept_parts(self.source.module))


def derive(args: argparse.Namespace, preset: Callable[[Preset], Preset] = lambda p: p,
           freeze: bool = True) -> tuple[Derived, dict[str, CachedSplit]]:
    """args.model rebuilt, at `preset` applied to its own preset (its own by default),
    and the trainers' splits decoded at that preset."""
    net, own, exp = rebuild(args.model)
    new = preset(own)
    data = load_splits(data_args(args, exp.metadata), new)
    return Derived(args.out.name, net, new, exp,
                   [img.float() / 255.0 for img in data["val"].images[:4]], freeze), data


def export_chosen(args: argparse.Namespace, target: Derived, data: dict[str, CachedSplit],
                  tta: str, provenance: dict, rule: ThresholdRule | None = None) -> dict:
    """Choose flip, temperature and reject threshold by the trainers' rule (or `rule`),
    export `target` to args.out with `provenance` in its metadata; returns the report."""
    report, settings = assess(target.net, target.preset, data, tta, True, args.accept_known,
                              exposure="outliers" in data, given=rule)
    meta = target.inherited()
    meta.update(name=args.out.stem, derived_from=str(args.model), **provenance,
                date=datetime.now(UTC).isoformat(timespec="seconds"),
                metrics=headline_metrics(report),
                reject_threshold=settings.reject_threshold,
                open_set=report.get("open_set", {}).get("shipped"))
    target.export(args.out, meta, settings.temperature, settings.background, settings.flip)
    write_report(report, [], target.source.classes, args.out)
    return report


def add_choice_args(p: argparse.ArgumentParser) -> None:
    """The options of a command that chooses a file's calibration again."""
    add_data_arg(p)
    p.add_argument("--out", type=Path, required=True, help="where to write the model file")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="validation share carved from train, as the model was trained")
    p.add_argument("--accept-known", type=float, default=0.95,
                   help="share of validation photos the reject threshold keeps at least")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
                   help="decoded-photo cache")


def make_fast(args: argparse.Namespace, command: str) -> tuple[Path, dict]:
    """Export args.model at args.crop_size to args.out; returns (path, report)."""
    fast, data = derive(args, partial(smaller, crop=args.crop_size))
    rule = partial(matched_threshold, fast, args.match, args.data,
                   args.known_extra) if args.match else None
    return args.out, export_chosen(args, fast, data, "off", {"fast_command": command}, rule)


def matched_threshold(fast: Derived, reference: Path, data: Path, extra: list[Path],
                      temperature: float, background: float | None) -> tuple[float, str]:
    """(threshold, origin): where `fast`, calibrated with `temperature` and `background`,
    accepts the same share of known photos (the validation split of `data` plus `extra`'s,
    decoded as the app decodes them, from a probe export) as `reference` does at its own
    threshold."""
    ref = Predictor(reference)
    share = float(np.mean(known_photos(ref, data, extra).conf >= ref.reject_threshold))
    with tempfile.TemporaryDirectory() as tmp:
        # named as the fast file, with its source's training data for known_photos' check
        probe = Predictor(fast.export(Path(tmp) / fast.name, fast.inherited(), temperature,
                                      background))
        conf = np.sort(known_photos(probe, data, extra).conf)[::-1]
    threshold = float(conf[max(1, math.ceil(share * len(conf))) - 1])
    log.info("matched to %s: %.4f of %d known photos accepted -> threshold %.4f",
             reference, share, len(conf), threshold)
    return threshold, (f"{reference}'s share of known photos accepted ({share:.4f} of "
                       f"{len(conf)}: validation + {', '.join(map(str, extra)) or 'none'})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.finish.fast", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="trained model file (not frozen)")
    add_choice_args(p)
    p.add_argument("--crop-size", type=int, default=224,
                   help="input side of the fast model (default 224)")
    p.add_argument("--match", type=Path, default=None, metavar="FLOAT.pt",
                   help="choose the reject threshold where the fast file accepts the same "
                        "share of known photos as this model file does at its own (see "
                        "--known-extra), instead of the trainers' rule")
    add_known_extra_arg(p, "to match the share on (with --match)")
    args = p.parse_args(argv)
    if args.known_extra and not args.match:
        p.error("--known-extra needs --match")
    setup_logging()
    command = shlex.join(["python", "-m", "train.finish.fast", *(argv or sys.argv[1:])])
    try:
        out, report = make_fast(args, command)
    except (OSError, ValueError, KeyError, DatasetError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    log.info("wrote %s: val top-1 %.4f%s", out, report["val"]["top1"],
             f", test top-1 {report['test']['top1']:.4f}" if "test" in report else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
