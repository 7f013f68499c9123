"""EXIF GPS: read it from photos, and write it into JPEGs without touching the pixels."""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import BinaryIO

from PIL import Image
from PIL.TiffImagePlugin import IFDRational

GPS_IFD = 0x8825
IMAGE_DESCRIPTION = 0x010E


def _to_degrees(value: tuple, ref: str) -> float:
    d, m, s = (float(v) for v in value)
    deg = d + m / 60 + s / 3600
    return -deg if ref in ("S", "W") else deg


def read_gps(src: str | Path | BinaryIO | Image.Image) -> tuple[float, float] | None:
    """(lat, lon) from a photo's EXIF GPS block, or None when it has none."""
    try:
        img = src if isinstance(src, Image.Image) else Image.open(src)
        gps = img.getexif().get_ifd(GPS_IFD)
        if 2 not in gps or 4 not in gps:
            return None
        return (round(_to_degrees(gps[2], gps.get(1, "N")), 6),
                round(_to_degrees(gps[4], gps.get(3, "E")), 6))
    except (OSError, ValueError, TypeError, ZeroDivisionError, KeyError):
        return None


def _dms(value: float) -> tuple[IFDRational, IFDRational, IFDRational]:
    value = abs(value)
    d = int(value)
    m = int((value - d) * 60)
    s = round((value - d - m / 60) * 3600 * 1000)
    return IFDRational(d, 1), IFDRational(m, 1), IFDRational(s, 1000)


def _segments(data: bytes) -> tuple[list[bytes], bytes]:
    """Split a JPEG into its header segments (after SOI) and the rest from SOS on."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG file")
    pos, segments = 2, []
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xDA:  # start of scan: entropy-coded pixels follow
            break
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        segments.append(data[pos:pos + 2 + length])
        pos += 2 + length
    return segments, data[pos:]


def geotag_jpeg(data: bytes, lat: float, lon: float, description: str) -> bytes:
    """A copy of JPEG `data` whose EXIF carries GPS and a description; the compressed
    image data is copied byte for byte (no re-encoding). Other EXIF fields are kept."""
    segments, scan = _segments(data)
    exif = Image.open(io.BytesIO(data)).getexif()
    exif[IMAGE_DESCRIPTION] = description
    gps = exif.get_ifd(GPS_IFD)
    gps.update({0: b"\x02\x03\x00\x00", 1: "N" if lat >= 0 else "S", 2: _dms(lat),
                3: "E" if lon >= 0 else "W", 4: _dms(lon)})
    payload = exif.tobytes()  # already starts with the b"Exif\0\0" header
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    kept = [s for s in segments if not (s[1] == 0xE1 and s[4:10] == b"Exif\x00\x00")]
    at = 1 if kept and kept[0][1] == 0xE0 else 0  # after JFIF APP0, if any
    return b"\xff\xd8" + b"".join(kept[:at]) + app1 + b"".join(kept[at:]) + scan
