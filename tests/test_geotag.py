import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from landmark.geotag import geotag_jpeg, read_gps
from tests.conftest import real_photos


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_geotag_writes_gps_and_description_without_touching_pixels() -> None:
    data = real_photos("03.Eiffel_Tower", "test")[0].read_bytes()
    assert read_gps(io.BytesIO(data)) is None
    out = geotag_jpeg(data, 48.8584, 2.2945, "Eiffel Tower, Paris, France")
    assert read_gps(io.BytesIO(out)) == pytest.approx((48.8584, 2.2945), abs=1e-5)
    assert Image.open(io.BytesIO(out)).getexif()[0x010E] == "Eiffel Tower, Paris, France"
    assert np.array_equal(_pixels(out), _pixels(data))
    assert out.endswith(data[data.index(b"\xff\xda"):])  # compressed data byte-identical
    assert out.count(b"Exif\x00\x00") == 1


def test_retagging_replaces_gps_and_keeps_other_exif(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # camera make
    exif[0x0112] = 6
    src = tmp_path / "p.jpg"
    Image.new("RGB", (64, 32), (200, 10, 10)).save(src, exif=exif)
    once = geotag_jpeg(src.read_bytes(), 10.0, 20.0, "a")
    twice = geotag_jpeg(once, -33.8568, 151.2153, "Sydney Opera House")
    assert read_gps(io.BytesIO(twice)) == pytest.approx((-33.8568, 151.2153), abs=1e-5)
    tags = Image.open(io.BytesIO(twice)).getexif()
    assert tags[0x010F] == "PhoneMaker" and tags[0x0112] == 6
    assert twice.count(b"Exif\x00\x00") == 1


def test_not_a_jpeg_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    with pytest.raises(ValueError, match="not a JPEG"):
        geotag_jpeg(buf.getvalue(), 0, 0, "x")
