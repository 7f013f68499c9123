"""Tag photo collections in bulk.

    python -m landmark.tag PHOTOS_OR_FOLDERS... --model transfer --out tags.jsonl
    python -m landmark.tag /data/photos --out part-3.jsonl --shard 3/16   # parts 0..15

One record per file, the same JSON as the app's /tag API plus `file` (and `photo_gps`
when the photo carries GPS); a file that cannot be read gets a record with `error` and
the run goes on. Re-running with the same --out resumes: finished files are skipped.
--shard I/N takes part I (counted from 0, like Kubernetes' JOB_COMPLETION_INDEX) of N of
the sorted file list, so any scheduler can fan a corpus out. --write-exif DIR writes
geotagged copies of JPEGs whose landmark is known, mirroring the input tree. --sidecar
writes XMP sidecars that photo managers read (see landmark.sidecar); --places adds the
places taught with `python -m landmark.places`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from landmark.cli import part
from landmark.geotag import GeotagError, geotagged_copy, read_gps
from landmark.imageio import ImageError, list_images, resolve_workers
from landmark.places import PlaceError, PlaceStore
from landmark.places.store import default_store
from landmark.predict import BatchPlan, Predictor, stream_plan, unusable
from landmark.resolve import resolve
from landmark.runtime import add_runtime_arg
from landmark.sidecar import SidecarError, sidecar_path, write_sidecar

log = logging.getLogger(__name__)


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


def common_root(inputs: list[Path]) -> Path:
    """The folder all inputs lie below: copies mirror the tree from here, so two photos
    named alike in different folders never land on one copy. It depends on the inputs
    alone, so every shard of a job mirrors alike."""
    dirs = [os.path.abspath(p if p.is_dir() else p.parent) for p in inputs]
    return Path(os.path.commonpath(dirs))


def mirrored(photo: Path, root: Path, dest: Path) -> Path:
    """Where `photo` (below `root`) lands in the tree mirrored under `dest`."""
    return dest / Path(os.path.abspath(photo)).relative_to(root)


def shard(files: list[Path], part: tuple[int, int] | None) -> list[Path]:
    """Part (I, N): every N-th file starting at I (from 0) of the sorted list."""
    if not part:
        return files
    i, n = part
    return files[i::n]


class PhotoDataset(Dataset):
    """Decodes, resizes and reads EXIF GPS, in DataLoader workers or the main process:
    (index, uint8 square or zeros, error, why the photo is refused, (lat, lon) or NaNs)."""

    def __init__(self, files: list[Path], predictor: Predictor) -> None:
        self.files, self.predictor = files, predictor
        self.size = predictor.resize_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, str, str, torch.Tensor]:
        blank = torch.zeros(3, self.size, self.size, dtype=torch.uint8)
        no_gps = torch.full((2,), float("nan"), dtype=torch.float64)
        try:
            img = self.predictor.load(self.files[i])
        except ImageError as e:
            return i, blank, str(e), "", no_gps
        gps = read_gps(img)  # the EXIF the decoder already read
        gps = torch.tensor(gps, dtype=torch.float64) if gps else no_gps
        refused = unusable(img.size)
        if refused:
            return i, blank, "", refused, gps
        return i, self.predictor.prepare(img), "", "", gps


class Writer:
    """Appends records as JSON lines or CSV rows, one write() per record, so a killed run
    leaves at most one cut line, which `repair_tail` drops on the next run."""

    FIELDS = ("file", "landmark", "class", "confidence", "known", "city", "country", "lat",
              "lon", "hashtags", "error")

    def __init__(self, out: Path) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        self.csv = out.suffix == ".csv"
        repair_tail(out, self.complete)
        new = not out.exists() or out.stat().st_size == 0
        self.f = open(out, "ab", buffering=0)  # noqa: SIM115
        if self.csv and new:
            self.f.write(self.csv_line(dict(zip(self.FIELDS, self.FIELDS, strict=True))))

    def csv_line(self, row: dict) -> bytes:
        buf = io.StringIO()
        # one physical line a record: newlines inside messages become spaces
        csv.writer(buf).writerow([str(row.get(k) if row.get(k) is not None else "")
                                  .replace("\n", " ").replace("\r", " ") for k in self.FIELDS])
        return buf.getvalue().encode()

    def complete(self, line: bytes) -> bool:
        """Whether one line of the output is a whole record."""
        try:
            if self.csv:
                return len(next(csv.reader([line.decode()]))) == len(self.FIELDS)
            return "file" in json.loads(line)
        except (ValueError, StopIteration):
            return False

    def write(self, rec: dict) -> None:
        if not self.csv:
            self.f.write((json.dumps(rec) + "\n").encode())
            return
        top = (rec.get("predictions") or [{}])[0]
        loc = rec.get("location") or {}
        self.f.write(self.csv_line({
            "file": rec["file"], "landmark": top.get("landmark"), "class": top.get("class"),
            "confidence": top.get("confidence"), "known": rec.get("known"),
            "city": loc.get("city"), "country": loc.get("country"), "lat": loc.get("lat"),
            "lon": loc.get("lon"), "hashtags": " ".join(rec.get("hashtags", [])),
            "error": rec.get("error") or rec.get("geotag_error")}))

    def close(self) -> None:
        self.f.close()


def repair_tail(out: Path, complete: Callable[[bytes], bool], window: int = 1 << 20) -> None:
    """Drop a killed run's incomplete last record from `out` (a line cut short, or one
    that is not a whole record), so its photo is tagged again."""
    if not out.exists() or out.stat().st_size == 0:
        return
    size = out.stat().st_size
    with open(out, "rb+") as f:
        f.seek(max(0, size - window))
        tail = f.read()
        last = tail[:-1].rsplit(b"\n", 1)[-1] if tail.endswith(b"\n") else \
            tail.rsplit(b"\n", 1)[-1]
        if tail.endswith(b"\n") and complete(last):
            return
        f.truncate(size - len(last) - tail.endswith(b"\n"))
    log.warning("%s: dropped an incomplete last record; that photo is tagged again", out)


def done_files(out: Path) -> set[str]:
    """Files already recorded in an earlier run's output (its tail repaired first)."""
    if not out.exists():
        return set()
    if out.suffix == ".csv":
        with open(out, newline="") as f:
            return {row["file"] for row in csv.DictReader(f)}
    return {json.loads(line)["file"] for line in out.read_text().splitlines() if line}


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


