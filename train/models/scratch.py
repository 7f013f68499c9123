"""CNNs designed and trained from scratch for a CPU budget."""

from __future__ import annotations

from torch import Tensor, nn

from train.models.embedding import Pooled
from train.models.registry import register_model
from train.presets import Preset


def conv_bn(cin: int, cout: int, stride: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if act else nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Channel attention: global pool -> bottleneck MLP -> sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(8, channels // reduction)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1),
                                  nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1),
                                  nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) with optional squeeze-excite, zero-init last BN."""

    def __init__(self, cin: int, cout: int, stride: int, se: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, stride), conv_bn(cout, cout, act=False))
        nn.init.zeros_(self.body[1][1].weight)
        self.se = SqueezeExcite(cout) if se else nn.Identity()
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
            self.skip = nn.Sequential(pool, nn.Conv2d(cin, cout, 1, bias=False),
                                      nn.BatchNorm2d(cout))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.se(self.body(x)) + self.skip(x))


class Classifier(nn.Module):
    """features -> global average pool -> dropout -> linear."""

    def __init__(self, features: nn.Module, width: int, num_classes: int, drop: float) -> None:
        super().__init__()
        self.features = features
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(drop),
                                  nn.Linear(width, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def split_head(self) -> tuple[nn.Module, nn.Module]:
        """(photo -> (pooled features, the same as descriptor, layout), pooled features ->
        logits), sharing the weights."""
        return Pooled(self.features, nn.Sequential(*self.head[:2])), self.head[2:]


def _init(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


def landmark_resnet(num_classes: int, widths: tuple[int, ...] = (48, 96, 192, 384),
                    depths: tuple[int, ...] = (1, 2, 2, 1), se: bool = True,
                    drop: float = 0.3, crop_size: int = 160) -> nn.Module:
    """Our design: a narrow ResNet with SE blocks; stride-2 stem, four residual stages."""
    stem = nn.Sequential(conv_bn(3, 24, 2), conv_bn(24, widths[0]))
    stages, cin = [], widths[0]
    for i, (w, d) in enumerate(zip(widths, depths, strict=True)):
        for j in range(d):
            stages.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1, se))
            cin = w
    stages.insert(0, nn.MaxPool2d(2))
    model = _init(Classifier(nn.Sequential(stem, *stages), cin, num_classes, drop))
    model.preset = Preset.from_crop_pct(crop_size, 0.875)
    return model


register_model(landmark_resnet)


@register_model
def landmark_resnet_s(num_classes: int, **kw: object) -> nn.Module:
    """Smaller variant: half the widths."""
    return landmark_resnet(num_classes, widths=(32, 64, 128, 256), **kw)


@register_model
def vgg_bn(num_classes: int, widths: tuple[int, ...] = (32, 64, 128, 256, 256),
           drop: float = 0.3, crop_size: int = 128) -> nn.Module:
    """The anchor: five stages of two 3x3 conv + BN, max-pooled (no residuals)."""
    layers, cin = [], 3
    for w in widths:
        layers += [conv_bn(cin, w), conv_bn(w, w), nn.MaxPool2d(2)]
        cin = w
    model = _init(Classifier(nn.Sequential(*layers), cin, num_classes, drop))
    model.preset = Preset.from_crop_pct(crop_size, 0.875)
    return model


@register_model
def tiny_cnn(num_classes: int, crop_size: int = 32) -> nn.Module:
    """A few-thousand-parameter CNN for tests and smoke runs."""
    features = nn.Sequential(conv_bn(3, 8, 2), conv_bn(8, 16, 2))
    model = _init(Classifier(features, 16, num_classes, 0.0))
    model.preset = Preset.from_crop_pct(crop_size, 0.875, randaug_magnitude=0)
    return model
