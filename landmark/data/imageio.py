"""Decode any photo into an RGB PIL image: EXIF orientation, odd modes, huge files.

Memory is bounded by the header, before any pixel is decoded: a photo larger than its
format's limit is refused, JPEGs are decoded at reduced scale (libjpeg draft mode), other
formats are box-reduced before any mode conversion, and at most one large decode runs at
a time per process, so N concurrent uploads cannot multiply the peak.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from pillow_heif import register_heif_opener

register_heif_opener()  # phones' HEIC/HEIF photos
# JPEGs decode at 1/8 scale when asked for a small image, so they may be far larger than
# formats that must be decoded whole (a 50 MP RGBA PNG is 200 MB once decoded).
MAX_PIXELS_JPEG = 250_000_000
MAX_PIXELS = 50_000_000
BIG_DECODE = 16_000_000  # pixels: decodes at least this large run one at a time
Image.MAX_IMAGE_PIXELS = MAX_PIXELS_JPEG  # Pillow's own guard, for paths that skip ours
_big_decode = threading.BoundedSemaphore(1)


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


def check_size(img: Image.Image) -> None:
    """Refuse, from the header alone, a photo too large to decode safely."""
    limit = MAX_PIXELS_JPEG if img.format == "JPEG" else MAX_PIXELS
    w, h = img.size
    if w * h > limit:
        raise ImageError(f"image too large: {w}x{h} is {w * h / 1e6:.0f} MP, over the "
                         f"{limit / 1e6:.0f} MP limit for {img.format or 'this format'}")


def _reduced(img: Image.Image, max_side: int | None) -> Image.Image:
    """Box-reduce by an integer factor while the short side stays >= max_side."""
    factor = min(img.size) // max_side if max_side else 0
    if factor < 2:
        return img
    if img.mode not in ("L", "LA", "RGB", "RGBA", "I", "F", "CMYK"):
        img = img.convert("RGBA" if "A" in img.mode or img.mode == "P" else "RGB")
    return img.reduce(factor)


def _decode(img: Image.Image, max_side: int | None) -> Image.Image:
    if max_side and img.format == "JPEG":
        img.draft("RGB", (max_side, max_side))
    img.seek(0)  # first frame of animated GIF/WebP
    img.load()
    ImageOps.exif_transpose(img, in_place=True)  # no copy when upright
    return _to_rgb(_reduced(img, max_side))


def load_image(src: str | Path | BinaryIO, max_side: int | None = None) -> Image.Image:
    """Open `src`, honour EXIF orientation and return an RGB image.

    With `max_side`, the photo is decoded or reduced to no less than `max_side` on its
    short side (roughly; JPEG draft mode and box reduction go in integer steps).
    Raises ImageError with a readable message on anything that is not a usable image.
    """
    name = getattr(src, "name", src)
    try:
        with Image.open(src) as img:
            check_size(img)
            w, h = img.size
            scale = 64 if max_side and img.format == "JPEG" else 1  # draft: 1/8 a side
            if w * h // scale < BIG_DECODE:
                return _decode(img, max_side)
            with _big_decode:
                return _decode(img, max_side)
    except ImageError as e:
        raise ImageError(f"{name}: {e}") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: image too large ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{name}: not an image file") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: unreadable or truncated image ({e})") from e


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 (3, H, W) tensor (its own copy of the pixels)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
