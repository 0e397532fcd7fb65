"""Model definitions for pruning experiments, the demo and model-integration work.

All 3×3 convs are stride 1 so every one of them can run as Winograd; downsampling is done by
``MaxPool2d(2)`` as in the authors' ResNet.max [code, SpatialPruning/ImageNet/ResNet.max]:
a stride-2 3×3 conv of a BasicBlock becomes ``MaxPool2d(2, 2)`` + a stride-1 3×3 conv; the
1×1 downsample convs and the 7×7 stem stay as they are.

- ``SmallVGG``: a tiny VGG-style CNN for 1- or 3-channel 28×28 / 32×32 inputs [ours].
- ``SmallResNet``: a tiny ResNet.max-style CNN [ours: widths/depth].
- ``resnet18_max``: full-size ResNet-18 with the ResNet.max change (layer shapes as torchvision's
  resnet18 otherwise).
- ``vgg16``: full-size VGG-16 (config "D", with BatchNorm [ours]) and an adaptive-pool classifier
  so that 32×32 and 224×224 inputs both work [ours].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["SmallVGG", "SmallResNet", "BasicBlockMax", "ResNetMax", "resnet18_max", "VGG", "vgg16"]


def _check_pos_int(name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


def _vgg_features(cfg: Sequence[int | str], in_channels: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers.append(nn.Conv2d(c, int(v), 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(int(v)))
            layers.append(nn.ReLU(inplace=True))
            c = int(v)
    return nn.Sequential(*layers)


class SmallVGG(nn.Module):
    """VGG-style: ``widths`` 3×3/s1/p1 conv(+BN)+ReLU stages, each followed by MaxPool2d(2) where
    ``cfg`` says "M"; then global average pooling and a linear classifier.

    Default cfg (16, "M", 32, 32, "M", 64) on 28×28 gives 28→14→7.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        cfg: Sequence[int | str] = (16, "M", 32, 32, "M", 64),
        batch_norm: bool = True,
    ):
        super().__init__()
        _check_pos_int("num_classes", num_classes)
        _check_pos_int("in_channels", in_channels)
        widths = [v for v in cfg if v != "M"]
        if not widths:
            raise ValueError("cfg needs at least one conv width")
        self.features = _vgg_features(cfg, in_channels, batch_norm)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(int(widths[-1]), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class BasicBlockMax(nn.Module):
    """ResNet BasicBlock where ``stride=2`` means MaxPool2d(2) then a stride-1 3×3 conv [code]."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride!r}")
        self.pool = nn.MaxPool2d(2, 2) if stride == 2 else nn.Identity()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            # the original 1×1 stride-2 downsample is kept as is [code]
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(self.pool(x))))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetMax(nn.Module):
    """ResNet of ``BasicBlockMax`` blocks. ``stem="imagenet"``: 7×7/s2 conv + maxpool 3/s2;
    ``stem="small"``: one 3×3/s1 conv (for 28×28 / 32×32 inputs) [ours]."""

    def __init__(
        self,
        layers: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        num_classes: int = 1000,
        in_channels: int = 3,
        stem: str = "imagenet",
    ):
        super().__init__()
        _check_pos_int("num_classes", num_classes)
        _check_pos_int("in_channels", in_channels)
        if len(layers) != len(widths) or not layers:
            raise ValueError(f"layers {tuple(layers)} and widths {tuple(widths)} must be non-empty and equally long")
        w0 = widths[0]
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, w0, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(w0),
                nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1),
            )
        elif stem == "small":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, w0, 3, padding=1, bias=False), nn.BatchNorm2d(w0), nn.ReLU(inplace=True)
            )
        else:
            raise ValueError(f"stem must be 'imagenet' or 'small', got {stem!r}")
        blocks: list[nn.Module] = []
        inp = w0
        for i, (nb, w) in enumerate(zip(layers, widths, strict=True)):
            for j in range(nb):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlockMax(inp, w, stride))
                inp = w
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inp, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def SmallResNet(num_classes: int = 10, in_channels: int = 1, widths: Sequence[int] = (16, 32, 64)) -> ResNetMax:
    """A tiny ResNet.max: small 3×3 stem and one BasicBlockMax per width [ours]."""
    return ResNetMax([1] * len(widths), widths, num_classes, in_channels, stem="small")


def resnet18_max(num_classes: int = 1000, in_channels: int = 3) -> ResNetMax:
    """ResNet-18, ResNet.max variant: 16 stride-1 3×3 convs (the authors' prune list), a 7×7 stem and
    three 1×1 stride-2 downsample convs."""
    return ResNetMax((2, 2, 2, 2), (64, 128, 256, 512), num_classes, in_channels, stem="imagenet")


VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """VGG with conv cfg, adaptive 1×1 (small inputs) or 7×7 pooling and the usual classifier."""

    def __init__(self, cfg=VGG16_CFG, num_classes: int = 1000, in_channels: int = 3,
                 batch_norm: bool = True, pool_size: int = 7, hidden: int = 4096):
        super().__init__()
        _check_pos_int("num_classes", num_classes)
        _check_pos_int("in_channels", in_channels)
        self.features = _vgg_features(cfg, in_channels, batch_norm)
        last = [v for v in cfg if v != "M"][-1]
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.classifier = nn.Sequential(
            nn.Linear(last * pool_size * pool_size, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def vgg16(num_classes: int = 1000, in_channels: int = 3, batch_norm: bool = True) -> VGG:
    """VGG-16 (13 stride-1 3×3 convs)."""
    return VGG(VGG16_CFG, num_classes, in_channels, batch_norm)
