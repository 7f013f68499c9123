"""Tag photo collections in bulk.

    python -m landmark.tag PHOTOS_OR_FOLDERS... --model transfer --out tags.jsonl
    python -m landmark.tag /data/photos --out part-3.jsonl --shard 3/16   # one of 16 jobs

One record per file, the same JSON as the app's /tag API plus `file` (and `photo_gps`
when the photo carries GPS); a file that cannot be read gets a record with `error` and
the run goes on. Re-running with the same --out resumes: finished files are skipped.
--shard I/N takes a deterministic 1/N of the sorted file list, so any scheduler (Slurm
arrays, Kubernetes indexed jobs) can fan a corpus out. --write-exif DIR writes geotagged
copies of JPEGs whose landmark is known.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from landmark.data.datasets import resolve_workers
from landmark.data.imageio import ImageError
from landmark.data.layout import list_images
from landmark.geotag import geotag_jpeg, read_gps
from landmark.predict import Predictor, upscale_tiny
from landmark.presets import cache_image

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


def collect(inputs: list[Path]) -> list[Path]:
    """Image files named directly or found below folders, sorted and de-duplicated."""
    files: set[Path] = set()
    for p in inputs:
        if p.is_dir():
            files.update(list_images(p))
        elif p.exists():
            files.add(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return sorted(files)


def shard(files: list[Path], spec: str | None) -> list[Path]:
    """'I/N' -> every N-th file starting at I (0-based) of the sorted list."""
    if not spec:
        return files
    i, n = (int(x) for x in spec.split("/"))
    if not 0 <= i < n:
        raise ValueError(f"--shard {spec}: need 0 <= I < N")
    return files[i::n]


class PhotoDataset(Dataset):
    """Decodes, resizes and reads EXIF GPS, in DataLoader workers or the main process:
    (index, uint8 square or empty, error, (lat, lon) or NaNs)."""

    def __init__(self, files: list[Path], predictor: Predictor) -> None:
        self.files, self.predictor = files, predictor
        self.size = int(predictor.metadata["preset"]["resize_size"])
        self.interpolation = predictor.metadata["preset"]["interpolation"]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, str, torch.Tensor]:
        no_gps = torch.full((2,), float("nan"), dtype=torch.float64)
        try:
            img = self.predictor.load(self.files[i])
        except ImageError as e:
            return i, torch.zeros(3, self.size, self.size, dtype=torch.uint8), str(e), no_gps
        gps = read_gps(img)  # the EXIF the decoder already read
        gps = torch.tensor(gps, dtype=torch.float64) if gps else no_gps
        arr = torch.from_numpy(np.asarray(upscale_tiny(img)).copy()).permute(2, 0, 1)
        return i, cache_image(arr, self.size, self.interpolation), "", gps


def done_files(out: Path) -> set[str]:
    """Files already recorded in an earlier (possibly killed) run's output."""
    if not out.exists():
        return set()
    if out.suffix == ".csv":
        with open(out, newline="") as f:
            return {row["file"] for row in csv.DictReader(f)}
    seen = set()
    for line in out.read_text().splitlines():
        try:
            seen.add(json.loads(line)["file"])
        except (json.JSONDecodeError, KeyError):
            continue  # a line cut short by a kill
    return seen


