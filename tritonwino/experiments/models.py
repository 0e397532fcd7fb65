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

The three networks of Yu, Park, Naumov (2019) [code, github.com/jiecaoyu/winograd]:

- ``vgg_nagadomi``: VGG-nagadomi, their CIFAR-10 model.
- ``conv_pool_cnn_c``: ConvPool-CNN-C (Springenberg et al. 2015, "Striving for Simplicity"), their
  CIFAR-100 model.
- ``resnet18_max``: their ImageNet ResNet-18 "ResNet.max"; ``stem="small"`` for 32×32 inputs [ours].

``build_model(name, num_classes, in_channels)`` builds any of them by the names in ``MODELS``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["MODELS", "SmallVGG", "SmallResNet", "BasicBlockMax", "ResNetMax", "build_model", "conv_pool_cnn_c",
           "resnet18_max", "VGG", "vgg16", "vgg_nagadomi", "MODEL_DESCRIPTIONS"]


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
    ``cfg`` says "M"; then average pooling to ``head_pool`` × ``head_pool`` (1: global) and a
    linear classifier.

    Default cfg (16, "M", 32, 32, "M", 64) on 28×28 gives 28→14→7; ``head_pool=7`` (smallvgg-flat)
    keeps the whole 7×7 map for the classifier, which the converged pruning grid needs to pass 92%
    on Fashion-MNIST (docs/pruning.md).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        cfg: Sequence[int | str] = (16, "M", 32, 32, "M", 64),
        batch_norm: bool = True,
        head_pool: int = 1,
    ):
        super().__init__()
        _check_pos_int("num_classes", num_classes)
        _check_pos_int("in_channels", in_channels)
        _check_pos_int("head_pool", head_pool)
        widths = [v for v in cfg if v != "M"]
        if not widths:
            raise ValueError("cfg needs at least one conv width")
        self.features = _vgg_features(cfg, in_channels, batch_norm)
        self.pool = nn.AdaptiveAvgPool2d(head_pool)
        self.classifier = nn.Linear(int(widths[-1]) * head_pool * head_pool, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class BasicBlockMax(nn.Module):
    """ResNet BasicBlock where ``stride=2`` means MaxPool2d(2) then a stride-1 3×3 conv [code]."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride!r}")
        # ceil_mode: an odd input (7×7 from 28×28) gives the 1×1 stride-2 shortcut's size; even ones are unchanged
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True) if stride == 2 else nn.Identity()
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


def resnet18_max(num_classes: int = 1000, in_channels: int = 3, stem: str = "imagenet") -> ResNetMax:
    """ResNet-18, ResNet.max variant [code, SpatialPruning/ImageNet/ResNet.max/self_models/resnet.py]:
    every stride-2 3×3 conv of a BasicBlock is ``MaxPool2d(2, 2)`` + a stride-1 3×3 conv, because
    Winograd needs stride 1; 16 stride-1 3×3 convs (the authors' prune list), three 1×1 stride-2
    downsample convs and, with ``stem="imagenet"``, the 7×7/s2 conv + max-pool stem.

    ``stem="small"`` (one 3×3/s1 conv, no stem pooling) is the usual CIFAR adaptation [ours: the
    authors ran ResNet-18 on ImageNet only]; a 32×32 input then ends at 4×4 before the global pool.

    Example:
        >>> net = resnet18_max(num_classes=10, stem="small")
        >>> tuple(net(torch.randn(2, 3, 32, 32)).shape)
        (2, 10)
    """
    return ResNetMax((2, 2, 2, 2), (64, 128, 256, 512), num_classes, in_channels, stem=stem)


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


NAGADOMI_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M")


def vgg_nagadomi(num_classes: int = 10, in_channels: int = 3) -> VGG:
    """VGG-nagadomi, the CIFAR-10 network of Yu et al. (2019) and Liu et al. (2018) [code,
    SpatialPruning/CIFAR10/self_models/vgg_nagadomi.py; after nagadomi's kaggle-cifar10-torch7]:
    8 3×3/s1/p1 convs 64, 64, M, 128, 128, M, 256×4, M, each with BatchNorm + ReLU, then FC
    4096→1024→1024→classes with ReLU and dropout 0.5. (An earlier version of the authors' file has
    no BatchNorm and dropout 0.25 after each pool; the BatchNorm one is the paper-era model.)

    The 4×4 adaptive pool is the identity on 32×32 inputs and lets 28×28 ones through [ours].

    Example:
        >>> net = vgg_nagadomi()
        >>> tuple(net(torch.randn(2, 3, 32, 32)).shape)
        (2, 10)
        >>> sum(isinstance(m, nn.Conv2d) for m in net.modules())
        8
    """
    return VGG(NAGADOMI_CFG, num_classes, in_channels, batch_norm=True, pool_size=4, hidden=1024)


class _ConvPoolCNNC(nn.Module):
    def __init__(self, num_classes: int, in_channels: int):
        super().__init__()
        _check_pos_int("num_classes", num_classes)
        _check_pos_int("in_channels", in_channels)

        def block(c_in: int, c_out: int, k: int = 3) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, k, padding=k // 2), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

        pool = [nn.MaxPool2d(3, stride=2, padding=1), nn.Dropout(0.5)]
        self.classifier = nn.Sequential(
            nn.Dropout(0.2), *block(in_channels, 96), *block(96, 96), *block(96, 96), *pool,
            *block(96, 192), *block(192, 192), *block(192, 192), *pool,
            *block(192, 192), *block(192, 192, 1),
            nn.Conv2d(192, num_classes, 1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1),
        )
        for mod in self.modules():  # the authors' initialisation [code]
            if isinstance(mod, nn.Conv2d):
                nn.init.normal_(mod.weight, 0.0, 0.5 / mod.weight[0].numel() ** 0.5)
                nn.init.zeros_(mod.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(x), 1)


def conv_pool_cnn_c(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """ConvPool-CNN-C (Springenberg et al. 2015), the CIFAR-100 network of Yu et al. (2019) [code,
    SpatialPruning/CIFAR100/self_models/conv_pool_cnn_c.py]: dropout 0.2; 3×(3×3 conv 96 + BN +
    ReLU); max-pool 3/s2/p1 + dropout 0.5; 3×(3×3 conv 192 + BN + ReLU); max-pool + dropout 0.5;
    3×3 conv 192 + BN + ReLU; 1×1 conv 192 + BN + ReLU; 1×1 conv to the classes + ReLU; global
    average pool (their AvgPool2d(8) on 32×32 inputs). Seven 3×3 convs (indices 0–6), all stride 1.
    Weights initialised as theirs: N(0, 0.5/√fan_in), zero bias.

    Example:
        >>> net = conv_pool_cnn_c()
        >>> tuple(net(torch.randn(2, 3, 32, 32)).shape)
        (2, 100)
    """
    return _ConvPoolCNNC(num_classes, in_channels)


# name -> builder(num_classes, in_channels); the grid's --model choices
MODELS: dict[str, Callable[[int, int], nn.Module]] = {
    "smallvgg": lambda nc, c: SmallVGG(nc, c),
    "smallvgg-flat": lambda nc, c: SmallVGG(nc, c, head_pool=7),
    "smallvgg-wide": lambda nc, c: SmallVGG(nc, c, cfg=(32, "M", 64, 64, "M", 128)),
    "smallvgg-wide-flat": lambda nc, c: SmallVGG(nc, c, cfg=(32, "M", 64, 64, "M", 128), head_pool=7),
    "vgg-nagadomi": vgg_nagadomi,
    "convpool-cnn-c": conv_pool_cnn_c,
    "resnet18-max": lambda nc, c: resnet18_max(nc, c, stem="small"),
    "resnet18-max-imagenet": lambda nc, c: resnet18_max(nc, c, stem="imagenet"),
}

MODEL_DESCRIPTIONS = {
    "smallvgg": "SmallVGG(16,M,32,32,M,64)+BN",
    "smallvgg-flat": "SmallVGG(16,M,32,32,M,64)+BN, 7x7 linear head",
    "smallvgg-wide": "SmallVGG(32,M,64,64,M,128)+BN",
    "smallvgg-wide-flat": "SmallVGG(32,M,64,64,M,128)+BN, 7x7 linear head",
    "vgg-nagadomi": "VGG-nagadomi (Yu et al. CIFAR-10)",
    "convpool-cnn-c": "ConvPool-CNN-C (Yu et al. CIFAR-100)",
    "resnet18-max": "ResNet-18 max, 3x3 stem (CIFAR)",
    "resnet18-max-imagenet": "ResNet-18 max, 7x7 stem (Yu et al. ImageNet)",
}


def build_model(name: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """The model ``name`` (a key of ``MODELS``) for ``num_classes`` and ``in_channels``.

    Example:
        >>> tuple(build_model("smallvgg", 10, 1)(torch.randn(1, 1, 28, 28)).shape)
        (1, 10)
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    return MODELS[name](num_classes, in_channels)
