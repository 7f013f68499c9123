"""`python -m train.data download` against a real HTTP server on 127.0.0.1."""

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, real_photos
from tests.http_server import FileServer
from train.data import scan_split
from train.data.download import DownloadError, download_dataset


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for split, n in (("train", 4), ("test", 2)):
            for cls in ("03.Eiffel_Tower", "11.Niagara_Falls"):
                for p in real_photos(cls, split, n):
                    zf.write(p, f"landmark_images/{split}/{cls}/{p.name}")
    return buf.getvalue()


ARCHIVE = _zip()


def test_full_download_unpacks_dataset(tmp_path: Path) -> None:
    with FileServer({"/landmark_images.zip": ARCHIVE}) as srv:
        root = download_dataset(tmp_path, f"{srv.url}/landmark_images.zip")
    assert root == tmp_path / "landmark_images"
    assert len(scan_split(root, "train").paths) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["landmark_images"]


def test_resume_after_cut_connection(tmp_path: Path) -> None:
    with FileServer({"/d.zip": ARCHIVE}) as srv:
        srv.cut_after = len(ARCHIVE) // 3
        root = download_dataset(tmp_path, f"{srv.url}/d.zip")
        ranges = [r for _, r in srv.requests]
    assert ranges == [None, f"bytes={len(ARCHIVE) // 3}-"]
    assert len(scan_split(root, "test").paths) == 4


def test_resume_of_a_partial_file_left_by_an_earlier_run(tmp_path: Path) -> None:
    (tmp_path / "d.zip.part").write_bytes(ARCHIVE[:1000])
    with FileServer({"/d.zip": ARCHIVE}) as srv:
        download_dataset(tmp_path, f"{srv.url}/d.zip")
        assert srv.requests == [("/d.zip", "bytes=1000-")]


def test_corrupt_archive_is_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    bad = bytearray(ARCHIVE)
    bad[len(bad) // 2: len(bad) // 2 + 64] = b"\0" * 64
    with FileServer({"/d.zip": bytes(bad)}) as srv, pytest.raises(DownloadError,
                                                                 match="corrupt"):
        download_dataset(tmp_path, f"{srv.url}/d.zip")
    assert list(tmp_path.iterdir()) == []


def test_http_error_and_cli_message(tmp_path: Path) -> None:
    with FileServer({}) as srv:
        res = subprocess.run([sys.executable, "-m", "train.data", "download", "--dest",
                              str(tmp_path), "--url", f"{srv.url}/missing.zip"],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "error:" in res.stderr and "HTTP 404" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "landmark_images").exists()