class Writer:
    """Appends records as JSON lines or CSV rows, flushed per batch."""

    FIELDS = ("file", "landmark", "class", "confidence", "known", "city", "country", "lat",
              "lon", "hashtags", "error")

    def __init__(self, out: Path) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        self.csv = out.suffix == ".csv"
        new = not out.exists() or out.stat().st_size == 0
        if not self.csv and not new and not out.read_bytes().endswith(b"\n"):
            with open(out, "ab") as f:  # a killed run's half line: start a fresh one
                f.write(b"\n")
        self.f = open(out, "a", newline="")  # noqa: SIM115
        if self.csv:
            self.rows = csv.DictWriter(self.f, fieldnames=self.FIELDS)
            if new:
                self.rows.writeheader()

    def write(self, rec: dict) -> None:
        if not self.csv:
            self.f.write(json.dumps(rec) + "\n")
            return
        top = (rec.get("predictions") or [{}])[0]
        loc = rec.get("location") or {}
        self.rows.writerow({"file": rec["file"], "landmark": top.get("landmark"),
                            "class": top.get("class"), "confidence": top.get("confidence"),
                            "known": rec.get("known"), "city": loc.get("city"),
                            "country": loc.get("country"), "lat": loc.get("lat"),
                            "lon": loc.get("lon"), "hashtags": " ".join(rec.get("hashtags", [])),
                            "error": rec.get("error")})

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def resolve_model(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".pt" and path.exists():
        return path
    bundled = MODELS_DIR / f"{name_or_path}.pt"
    if bundled.exists():
        return bundled
    raise FileNotFoundError(f"no model {name_or_path!r}: give a .pt file or one of "
                            f"{sorted(p.stem for p in MODELS_DIR.glob('*.pt'))}")


def stream_plan(threads: int) -> tuple[int, int]:
    """(model streams, intra-op threads each) for `threads` cores: single-threaded streams,
    at most 8. Independent streams never wait on each other, where one multi-threaded
    forward stalls at every op whenever a decoder takes one of its cores."""
    streams = max(1, min(8, threads))
    return streams, max(1, threads // streams)


def even_batches(n: int, batch: int, streams: int) -> list[range]:
    """Indices 0..n-1 cut into near-equal batches of at most `batch` photos, as many as a
    multiple of `streams`, so the last round keeps every stream busy (50 photos: 25 + 25,
    not 32 + 18)."""
    if n == 0:
        return []
    calls = -(-n // batch)
    calls = -(-calls // streams) * streams
    bounds = [round(i * n / calls) for i in range(calls + 1)]
    return [range(a, b) for a, b in pairwise(bounds) if b > a]


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` intra-op threads, then restore the setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _forward(predictor: Predictor, batch: list) -> tuple[list, torch.Tensor]:
    """(batch, probabilities of its readable photos, in order)."""
    ok = [j for j, e in enumerate(batch[2]) if not e]
    with torch.no_grad():
        probs = predictor.module(batch[1][ok].float() / 255.0) if ok else torch.empty(0)
    return batch, probs


def _in_streams(loader: DataLoader, predictor: Predictor, streams: int,
                finish: Callable[[Future], None]) -> None:
    """Feed decoded batches to `streams` model threads; hand finished ones to `finish` in
    order, with at most one batch waiting per stream."""
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(streams) as pool:
        try:
            for item in loader:
                pending.append(pool.submit(_forward, predictor, item))
                while len(pending) > streams:
                    finish(pending.popleft())
            while pending:
                finish(pending.popleft())
        except BaseException:
            pool.shutdown(cancel_futures=True)  # Ctrl-C: drop queued batches; reruns resume
            raise


def run(files: list[Path], predictor: Predictor, out: Path, k: int = 3, batch: int = 32,
        workers: int = -1, exif_dir: Path | None = None) -> dict:
    """Tag `files` not yet in `out`; returns counts. Batches of at most `batch` photos
    (`even_batches`) run on parallel model streams (`stream_plan`; torch's intra-op thread
    count is lowered for the duration) and are written in order; `workers` -1 picks
    decoding processes by machine (`resolve_workers`), 0 decodes in the main process."""
    done = done_files(out)
    todo = [f for f in files if str(f) not in done]
    streams, per_stream = stream_plan(torch.get_num_threads())
    loader = DataLoader(PhotoDataset(todo, predictor),
                        batch_sampler=even_batches(len(todo), batch, streams),
                        num_workers=resolve_workers(workers, torch.device("cpu")))
    writer = Writer(out)
    counts = {"tagged": 0, "errors": 0, "skipped_done": len(files) - len(todo)}
    bar = tqdm(total=len(todo), desc="tagging", unit="photo")

    def finish(job: Future) -> None:
        for path, rec in _records(*job.result(), todo, predictor, k):
            if exif_dir and rec.get("location"):
                _write_exif(path, rec, exif_dir)
            writer.write(rec)
            counts["errors" if "error" in rec else "tagged"] += 1
            bar.update()
        writer.flush()

    try:
        with torch_threads(per_stream):
            _in_streams(loader, predictor, streams, finish)
    finally:
        bar.close()
        writer.close()
    return counts


def _records(batch: list, probs: torch.Tensor, todo: list[Path], predictor: Predictor,
             k: int) -> Iterator[tuple[Path, dict]]:
    """(file, record) for every photo of a decoded batch, in order."""
    idx, _, errors, gps = batch
    rows = iter(probs)  # one per readable photo
    for i, err, (lat, lon) in zip(idx.tolist(), errors, gps.tolist(), strict=True):
        path = todo[i]
        if err:
            yield path, {"file": str(path), "error": err}
            continue
        yield path, {"file": str(path), **predictor.record(
            next(rows), k, None if math.isnan(lat) else (lat, lon))}


def _write_exif(path: Path, rec: dict, folder: Path) -> None:
    data = path.read_bytes()
    if data[:2] != b"\xff\xd8":
        return
    loc, name = rec["location"], rec["predictions"][0]["landmark"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / path.name).write_bytes(geotag_jpeg(
        data, loc["lat"], loc["lon"], f"{name}, {loc['city']}, {loc['country']}"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m landmark.tag", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photos", nargs="+", type=Path, help="photo files or folders")
    p.add_argument("--model", default="transfer", help="bundled model name or .pt file")
    p.add_argument("--out", type=Path, default=Path("tags.jsonl"),
                   help="output .jsonl or .csv (appended to; reruns resume)")
    p.add_argument("-k", type=int, default=3, help="landmarks per photo (default 3)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="most photos per model call (default 32)")
    p.add_argument("--workers", type=int, default=-1,
                   help="decoding processes (default -1: none on a machine with <= 2 cores, "
                        "where the main process decodes between batches, else cores - 1, "
                        "at most 8)")
    p.add_argument("--shard", default=None, metavar="I/N", help="take shard I of N (0-based)")
    p.add_argument("--write-exif", type=Path, default=None, metavar="DIR",
                   help="write geotagged copies of JPEGs here")
    args = p.parse_args(argv)
    try:
        files = shard(collect(args.photos), args.shard)
        predictor = Predictor(resolve_model(args.model))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    counts = run(files, predictor, args.out, args.k, args.batch_size, args.workers,
                 args.write_exif)
    print(f"{counts['tagged']} tagged, {counts['errors']} unreadable, "
          f"{counts['skipped_done']} already done -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
