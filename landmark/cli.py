"""Small pieces every command line shares."""

from __future__ import annotations

import argparse
from pathlib import Path


def part(text: str, least: int = 1) -> tuple[int, int]:
    """'I/N' -> (I, N): part I (counted from 0) of N, with N >= `least`. Raises
    argparse.ArgumentTypeError with the rule in words."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected I/N, two whole numbers such as 0/{max(least, 4)}, got {text!r}") from None
    if n < least or not 0 <= i < n:
        raise argparse.ArgumentTypeError(
            f"{text}: need N >= {least} and 0 <= I < N (parts count from 0)")
    return i, n


def add_data_arg(p: argparse.ArgumentParser, required: bool = True) -> None:
    """--data: the dataset root every benchmark and trainer reads."""
    p.add_argument("--data", type=Path, required=required,
                   help="dataset root in the Udacity layout: train/NN.Class/*.jpg, test/, "
                        "and unknown/ (photos of other places)")
