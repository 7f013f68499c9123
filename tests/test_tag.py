"""Batch tagging: records, errors, resume, shards, CSV, EXIF copies."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from landmark.geotag import read_gps
from landmark.predict import Predictor
from landmark.tag import collect, shard
from tests.conftest import REPO, real_photos


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for cls in ("03.Eiffel_Tower", "11.Niagara_Falls"):
        (root / cls).mkdir(parents=True)
        for p in real_photos(cls, "test", 5):
            shutil.copy(p, root / cls / p.name)
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    return root


def _tag(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "landmark.tag", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_folder_is_tagged_with_app_records_and_errors(photos: Path, tiny_model: Path,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "tags.jsonl"
    res = _tag(str(photos), "--model", str(tiny_model), "--out", str(out), "--workers", "2",
               "--batch-size", "4")
    assert res.returncode == 0, res.stderr[-2000:]
    recs = {Path(r["file"]).name: r for r in _lines(out)}
    assert len(recs) == 11
    assert "unreadable" in recs["broken.jpg"]["error"] or "not an image" in recs[
        "broken.jpg"]["error"]
    one = next(p for p in photos.rglob("*.jpg") if p.name != "broken.jpg")
    rec = recs[one.name]
    direct = Predictor(tiny_model).tag(one)
    assert set(direct) <= set(rec) and rec["file"] == str(one)
    assert rec["predictions"][0]["class"] == direct["predictions"][0]["class"]
    assert rec["predictions"][0]["confidence"] == pytest.approx(
        direct["predictions"][0]["confidence"], abs=0.02)
    assert "10 tagged, 1 unreadable" in res.stderr


def test_killed_run_resumes_without_redoing(photos: Path, tiny_model: Path,
                                            tmp_path: Path) -> None:
    out = tmp_path / "tags.jsonl"
    assert _tag(str(photos), "--model", str(tiny_model), "--out", str(out)).returncode == 0
    full = out.read_text().splitlines()
    out.write_text("\n".join(full[:4]) + "\n" + full[4][:30])  # killed mid-line
    res = _tag(str(photos), "--model", str(tiny_model), "--out", str(out))
    assert "4 already done" in res.stderr
    files = [r["file"] for r in _lines_tolerant(out)]
    assert sorted(files) == sorted({json.loads(line)["file"] for line in full})


def _lines_tolerant(out: Path) -> list[dict]:
    recs = []
    for line in out.read_text().splitlines():
        try:
            recs.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return recs


def test_shards_partition_the_corpus(photos: Path) -> None:
    files = collect([photos])
    parts = [shard(files, f"{i}/3") for i in range(3)]
    assert sorted(p for part in parts for p in part) == files
    assert not set(parts[0]) & set(parts[1])
    assert shard(collect([photos]), "1/3") == parts[1]  # deterministic
    with pytest.raises(ValueError):
        shard(files, "3/3")


def test_csv_and_exif_copies(photos: Path, tiny_model: Path, tmp_path: Path) -> None:
    out, exif = tmp_path / "tags.csv", tmp_path / "geo"
    res = _tag(str(photos / "03.Eiffel_Tower"), "--model", str(tiny_model), "--out", str(out),
               "--write-exif", str(exif))
    assert res.returncode == 0, res.stderr[-2000:]
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and {"file", "landmark", "lat", "hashtags"} <= set(rows[0])
    known = [r for r in rows if r["known"] == "True"]
    copies = sorted(exif.glob("*.jpg"))
    assert len(copies) == len(known)
    for c in copies:
        row = next(r for r in known if Path(r["file"]).name == c.name)
        assert read_gps(io.BytesIO(c.read_bytes())) == pytest.approx(
            (float(row["lat"]), float(row["lon"])), abs=1e-4)


def test_missing_input_is_a_clear_error(tmp_path: Path) -> None:
    res = _tag(str(tmp_path / "nope"))
    assert res.returncode == 1 and "no such file or folder" in res.stderr


def test_streams_keep_file_order_and_read_photo_gps(photos: Path, tiny_model: Path,
                                                    tmp_path: Path) -> None:
    import torch

    from landmark.geotag import geotag_jpeg
    from landmark.tag import run
    one = sorted((photos / "03.Eiffel_Tower").glob("*.jpg"))[0]
    one.write_bytes(geotag_jpeg(one.read_bytes(), 48.8584, 2.2945, "Paris"))
    threads = torch.get_num_threads()
    out = tmp_path / "tags.jsonl"
    counts = run(collect([photos]), Predictor(tiny_model), out, batch=2, workers=0)
    assert torch.get_num_threads() == threads  # the model streams' setting is undone
    recs = _lines(out)
    assert counts == {"tagged": 10, "errors": 1, "skipped_done": 0}
    assert [r["file"] for r in recs] == [str(p) for p in collect([photos])]
    gps = {r["file"]: r.get("photo_gps") for r in recs}
    assert gps.pop(str(one))["lat"] == pytest.approx(48.8584, abs=1e-4)
    assert not any(gps.values())


def test_interrupt_drops_queued_batches() -> None:
    """Ctrl-C while writing a batch: batches not yet started never run."""
    import time
    from types import SimpleNamespace

    import torch

    from landmark.tag import _in_streams
    calls = []

    def module(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        time.sleep(0.05)
        return x.mean((1, 2, 3))

    batches = [(torch.arange(2), torch.zeros(2, 3, 4, 4, dtype=torch.uint8), ["", ""],
                torch.zeros(2, 2)) for _ in range(20)]

    def finish(_job: object) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _in_streams(batches, SimpleNamespace(module=module), 2, finish)
    assert len(calls) < 3  # without cancelling, all three submitted batches would run


@pytest.mark.parametrize(("n", "batch", "streams"), [(536, 32, 2), (50, 32, 2), (3, 32, 2),
                                                      (1000, 16, 8), (7, 2, 1), (0, 32, 2)])
def test_even_batches_keep_every_stream_busy(n: int, batch: int, streams: int) -> None:
    from landmark.tag import even_batches
    parts = even_batches(n, batch, streams)
    assert [i for part in parts for i in part] == list(range(n))  # each photo once, in order
    sizes = [len(part) for part in parts]
    assert all(0 < s <= batch for s in sizes)
    assert not sizes or max(sizes) - min(sizes) <= 1
    if n >= streams:
        assert len(parts) % streams == 0
    assert len(parts) < -(-n // batch) + streams  # no more calls than the last round needs


def test_tiny_photo_is_seen_as_the_app_sees_it(photos: Path, tiny_model: Path,
                                               tmp_path: Path) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from landmark.predict import upscale_tiny
    from landmark.presets import center_crop, resize_short
    from landmark.tag import PhotoDataset
    one = sorted((photos / "03.Eiffel_Tower").glob("*.jpg"))[0]
    tiny = tmp_path / "tiny.png"
    Image.open(one).convert("RGB").resize((48, 12)).save(tiny)
    pred = Predictor(tiny_model)
    square = PhotoDataset([tiny], pred)[0][1].float()
    # the app: the upscaled photo goes whole into the model, which resizes and crops it
    img = upscale_tiny(pred.load(tiny))
    assert min(img.size) == 32 and img.size[0] == 4 * img.size[1]  # aspect kept
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].float()
    size = pred.metadata["preset"]["resize_size"]
    app = center_crop(resize_short(x, size), size)[0]
    assert (square - app).abs().mean() < 2.0