def _forward(predictor: Predictor, batch: list) -> tuple[list, torch.Tensor, torch.Tensor]:
    """(batch, probabilities and embeddings of its readable photos, in order)."""
    ok = [j for j, e in enumerate(batch[2]) if not e]
    if not ok:
        return batch, torch.empty(0), torch.empty(0)
    return batch, *predictor.forward(batch[1][ok])


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


@dataclass(frozen=True)
class Sidecars:
    """Where and how XMP sidecars are written (landmark.sidecar)."""

    root: Path  # the inputs' common folder, mirrored under `folder`
    folder: Path | None = None  # None: beside each photo
    naming: str = "full"  # photo.jpg.xmp; "stem": photo.xmp
    set_gps: bool = False
    dry_run: bool = False

    def write(self, photo: Path, rec: dict, model: str, say: Callable[..., None]) -> None:
        """Write one photo's sidecar; failures land on `rec` and, like dry-run changes
        and notes, are said in one line (`say(text, file=...)`)."""
        where = mirrored(photo, self.root, self.folder).parent if self.folder else None
        path = sidecar_path(photo, self.naming, where)
        try:
            if where:
                where.mkdir(parents=True, exist_ok=True)
            change = write_sidecar(path, rec, model, set_gps=self.set_gps,
                                   photo_has_gps="photo_gps" in rec, dry_run=self.dry_run)
        except (SidecarError, OSError) as e:
            rec["sidecar_error"] = str(e) if isinstance(e, SidecarError) else \
                f"{path}: cannot write the sidecar here ({e.strerror or e})"
            say(f"sidecar: {rec['sidecar_error']}", file=sys.stderr)
            return
        if photo.is_symlink():
            say(f"note: {photo} is a link; its sidecar goes beside the link", file=sys.stderr)
        if self.dry_run:
            say(change.line(), file=sys.stdout)


def run(files: list[Path], predictor: Predictor, out: Path, k: int = 3,
        batch: int | None = None,
        workers: int = -1, exif: tuple[Path, Path] | None = None,
        places: PlaceStore | None = None, sidecars: Sidecars | None = None) -> dict:
    """Tag `files` not yet in `out`; returns counts. Batches of at most `batch` photos
    (`even_batches`) run on parallel model streams (`stream_plan`; torch's intra-op thread
    count is lowered for the duration) and are written in order; `workers` -1 picks
    decoding processes by machine (`resolve_workers`), 0 decodes in the main process.
    `exif` (root, dest): geotagged copies of JPEGs, mirrored from root's tree into dest.
    `places`: taught places compete with the model's classes. `sidecars`: XMP sidecars
    for photo managers."""
    writer = Writer(out)  # repairs a killed run's last line before it is read
    done = done_files(out)
    todo = [f for f in files if str(f) not in done]
    streams, per_stream = stream_plan(torch.get_num_threads())
    batch = batch or BatchPlan.for_device().max_batch
    loader = DataLoader(PhotoDataset(todo, predictor),
                        batch_sampler=even_batches(len(todo), batch, streams),
                        num_workers=resolve_workers(workers, torch.device("cpu")))
    counts = {"tagged": 0, "errors": 0, "skipped_done": len(files) - len(todo)}
    bar = tqdm(total=len(todo), desc="tagging", unit="photo")
    model = f"{predictor.metadata.get('name', predictor.path.stem)} ({predictor.path.name})"

    def finish(job: Future) -> None:
        for path, rec in _records(*job.result(), todo, predictor, k, places):
            if exif:
                _write_exif(path, rec, exif)
            if sidecars and "error" not in rec:
                sidecars.write(path, rec, model, bar.write)
            writer.write(rec)
            counts["errors" if "error" in rec else "tagged"] += 1
            bar.update()

    try:
        with torch_threads(per_stream):
            _in_streams(loader, predictor, streams, finish)
    finally:
        bar.close()
        writer.close()
    return counts


