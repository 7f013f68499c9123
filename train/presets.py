"""Train and eval transforms in one place, so training, export and serving cannot drift.

Images travel as uint8 (3, H, W) tensors until the model needs floats. Eval-time
preprocessing (`EvalPreprocess`) is TorchScript-able and is embedded in every exported
model; the dataset cache stores photos resized by the very same `resize_short`
(landmark.imageio, which serving shares).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn
from torchvision.transforms import v2

from landmark.contract import EvalPreprocess

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preset:
    """How a model wants its input: crop size, resize size, normalisation, interpolation."""

    crop_size: int = 128
    resize_size: int = 146
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    # train-time augmentation
    min_scale: float = field(default=0.25, compare=False)
    randaug_magnitude: int = field(default=9, compare=False)
    degrade: float = field(default=0.0, compare=False)  # share of views degraded

    @classmethod
    def from_crop_pct(cls, crop_size: int, crop_pct: float, **kw: object) -> Preset:
        return cls(crop_size=crop_size, resize_size=math.floor(crop_size / crop_pct), **kw)

    def to_dict(self) -> dict:
        return asdict(self)


class QuarterTurn(nn.Module):
    """A quarter turn either way: a phone photo whose EXIF orientation was lost."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.rot90(x, 1 if torch.rand(()) < 0.5 else 3, (-2, -1))


class SensorNoise(nn.Module):
    """Gaussian noise on a uint8 image, its sigma drawn from `sigma` (share of 255)."""

    def __init__(self, sigma: tuple[float, float] = (0.02, 0.12)) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, x: Tensor) -> Tensor:
        s = 255.0 * float(torch.empty(()).uniform_(*self.sigma))
        noisy = x.float() + s * torch.randn(x.shape, device=x.device)
        return noisy.round().clamp(0, 255).to(torch.uint8)


def degradations(p: float) -> nn.Module:
    """With probability p, one of the degradations that cost the transfer model most on
    `python -m bench.robustness`: blur (sigma up to 4 px at the crop, about the bench's
    1% of a photo's long side), a quarter turn, sensor noise."""
    blur = v2.GaussianBlur(kernel_size=25, sigma=(0.5, 4.0))
    return v2.RandomApply([v2.RandomChoice([blur, QuarterTurn(), SensorNoise()])], p=p)


def train_transform(preset: Preset) -> v2.Compose:
    """uint8 (3, S, S) tensor -> augmented, normalised float (3, crop, crop)."""
    interp = v2.InterpolationMode(preset.interpolation)
    steps: list[nn.Module] = [
        v2.RandomResizedCrop(preset.crop_size, scale=(preset.min_scale, 1.0),
                             interpolation=interp, antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if preset.randaug_magnitude > 0:
        # its affine ops take nearest/bilinear only on tensors
        steps.append(v2.RandAugment(num_ops=2, magnitude=preset.randaug_magnitude,
                                    interpolation=v2.InterpolationMode.BILINEAR))
    if preset.degrade > 0:
        steps.append(degradations(preset.degrade))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(preset.mean, preset.std)]
    return v2.Compose(steps)


def eval_transform(preset: Preset) -> nn.Module:
    """uint8 (3, H, W) tensor -> normalised float (3, crop, crop), as exported.

    On a cached square this matches the export on the full photo up to uint8 rounding and
    at most a one-pixel crop offset (integer centring done in two steps)."""
    pre = EvalPreprocess(preset)

    class _One(nn.Module):
        def forward(self, img: Tensor) -> Tensor:
            return pre(img.unsqueeze(0).float() / 255.0).squeeze(0)

    return _One()
