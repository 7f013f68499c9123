"""Decode any photo into an RGB PIL image: EXIF orientation, odd modes, huge files."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pillow_heif import register_heif_opener

register_heif_opener()  # phones' HEIC/HEIF photos
# Refuse decompression bombs outright instead of warning (PIL's default limit is ~89 MP).
MAX_PIXELS = 120_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageError(ValueError):
    """A file that cannot be decoded as a photo."""


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (L, P, RGBA, CMYK, I;16, F...) to 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        hi = float(arr.max()) or 1.0
        scale = 255.0 / (65535.0 if hi > 255 else 255.0)
        img = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(src: str | Path | BinaryIO, max_side: int | None = None) -> Image.Image:
    """Open `src`, honour EXIF orientation and return an RGB image.

    With `max_side`, JPEGs are decoded at reduced scale (libjpeg draft mode) when the
    photo is much larger, so a 50-megapixel upload costs little memory and time.
    Raises ImageError with a readable message on anything that is not a usable image.
    """
    name = getattr(src, "name", src)
    try:
        with Image.open(src) as img:
            if max_side and img.format == "JPEG":
                img.draft("RGB", (max_side, max_side))
            img.seek(0)  # first frame of animated GIF/WebP
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # no copy when upright
            return _to_rgb(img)
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: image too large ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{name}: not an image file") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: unreadable or truncated image ({e})") from e
