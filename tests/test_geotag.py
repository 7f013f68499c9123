"""EXIF GPS through exiv2: written into copies, never over a photo's own position."""

import io
import struct
from pathlib import Path

import numpy as np
import pyexiv2
import pytest
from PIL import Image

from landmark.geotag import GeotagError, geotag_jpeg, geotagged_copy, read_gps
from tests.conftest import real_photos


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _app1_sizes(data: bytes) -> list[int]:
    """Length fields of every APP1 segment before the scan."""
    pos, sizes = 2, []
    while data[pos] == 0xFF and data[pos + 1] != 0xDA:
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if data[pos + 1] == 0xE1:
            sizes.append(length)
        pos += 2 + length
    return sizes


def _with_exif(tmp_path: Path, **tags: str) -> bytes:
    """A real photo whose EXIF carries `tags` (exiv2 keys), written by exiv2."""
    path = tmp_path / "p.jpg"
    path.write_bytes(real_photos("03.Eiffel_Tower", "test")[0].read_bytes())
    with pyexiv2.Image(str(path)) as img:
        img.modify_exif(tags)
    return path.read_bytes()


def test_geotag_writes_gps_and_description_without_touching_pixels() -> None:
    data = real_photos("03.Eiffel_Tower", "test")[0].read_bytes()
    assert read_gps(io.BytesIO(data)) is None
    out = geotag_jpeg(data, 48.8584, 2.2945, "Eiffel Tower, Paris, France")
    assert read_gps(io.BytesIO(out)) == pytest.approx((48.8584, 2.2945), abs=1e-5)
    assert Image.open(io.BytesIO(out)).getexif()[0x010E] == "Eiffel Tower, Paris, France"
    assert np.array_equal(_pixels(out), _pixels(data))
    assert out.endswith(data[data.index(b"\xff\xda"):])  # compressed data byte-identical
    assert out.count(b"Exif\x00\x00") == 1


def test_a_photos_own_gps_is_never_overwritten(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # camera make
    exif[0x0112] = 6
    src = tmp_path / "p.jpg"
    Image.new("RGB", (64, 32), (200, 10, 10)).save(src, exif=exif)
    own = geotag_jpeg(src.read_bytes(), 40.69, -74.04, "where I stood")
    again = geotag_jpeg(own, 48.86, 2.29, "Eiffel Tower")
    assert read_gps(io.BytesIO(again)) == pytest.approx((40.69, -74.04), abs=1e-5)
    tags = Image.open(io.BytesIO(again)).getexif()
    assert tags[0x010F] == "PhoneMaker" and tags[0x0112] == 6
    assert tags[0x010E] == "Eiffel Tower"  # the landmark's name still lands
    assert again.count(b"Exif\x00\x00") == 1


@pytest.mark.parametrize("lat", ["200/1 0/1 0/1", "1/0 0/0 0/0"])
def test_invalid_photo_gps_counts_as_none(tmp_path: Path, lat: str) -> None:
    data = _with_exif(tmp_path, **{"Exif.GPSInfo.GPSLatitudeRef": "N",
                                   "Exif.GPSInfo.GPSLatitude": lat,
                                   "Exif.GPSInfo.GPSLongitudeRef": "E",
                                   "Exif.GPSInfo.GPSLongitude": "2/1 0/1 0/1"})
    assert read_gps(io.BytesIO(data)) is None
    out = geotag_jpeg(data, 48.8584, 2.2945, "Eiffel Tower")
    assert read_gps(io.BytesIO(out)) == pytest.approx((48.8584, 2.2945), abs=1e-5)


def test_exif_block_at_the_segment_limit_still_geotags(tmp_path: Path) -> None:
    """A 65 KB EXIF block: the copy keeps within the 64 KB APP1 limit and carries GPS."""
    data = _with_exif(tmp_path, **{"Exif.Image.Make": "x" * 65_300})
    assert max(_app1_sizes(data)) > 65_000
    out = geotag_jpeg(data, 48.8584, 2.2945, "Eiffel Tower, Paris, France")
    assert read_gps(io.BytesIO(out)) == pytest.approx((48.8584, 2.2945), abs=1e-5)
    assert max(_app1_sizes(out)) <= 0xFFFF
    assert np.array_equal(_pixels(out), _pixels(data))


def test_not_a_jpeg_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    with pytest.raises(GeotagError, match="not a JPEG"):
        geotag_jpeg(buf.getvalue(), 0, 0, "x")


def test_copy_only_for_a_known_landmark_in_a_jpeg(tmp_path: Path) -> None:
    photo = real_photos("03.Eiffel_Tower", "test")[0]
    known = {"known": True, "predictions": [{"landmark": "Eiffel Tower"}],
             "location": {"lat": 48.8584, "lon": 2.2945, "city": "Paris", "country": "France"}}
    dest = tmp_path / "out" / "a.jpg"
    assert geotagged_copy(photo, {**known, "known": False, "location": None}, dest) is None
    assert geotagged_copy(photo, known, dest) == dest
    assert read_gps(dest) == pytest.approx((48.8584, 2.2945), abs=1e-5)
    assert not list(dest.parent.glob(".*.tmp"))  # written through a temporary file
