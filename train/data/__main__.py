"""Dataset tools.

    python -m train.data download [--dest DIR]   fetch + verify + unpack the 50-class set
    python -m train.data info --data DIR         photos per class and split
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from landmark.facts import display_name
from train.data.download import DATASET_URL, DownloadError, download_dataset
from train.data.layout import DatasetError, scan_split


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("download", help="download the Udacity landmark dataset (resumable)")
    d.add_argument("--dest", type=Path, default=Path("data"),
                   help="folder to unpack into (default %(default)s)")
    d.add_argument("--url", default=DATASET_URL, help="archive URL (default: Udacity's)")
    d.add_argument("--sha256", default=None, help="expected SHA-256 of the archive")
    d.add_argument("--keep-archive", action="store_true", help="keep the .zip after unpacking")
    i = sub.add_parser("info", help="count photos per class and split")
    i.add_argument("--data", type=Path, required=True, help="dataset root")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.cmd == "download":
            root = download_dataset(args.dest, args.url, args.sha256, args.keep_archive)
            print(f"dataset ready: {root}")
        else:
            print_info(args.data)
    except (DownloadError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def print_info(root: Path) -> None:
    train = scan_split(root, "train")
    test = scan_split(root, "test", train.classes) if (root / "test").is_dir() else None
    for c, name in enumerate(train.classes):
        n_test = test.labels.count(c) if test else 0
        print(f"{name:45s} {display_name(name):35s} train {train.labels.count(c):4d}"
              f"  test {n_test:4d}")
    print(f"{len(train.classes)} classes, {len(train.paths)} train, "
          f"{len(test.paths) if test else 0} test photos")


if __name__ == "__main__":
    sys.exit(main())
