"""Photos in: list them, decode any photo into an RGB PIL image (EXIF orientation, odd
modes, huge files), and resize it the way every model file does.

Memory is bounded by the header, before any pixel is decoded: a photo larger than its
format's limit is refused, JPEGs are decoded at reduced scale (libjpeg draft mode), other
formats are box-reduced before any mode conversion, and at most one large decode runs at
a time per process, so N concurrent uploads cannot multiply the peak. `resize_short` and
`center_crop` are the very functions compiled into every model file (train.presets), so
decoding at reduced size here matches what the file does with a full-size photo.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from pillow_heif import register_heif_opener
from torch import Tensor

register_heif_opener()  # phones' HEIC/HEIF photos
ORIENTATION = 0x0112  # the EXIF tag
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
    """Decode (reduced for `max_side`), upright and RGB; `info["source_size"]` keeps the
    photo's full upright size, for answers given in its own pixels."""
    w, h = img.size
    turned = img.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8)
    if max_side and img.format == "JPEG":
        img.draft("RGB", (max_side, max_side))
    img.seek(0)  # first frame of animated GIF/WebP
    img.load()
    ImageOps.exif_transpose(img, in_place=True)  # no copy when upright
    out = _to_rgb(_reduced(img, max_side))
    out.info["source_size"] = (h, w) if turned else (w, h)
    return out


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


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".heic",
                  ".heif"}


def list_images(folder: Path) -> list[Path]:
    """Image files below `folder`, sorted, recursing into sub-folders."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def resolve_workers(workers: int, device: torch.device) -> int:
    """-1 -> DataLoader workers that pay off: none on a small CPU box, where a worker only
    competes with the model for the same cores (bench.pipeline: 90% vs 84% with one
    worker on 2 cores), else up to 8 (GPU boxes need decoding kept off the main thread)."""
    if workers >= 0:
        return workers
    cores = os.cpu_count() or 1
    return 0 if device.type == "cpu" and cores <= 2 else min(8, max(1, cores - 1))


def resize_short(x: Tensor, size: int, interpolation: str = "bilinear") -> Tensor:
    """Resize a (N, C, H, W) batch (float; uint8 for bilinear) so its short side is
    `size`, keeping aspect."""
    h, w = x.shape[-2], x.shape[-1]
    if min(h, w) == size:
        return x
    if h <= w:
        new_h, new_w = size, max(1, int(round(w * size / h)))
    else:
        new_h, new_w = max(1, int(round(h * size / w))), size
    return F.interpolate(x, size=[new_h, new_w], mode=interpolation, align_corners=False,
                         antialias=True)


def center_crop(x: Tensor, size: int) -> Tensor:
    """Crop the central size x size window of a (N, C, H, W) batch (H, W >= size)."""
    h, w = x.shape[-2], x.shape[-1]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


UINT8_MODES = ("bilinear", "bicubic")  # F.interpolate resizes uint8 itself in these


def cache_image(img: Tensor, size: int, interpolation: str = "bilinear") -> Tensor:
    """uint8 (3, H, W) -> uint8 (3, size, size): short side resized, centre square kept.
    Bilinear and bicubic resize the uint8 image directly, 4x and 10x faster than through
    float (on a 2-core CPU, bicubic's 7 ms a photo was a fifth of an ONNX tag): bilinear
    within one grey level of float, bicubic 0.2 on average (its overshoot is clipped
    between the two passes). Other modes go through float."""
    if interpolation in UINT8_MODES:
        x = resize_short(img.unsqueeze(0), size, interpolation)
        return center_crop(x, size).squeeze(0).contiguous()
    x = resize_short(img.unsqueeze(0).float() / 255.0, size, interpolation)
    x = center_crop(x, size)
    return (x.squeeze(0) * 255.0).round().clamp(0, 255).to(torch.uint8)
