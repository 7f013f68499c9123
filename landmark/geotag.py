"""EXIF GPS: read it from photos, and write it into copies of JPEGs through exiv2.

Writing goes through pyexiv2 (exiv2), never hand-spliced segments: exiv2 keeps every
other tag, copies the compressed pixels byte for byte and, when the EXIF block would
pass the 64 KB JPEG segment limit, leaves out the tags too large to fit (thumbnails,
maker notes) instead of failing.
"""

from __future__ import annotations

import io
import math
import threading
from pathlib import Path
from typing import BinaryIO

import pyexiv2
from PIL import Image

GPS_IFD = 0x8825
_exiv2 = threading.Lock()  # exiv2's Python binding is not documented as thread-safe
pyexiv2.set_log_level(4)  # its warnings go to stdout; failures still raise


class GeotagError(ValueError):
    """A photo whose EXIF cannot be rewritten; the message says why."""


def _to_degrees(value: tuple, ref: str) -> float:
    d, m, s = (float(v) for v in value)
    deg = d + m / 60 + s / 3600
    return -deg if ref in ("S", "W") else deg


def valid_gps(lat: float, lon: float) -> bool:
    """A position a camera could have written: finite, in range, and not the (0, 0) that
    broken GPS chips write."""
    return (math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180
            and (lat, lon) != (0.0, 0.0))


def read_gps(src: str | Path | BinaryIO | Image.Image) -> tuple[float, float] | None:
    """(lat, lon) from a photo's EXIF GPS block, or None when it has no valid one."""
    try:
        img = src if isinstance(src, Image.Image) else Image.open(src)
        gps = img.getexif().get_ifd(GPS_IFD)
        if 2 not in gps or 4 not in gps:
            return None
        lat = _to_degrees(gps[2], gps.get(1, "N"))
        lon = _to_degrees(gps[4], gps.get(3, "E"))
    except (OSError, ValueError, TypeError, ZeroDivisionError, KeyError):
        return None
    return (round(lat, 6), round(lon, 6)) if valid_gps(lat, lon) else None


def _dms(value: float) -> str:
    """Degrees as exiv2's rational triple 'D/1 M/1 S/1000'."""
    value = abs(value)
    d = int(value)
    m = int((value - d) * 60)
    s = round((value - d - m / 60) * 3600 * 1000)
    return f"{d}/1 {m}/1 {s}/1000"


def geotag_jpeg(data: bytes, lat: float, lon: float, description: str) -> bytes:
    """A copy of JPEG `data` with `description` and, unless the photo already has a valid
    GPS position of its own (which is never overwritten), the GPS position (lat, lon).
    The compressed image data and every other tag are kept. Raises GeotagError."""
    if data[:2] != b"\xff\xd8":
        raise GeotagError("not a JPEG file")
    tags = {"Exif.Image.ImageDescription": description}
    if read_gps(io.BytesIO(data)) is None:
        tags.update({"Exif.GPSInfo.GPSVersionID": "2 3 0 0",
                     "Exif.GPSInfo.GPSLatitudeRef": "N" if lat >= 0 else "S",
                     "Exif.GPSInfo.GPSLatitude": _dms(lat),
                     "Exif.GPSInfo.GPSLongitudeRef": "E" if lon >= 0 else "W",
                     "Exif.GPSInfo.GPSLongitude": _dms(lon)})
    try:
        with _exiv2, pyexiv2.ImageData(data) as img:
            img.modify_exif(tags)
            return img.get_bytes()
    except (RuntimeError, ValueError, OSError) as e:
        raise GeotagError(f"cannot write EXIF: {e}") from None


def geotagged_copy(photo: Path, result: dict, dest: Path) -> Path | None:
    """Write to `dest` a copy of JPEG `photo` geotagged with `result`'s landmark (a tag
    record); None, writing nothing, when the photo is no JPEG or no landmark is known.
    Raises GeotagError when the photo's EXIF cannot be rewritten."""
    loc = result.get("location")
    if not loc or not result.get("known"):
        return None
    data = photo.read_bytes()
    if data[:2] != b"\xff\xd8":
        return None
    name = result["predictions"][0]["landmark"]
    out = geotag_jpeg(data, loc["lat"], loc["lon"], f"{name}, {loc['city']}, {loc['country']}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_bytes(out)
    tmp.replace(dest)
    return dest
