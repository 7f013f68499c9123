from dataclasses import replace

import numpy as np
import pytest
import torch

from landmark.imageio import cache_image, load_image, resize_short
from tests.conftest import real_photos
from train.presets import (
    EvalPreprocess,
    Preset,
    QuarterTurn,
    SensorNoise,
    eval_transform,
    train_transform,
)


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


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_cache_resizes_in_uint8_within_a_grey_level_of_float(mode: str) -> None:
    """The uint8 resize that serving and training caches use stays with the model file's
    float resize: bilinear everywhere within one grey level, bicubic (whose overshoot is
    clipped between passes) within one and a half on all but a few edge pixels."""
    photo = load_image(real_photos("11.Niagara_Falls")[0])
    full = torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1)
    fast = cache_image(full, 292, mode)
    through_float = EvalPreprocess(Preset(crop_size=292, resize_size=292, mean=(0.0,) * 3,
                                          std=(1.0,) * 3, interpolation=mode),
                                   )(full[None].float() / 255)[0]
    assert fast.dtype == torch.uint8 and fast.shape == (3, 292, 292)
    off = (fast.float() - through_float * 255).abs()
    assert off.mean() < 0.5
    assert (off > (1.0 if mode == "bilinear" else 1.5)).float().mean() < 1e-3
    if mode == "bilinear":
        assert off.max() <= 1.0


def test_quarter_turn_and_noise_are_the_degradations_they_claim() -> None:
    img = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8)
    turns = {QuarterTurn()(img).shape for _ in range(20)}
    assert turns == {(3, 60, 40)}
    turned = QuarterTurn()(img)
    assert any(torch.equal(turned, torch.rot90(img, k, (-2, -1))) for k in (1, 3))
    flat = torch.full((3, 64, 64), 128, dtype=torch.uint8)
    noisy = SensorNoise((0.1, 0.1))(flat)
    assert noisy.dtype == torch.uint8
    assert 20 < noisy.float().std() < 32  # sigma 0.1 of 255, clipped a little


def test_degrade_share_sets_how_many_training_views_are_degraded() -> None:
    """degrade=1 changes every view against the same random crop without it; 0 none."""
    photo = load_image(real_photos("03.Eiffel_Tower")[0])
    full = torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1)
    img = cache_image(full, 73)
    plain = Preset(crop_size=64, resize_size=73, randaug_magnitude=0)
    for share, changed in ((0.0, 0), (1.0, 12)):
        differs = 0
        for seed in range(12):
            torch.manual_seed(seed)
            want = train_transform(plain)(img)
            torch.manual_seed(seed)
            got = train_transform(replace(plain, degrade=share))(img)
            differs += not torch.equal(want, got)
        assert differs == changed, share