def _records(batch: list, probs: torch.Tensor, emb: torch.Tensor, todo: list[Path],
             predictor: Predictor, k: int, places: PlaceStore | None,
             ) -> Iterator[tuple[Path, dict]]:
    """(file, record) for every photo of a decoded batch, in order."""
    idx, _, errors, refusals, gps = batch
    rows = iter(zip(probs, emb, strict=True))  # one per readable photo
    for i, err, refused, (lat, lon) in zip(idx.tolist(), errors, refusals, gps.tolist(),
                                           strict=True):
        path = todo[i]
        if err:
            yield path, {"file": str(path), "error": err}
            continue
        p, e = next(rows)
        yield path, {"file": str(path), **predictor.record(
            p, k, None if math.isnan(lat) else (lat, lon), refused or None, e, places)}


def _write_exif(path: Path, rec: dict, exif: tuple[Path, Path]) -> None:
    """The geotagged copy of one photo; a failure is recorded on its record."""
    root, dest = exif
    try:
        geotagged_copy(path, rec, mirrored(path, root, dest))
    except (GeotagError, OSError) as e:
        rec["geotag_error"] = f"{path}: {e}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m landmark.tag", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photos", nargs="+", type=Path, help="photo files or folders")
    p.add_argument("--model", default="transfer",
                   help="model name (Hub, then bundled; see landmark.resolve) or a .pt file "
                        "(default %(default)s)")
    p.add_argument("--out", type=Path, default=Path("tags.jsonl"),
                   help="output .jsonl or .csv (appended to; reruns resume)")
    p.add_argument("-k", type=int, default=3, help="landmarks per photo (default 3)")
    add_runtime_arg(p)
    p.add_argument("--batch-size", type=int, default=BatchPlan.for_device().max_batch,
                   help="most photos per model call (default here: %(default)s, measured "
                   "fastest on this device)")
    p.add_argument("--workers", type=int, default=-1,
                   help="decoding processes (default -1: none on a machine with <= 2 cores, "
                        "where the main process decodes between batches, else cores - 1, "
                        "at most 8)")
    p.add_argument("--shard", type=part, default=None, metavar="I/N",
                   help="take part I of N of the sorted file list, I counted from 0 "
                        "(0/4 ... 3/4), for N jobs over one corpus")
    p.add_argument("--places", type=Path, nargs="?", const=default_store(), default=None,
                   metavar="DIR", help="recognise taught places too (python -m landmark."
                   f"places); DIR defaults to the place store, {default_store()}")
    p.add_argument("--write-exif", type=Path, default=None, metavar="DIR",
                   help="write geotagged copies of JPEGs here, mirroring the input tree "
                        "(a photo's own GPS is never overwritten)")
    x = p.add_argument_group("XMP sidecars, for Immich, digiKam, darktable and Lightroom")
    x.add_argument("--sidecar", action="store_true",
                   help="write an XMP sidecar per photo: keywords, Places|Country|City|"
                        "Landmark, the location shown; existing sidecars are merged")
    x.add_argument("--sidecar-dir", type=Path, default=None, metavar="DIR",
                   help="write sidecars under DIR, mirroring the input tree (default: "
                        "beside each photo)")
    x.add_argument("--sidecar-name", choices=["full", "stem"], default="full",
                   help="full: photo.jpg.xmp (Immich, darktable, digiKam; default); "
                        "stem: photo.xmp (Lightroom)")
    x.add_argument("--set-gps", action="store_true",
                   help="also write the landmark's position as the photo's GPS, in the "
                        "sidecar, for photos without GPS of their own")
    x.add_argument("--dry-run", action="store_true",
                   help="print what each sidecar would gain or lose, write none (the tags "
                        "still go to --out)")
    args = p.parse_args(argv)
    logging.basicConfig(format="%(message)s")  # warnings from anything, and our own notes:
    logging.getLogger("landmark").setLevel(logging.INFO)  # which model file, which runtime
    if (args.sidecar_dir or args.set_gps or args.dry_run) and not args.sidecar:
        p.error("--sidecar-dir, --set-gps and --dry-run go with --sidecar")
    try:
        files = shard(collect(args.photos), args.shard)
        predictor = Predictor(resolve(args.model), args.runtime)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    root = common_root(args.photos)
    exif = (root, args.write_exif) if args.write_exif else None
    sidecars = Sidecars(root, args.sidecar_dir, args.sidecar_name, args.set_gps,
                        args.dry_run) if args.sidecar else None
    places = PlaceStore(args.places) if args.places else None
    try:
        counts = run(files, predictor, args.out, args.k, args.batch_size, args.workers, exif,
                     places, sidecars)
    except PlaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{counts['tagged']} tagged, {counts['errors']} unreadable, "
          f"{counts['skipped_done']} already done -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
