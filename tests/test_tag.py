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
from PIL import Image

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
    assert "4 already done" in res.stderr and "incomplete last record" in res.stderr
    files = [r["file"] for r in _lines(out)]  # every line whole: the cut one was dropped
    assert sorted(files) == sorted(json.loads(line)["file"] for line in full)


def test_csv_row_cut_after_its_file_column_is_redone(photos: Path, tiny_model: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "tags.csv"
    assert _tag(str(photos), "--model", str(tiny_model), "--out", str(out)).returncode == 0
    lines = out.read_text().splitlines(keepends=True)
    cut = lines[3].split(",")[0] + ","  # the file column survived, nothing else
    out.write_text("".join(lines[:3]) + cut)
    res = _tag(str(photos), "--model", str(tiny_model), "--out", str(out))
    assert res.returncode == 0 and "2 already done" in res.stderr
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 11 and len({r["file"] for r in rows}) == 11
    assert all(r["known"] in ("True", "False") for r in rows if not r["error"])


def test_shards_partition_the_corpus(photos: Path) -> None:
    files = collect([photos])
    parts = [shard(files, (i, 3)) for i in range(3)]
    assert sorted(p for part in parts for p in part) == files
    assert not set(parts[0]) & set(parts[1])
    assert shard(collect([photos]), (1, 3)) == parts[1]  # deterministic


@pytest.mark.parametrize("spec", ["x/3", "1", "3/3", "-1/3"])
def test_bad_shard_is_one_clear_line(photos: Path, spec: str) -> None:
    res = _tag(str(photos), "--shard", spec)
    assert res.returncode == 2 and "error: argument --shard" in res.stderr
    assert "Traceback" not in res.stderr


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

    def both(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(len(x))
        time.sleep(0.05)
        return x.mean((2, 3)), x.mean((2, 3))

    batches = [(torch.arange(2), torch.zeros(2, 3, 4, 4, dtype=torch.uint8), ["", ""],
                ["", ""], torch.zeros(2, 2)) for _ in range(20)]

    def finish(_job: object) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _in_streams(batches, SimpleNamespace(module=SimpleNamespace(probs_and_embedding=both)),
                    2, finish)
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


@pytest.mark.parametrize("size", [(48, 12), (10, 4000), (1, 1)])
def test_tiny_or_strip_photo_is_refused_alike_in_batch_and_app(photos: Path, tiny_model: Path,
                                                               tmp_path: Path,
                                                               size: tuple[int, int]) -> None:
    from landmark.tag import run
    one = sorted((photos / "03.Eiffel_Tower").glob("*.jpg"))[0]
    strip = tmp_path / "strip.png"
    Image.open(one).convert("RGB").resize(size).save(strip)
    app = Predictor(tiny_model).tag(strip)
    out = tmp_path / "tags.jsonl"
    run([strip], Predictor(tiny_model), out, workers=0)
    (batch,) = _lines(out)
    assert app["known"] is False and app["predictions"] == [] and app["location"] is None
    assert "to show a landmark" in app["reason"]
    assert {k: batch[k] for k in app} == app


def test_exif_copies_mirror_the_tree_and_survive_bad_exif(tmp_path: Path) -> None:
    """Same-named photos in two folders get two copies; a 65 KB EXIF block and a photo
    with its own GPS do not stop the run, and that GPS is kept."""
    import pyexiv2

    from landmark.geotag import geotag_jpeg
    from landmark.resolve import MODELS_DIR
    root = tmp_path / "photos"
    eiffel, bridge = (real_photos(c, "test", 1)[0] for c in ("03.Eiffel_Tower",
                                                              "05.Golden_Gate_Bridge"))
    for sub, src in (("a", eiffel), ("b", bridge)):
        (root / sub).mkdir(parents=True)
        shutil.copy(src, root / sub / "IMG_1.jpg")
    big = root / "a" / "big_exif.jpg"
    shutil.copy(eiffel, big)
    with pyexiv2.Image(str(big)) as img:
        img.modify_exif({"Exif.Image.Make": "x" * 65_300})
    own = root / "b" / "own_gps.jpg"
    own.write_bytes(geotag_jpeg(bridge.read_bytes(), 40.69, -74.04, "New York"))
    out, geo = tmp_path / "tags.jsonl", tmp_path / "geo"
    res = _tag(str(root), "--model", str(MODELS_DIR / "transfer.pt"), "--out", str(out),
               "--write-exif", str(geo))
    assert res.returncode == 0, res.stderr[-2000:]
    recs = {str(Path(r["file"]).relative_to(root)): r for r in _lines(out)}
    assert all(r["known"] and "geotag_error" not in r for r in recs.values()), recs
    copies = sorted(str(p.relative_to(geo)) for p in geo.rglob("*.jpg"))
    assert copies == ["a/IMG_1.jpg", "a/big_exif.jpg", "b/IMG_1.jpg", "b/own_gps.jpg"]
    described = {c: Image.open(geo / c).getexif()[0x010E] for c in copies}
    assert described["a/IMG_1.jpg"].startswith("Eiffel Tower")
    assert described["b/IMG_1.jpg"].startswith("Golden Gate Bridge")
    assert read_gps(geo / "a/big_exif.jpg") == pytest.approx((48.8584, 2.2945), abs=1e-3)
    assert read_gps(geo / "b/own_gps.jpg") == pytest.approx((40.69, -74.04), abs=1e-5)


def test_commands_work_from_any_folder(tmp_path: Path) -> None:
    """The project is installed (pip install -e .), not only importable from its root."""
    res = subprocess.run([sys.executable, "-m", "landmark.tag", "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--shard" in res.stdout
