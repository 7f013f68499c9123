import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from landmark.imageio import ImageError, load_image
from tests.conftest import real_photos
from train.data import scan_split
from train.data.cache import cached_split, decode_split


def _save(img: Image.Image, path: Path, **kw: object) -> Path:
    img.save(path, **kw)
    return path


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "LA", "I;16", "1"])
def test_any_mode_becomes_rgb(tmp_path: Path, mode: str) -> None:
    src = Image.open(real_photos("03.Eiffel_Tower")[0]).convert("RGB").resize((64, 48))
    img = src.convert(mode) if mode != "I;16" else Image.fromarray(
        np.asarray(src.convert("L"), dtype=np.uint16) * 257)
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    out = load_image(_save(img, tmp_path / f"x.{fmt.lower()}", format=fmt))
    assert out.mode == "RGB" and out.size == (64, 48)
    if mode == "I;16":  # 16-bit is scaled down, not clipped to white
        grey = np.asarray(src.convert("L"), dtype=float)
        assert abs(np.asarray(out)[..., 0].mean() - grey.mean()) < 2


def test_transparent_pixels_become_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    out = load_image(_save(img, tmp_path / "a.png"))
    assert out.getpixel((5, 5)) == (255, 255, 255)


def test_exif_orientation_is_honoured(tmp_path: Path) -> None:
    img = Image.new("RGB", (80, 40), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    out = load_image(_save(img, tmp_path / "o.jpg", exif=exif))
    assert out.size == (40, 80)


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("P", (50, 50), c) for c in (1, 2, 3)]
    path = tmp_path / "a.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert load_image(path).size == (50, 50)


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (4000, 3000), (90, 90, 200)), tmp_path / "big.jpg")
    out = load_image(path, max_side=500)
    assert 500 <= max(out.size) <= 1000 and out.size[0] > out.size[1]


def test_non_image_and_truncated_raise_clear_errors(tmp_path: Path) -> None:
    txt = tmp_path / "notes.jpg"
    txt.write_text("not a photo")
    with pytest.raises(ImageError, match="not an image"):
        load_image(txt)
    data = real_photos("03.Eiffel_Tower")[0].read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match="truncated"):
        load_image(cut)
    with pytest.raises(ImageError):
        load_image(io.BytesIO(b""))


def test_bad_files_are_skipped_and_counted(tiny_data: Path, tmp_path: Path,
                                           cache_dir: Path) -> None:
    split = scan_split(tiny_data, "train")
    folder = split.paths[0].parent
    good = len(split.paths)
    (folder / "zz_broken.jpg").write_bytes(split.paths[0].read_bytes()[:500])
    (folder / "zz_text.png").write_text("hello")
    try:
        split = scan_split(tiny_data, "train")
        data = decode_split(split, 40, workers=1)
        assert len(data.labels) == good and len(data.skipped) == 2
        assert data.images.shape == (good, 3, 40, 40)
        pooled = decode_split(split, 40, workers=2)  # worker processes decode the same
        assert torch.equal(pooled.images, data.images) and pooled.paths == data.paths
        assert pooled.skipped == data.skipped and torch.equal(pooled.labels, data.labels)
        cached = cached_split(split, 40, cache_dir=cache_dir)
        again = cached_split(split, 40, cache_dir=cache_dir)
        assert len(list(cache_dir.iterdir())) == 1
        assert (cached.images == again.images).all() and len(again.skipped) == 2
    finally:
        for p in folder.glob("zz_*"):
            p.unlink()


def test_png_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    """The reported bomb: under 1 MB on disk, 238 MP (3.8 GB as RGBA) once decoded.
    Pillow only warns below twice its own limit; the header check refuses it."""
    import resource
    import time

    from bench.app_load import bomb_png
    path = bomb_png(tmp_path / "bomb.png")
    assert path.stat().st_size < 1_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(ImageError, match="too large: 15000x15900"):
        load_image(path, max_side=520)
    assert time.perf_counter() - start < 1.0  # refused, not decoded (that takes ~27 s)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100


def test_big_png_within_the_limit_is_reduced_before_conversion(tmp_path: Path) -> None:
    from bench.app_load import bomb_png
    path = bomb_png(tmp_path / "big.png", 6000, 4000)  # 24 MP RGBA, within the limit
    out = load_image(path, max_side=500)
    assert out.mode == "RGB" and 500 <= min(out.size) < 1000 and out.size[0] > out.size[1]
    assert out.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white, as unreduced
