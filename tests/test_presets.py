import numpy as np
import torch

from landmark.data import load_image
from landmark.presets import (
    EvalPreprocess,
    Preset,
    cache_image,
    eval_transform,
    resize_short,
    train_transform,
)
from tests.conftest import real_photos


def test_resize_short_keeps_aspect() -> None:
    x = torch.rand(2, 3, 300, 600)
    assert resize_short(x, 150).shape == (2, 3, 150, 300)
    assert resize_short(torch.rand(1, 3, 90, 45), 146).shape == (1, 3, 292, 146)


def test_train_and_eval_transforms_shapes() -> None:
    preset = Preset(crop_size=96, resize_size=110)
    img = torch.randint(0, 256, (3, 110, 110), dtype=torch.uint8)
    out = train_transform(preset)(img)
    assert out.shape == (3, 96, 96) and out.dtype == torch.float32
    ev = eval_transform(preset)(img)
    assert ev.shape == (3, 96, 96) and ev.dtype == torch.float32
    assert not torch.equal(train_transform(preset)(img), train_transform(preset)(img))
    bicubic = Preset(crop_size=96, resize_size=110, interpolation="bicubic")
    assert train_transform(bicubic)(img).shape == (3, 96, 96)


def test_cache_then_eval_matches_eval_on_full_photo() -> None:
    """The training-time path (cache -> eval transform) matches the exported one on a real
    photo, up to uint8 rounding and at most a one-pixel crop offset."""
    preset = Preset(crop_size=64, resize_size=73)
    photo = load_image(real_photos("03.Eiffel_Tower")[1])
    full = torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1)
    via_cache = eval_transform(preset)(cache_image(full, preset.resize_size))
    direct = EvalPreprocess(preset)(full[None].float() / 255).squeeze(0)
    assert via_cache.shape == direct.shape == (3, 64, 64)
    assert (via_cache - direct).abs().mean() < 0.1  # normalised units (~0.02 in [0, 1])
    other = EvalPreprocess(preset)(torch.rand(1, 3, 300, 420)).squeeze(0)
    assert (via_cache - other).abs().mean() > 0.5


def test_eval_preprocess_scripts() -> None:
    pre = torch.jit.script(EvalPreprocess(Preset(crop_size=32, resize_size=36)))
    assert pre(torch.rand(1, 3, 50, 100)).shape == (1, 3, 32, 32)


def test_bilinear_cache_resizes_in_uint8_within_one_grey_level() -> None:
    photo = load_image(real_photos("11.Niagara_Falls")[0])
    full = torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1)
    fast = cache_image(full, 73, "bilinear")
    through_float = EvalPreprocess(Preset(crop_size=73, resize_size=73, mean=(0.0,) * 3,
                                          std=(1.0,) * 3))(full[None].float() / 255)[0]
    assert fast.dtype == torch.uint8 and fast.shape == (3, 73, 73)
    assert (fast.float() - through_float * 255).abs().max() <= 1.0
