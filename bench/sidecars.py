"""XMP sidecars over the test split: their cost in batch tagging, and that exiftool reads
every one with the expected fields.

    python -m bench.sidecars --data ../shared/data/landmark_images [--model transfer]

Tags a copy of test/ with `landmark.tag.run` in alternating rounds without and with
sidecars (median of --repeats), then reads every sidecar written back with Debian's
exiftool (`exiftool -j -struct`) and checks keywords, hierarchy and LocationShown against
the photo's record. Writes its section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.report import update_section
from landmark.cli import add_data_arg
from landmark.predict import Predictor
from landmark.resolve import resolve
from landmark.tag import Sidecars, run
from train.data import scan_split


def timed_run(photos: list[Path], predictor: Predictor, root: Path,
              sidecars: Sidecars | None) -> tuple[float, Path]:
    """Seconds to tag `photos` (a fresh output file), and that file."""
    out = root / f"tags-{time.monotonic_ns()}.jsonl"
    start = time.perf_counter()
    run(photos, predictor, out, sidecars=sidecars)
    return time.perf_counter() - start, out


def check(records: list[dict], naming: str = "full") -> tuple[int, int, list[str]]:
    """(sidecars expected, sidecars read right, problems) against exiftool's reading."""
    named = [r for r in records if r.get("known")]
    paths = [Path(f"{r['file']}.xmp") for r in named]
    got = {}
    for i in range(0, len(paths), 200):
        out = subprocess.run(["exiftool", "-j", "-struct", "-G1", *map(str, paths[i:i + 200])],
                             capture_output=True, text=True, check=False)
        got.update({m["SourceFile"]: m for m in json.loads(out.stdout or "[]")})
    problems = []
    for rec, path in zip(named, paths, strict=True):
        meta, loc = got.get(str(path), {}), rec["location"]
        want = [rec["predictions"][0]["landmark"], loc["country"], loc["city"]]
        shown = (meta.get("XMP-iptcExt:LocationShown") or [{}])[0]
        if (meta.get("XMP-dc:Subject") != rec["tags"]
                or meta.get("XMP-lr:HierarchicalSubject") != [
                    f"Places|{want[1]}|{want[2]}|{want[0]}"]
                or shown.get("LocationName") != want[0] or shown.get("City") != want[2]):
            problems.append(str(path))
    return len(named), len(named) - len(problems), problems


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arg(p)
    p.add_argument("--model", default="transfer", help="model name or .pt file")
    p.add_argument("--repeats", type=int, default=3, help="rounds of each (median reported)")
    args = p.parse_args()
    predictor = Predictor(resolve(args.model))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(args.data / "test", root / "test")
        photos = scan_split(root, "test").paths
        sidecars = Sidecars(root / "test")
        timed_run(photos[:32], predictor, root, None)  # warm-up
        plain, with_sidecars, last = [], [], None
        for _ in range(args.repeats):
            plain.append(timed_run(photos, predictor, root, None)[0])
            for x in (root / "test").rglob("*.xmp"):
                x.unlink()
            seconds, last = timed_run(photos, predictor, root, sidecars)
            with_sidecars.append(seconds)
        records = [json.loads(line) for line in last.read_text().splitlines()]
        expected, right, problems = check(records)
    a, b = statistics.median(plain), statistics.median(with_sidecars)
    body = (f"{len(photos)} test photos, model `{args.model}`, `landmark.tag` defaults; "
            f"median of {args.repeats} alternating rounds.\n\n"
            "| without sidecars (s) | with sidecars (s) | added | sidecars written | "
            "read right by exiftool |\n|---|---|---|---|---|\n"
            f"| {a:.1f} | {b:.1f} | {b / a - 1:+.1%} | {expected} | {right} "
            f"({right / max(expected, 1):.1%}) |")
    if problems:
        body += "\n\nNot as expected: " + ", ".join(problems[:10])
    update_section("sidecars", "XMP sidecars over the test split", body)


if __name__ == "__main__":
    main()
