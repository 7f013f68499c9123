r"""Choose a model file's flip TTA, temperature and reject threshold again, by the trainers'
rule, from its own weights.

    python -m train.finish.retune models/scratch.pt --tta auto \
        --data ../shared/data/landmark_images --out models/scratch.pt

A trainer makes these choices once, when it exports: `--tta auto` scores the mirror image
too when that lifts validation top-1, and `--tta off` keeps one view at half the cost. This
makes them again for a finished file, on the validation split and the tuning half of
unknown/ it never trained on (test is only reported), keeping its upright head, its
projection and the record of how it was trained. Probabilities and embeddings change, so
choose how taught places compete again afterwards: `python -m train.finish.places OUT --write ...`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from train.data import DatasetError
from train.export import ExportError
from train.finish.fast import add_choice_args, derive, export_chosen
from train.runner import setup_logging


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.finish.retune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="trained model file (not frozen)")
    add_choice_args(p)
    p.add_argument("--tta", choices=("auto", "on", "off"), default="auto",
                   help="score the mirror image too: auto (when it lifts validation top-1), "
                        "on or off (default auto)")
    args = p.parse_args(argv)
    setup_logging()
    command = shlex.join(["python", "-m", "train.finish.retune", *(argv or sys.argv[1:])])
    try:
        target, data = derive(args, freeze=False)
        report = export_chosen(args, target, data, args.tta, {"retune_command": command})
    except (OSError, ValueError, KeyError, DatasetError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: flip {'on' if report['flip_tta'] else 'off'}, val top-1 "
          f"{report['val']['top1']:.4f}"
          + (f", test top-1 {report['test']['top1']:.4f}" if "test" in report else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
