"""Layer discovery: which convolutions of a model (built-in, saved, or given as shapes) a Winograd
path can run, with their input shapes and packed weights. Used by ``tritonwino tune``, the benchmarks
and the notebooks. Errors are ``ValueError`` / ``FileNotFoundError`` with the reason; the CLI turns
them into one-line messages."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import _checks, dwm, reference
from ..modules import SparseWinogradConv2d, ineligible_reason
from ..packing import PackedWinogradWeight, pack_winograd_weight
from ..testing import random_pruned_q
from .models import SmallVGG, resnet18_max, vgg16

__all__ = [
    "ARCHS",
    "ARCH_INPUT",
    "Layer",
    "build_arch",
    "eligible_conv_names",
    "first_in_channels",
    "input_shapes",
    "layers_from_arch",
    "layers_from_model",
    "layers_from_shapes",
    "load_model",
    "tunable",
]

ARCHS = ("resnet18", "vgg16", "small-vgg")
# (default input size, input channels) per architecture: the sizes the models are meant for.
ARCH_INPUT = {"resnet18": (224, 3), "vgg16": (224, 3), "small-vgg": (28, 1)}


@dataclass
class Layer:
    """One convolution: its input shape (without batch) and its packed weight."""

    name: str
    c: int
    k: int
    h: int
    w: int
    padding: tuple[int, int]
    packed: PackedWinogradWeight

    @property
    def m(self) -> int:
        return self.packed.m

    @property
    def r(self) -> int:
        return self.packed.r

    def tiles(self, batch: int) -> int:
        """T of the Winograd GEMMs at this batch size (what the tuning keys bucket)."""
        ho, wo = _checks.output_size(self.h, self.w, self.r, self.padding)
        th, tw = reference.tile_grid(ho, wo, self.m)
        return batch * th * tw


def build_arch(arch: str) -> nn.Module:
    """A built-in architecture by name (one of :data:`ARCHS`)."""
    if arch == "resnet18":
        return resnet18_max()
    if arch == "vgg16":
        return vgg16()
    if arch == "small-vgg":
        return SmallVGG()
    raise ValueError(f"unknown architecture {arch!r}; choose from {ARCHS}")


def eligible_conv_names(model: nn.Module) -> list[str]:
    """Names of the ``nn.Conv2d`` layers ``convert`` would swap."""
    return [n for n, mod in model.named_modules() if isinstance(mod, nn.Conv2d) and ineligible_reason(mod) is None]


def tunable(mod: nn.Module) -> bool:
    """Whether the GEMM tuner handles this layer as it is: a plain F(m, r) convolution. Decomposed
    layers (stride 2, kernels > 3: ``tritonwino.dwm``) are converted and run, but not tuned here yet:
    their GEMM reads C·pieces virtual channels through an offset-table input transform."""
    if isinstance(mod, SparseWinogradConv2d):
        return mod.decomposition is None
    return (isinstance(mod, nn.Conv2d) and ineligible_reason(mod) is None
            and dwm.plan(mod.kernel_size[0], mod.stride[0]) is None)


def input_shapes(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, tuple]:
    """Input shape of each named module, from one forward pass of ``x`` (no gradients).

    Raises ValueError when ``x`` does not run through the model."""
    shapes: dict[str, tuple] = {}
    mods = dict(model.named_modules())
    hooks = [mods[n].register_forward_hook(lambda mod, i, o, n=n: shapes.__setitem__(n, tuple(i[0].shape)))
             for n in names]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(x)
    except Exception as e:  # noqa: BLE001 - any failure here means the input does not fit the model
        raise ValueError(f"a {'x'.join(map(str, x.shape[1:]))} input does not run through the model "
                         f"({type(e).__name__}: {e}); pass the right input size") from None
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes


def first_in_channels(model: nn.Module) -> int:
    """Input channels of the model's first convolution."""
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d | SparseWinogradConv2d):
            return int(mod.in_channels)
    raise ValueError("the model has no convolution layers")


def _pack(q: torch.Tensor, block: tuple[int, int], r: int = 3) -> PackedWinogradWeight:
    return pack_winograd_weight(q, block, r=r, dtype=torch.float32)


def layers_from_arch(arch: str, size: int, sparsity: float, block: tuple[int, int], m: int,
                     gen: torch.Generator) -> list[Layer]:
    """The eligible layers of a built-in architecture at ``size``×``size`` input, each with a random
    Winograd-domain mask of ``sparsity`` at granularity ``block``."""
    model = build_arch(arch)
    convs = {n: mod for n, mod in model.named_modules() if isinstance(mod, nn.Conv2d) and tunable(mod)}
    shapes = input_shapes(model, list(convs), torch.zeros(1, ARCH_INPUT[arch][1], size, size))
    layers = []
    for name, conv in convs.items():
        _, c, h, w = shapes[name]
        r = conv.kernel_size[0]
        q = random_pruned_q(conv.out_channels, c, m, r, sparsity, block, weight=conv.weight, generator=gen)
        layers.append(Layer(name, c, conv.out_channels, h, w, tuple(conv.padding), _pack(q, block, r)))
    return layers


def load_model(path: str | Path) -> nn.Module:
    """A whole model saved with ``torch.save(model, path)``.

    This unpickles arbitrary objects (``weights_only=False``): only load files you trust, exactly
    as with ``torch.load`` itself."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - report any unpickling failure as bad input
        raise ValueError(f"could not load {path} with torch.load: {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        hint = (" (it looks like a state_dict: save the whole model with torch.save(model, PATH))"
                if isinstance(model, dict) else "")
        raise ValueError(f"{path} holds a {type(model).__name__}, not an nn.Module{hint}")
    return model


def layers_from_model(path: str | Path, size: int, block: tuple[int, int], m: int) -> tuple[list[Layer], str]:
    """Layers of a saved model and a note on where their sparsity came from: its
    ``SparseWinogradConv2d`` layers, or else its eligible ``nn.Conv2d`` layers packed at F(m, r)."""
    model = load_model(path)
    sparse = {n: mod for n, mod in model.named_modules() if isinstance(mod, SparseWinogradConv2d) and tunable(mod)}
    if sparse:
        note = f"{len(sparse)} SparseWinogradConv2d layers (their packed weights)"
        targets: dict[str, nn.Module] = sparse
    else:
        targets = {n: mod for n, mod in model.named_modules() if isinstance(mod, nn.Conv2d) and tunable(mod)}
        if not targets:
            raise ValueError(f"{path} has no SparseWinogradConv2d and no eligible Conv2d layer "
                             "(3x3 stride-1 kernel, dilation 1, groups 1; decomposed layers are not tuned)")
        note = (f"no SparseWinogradConv2d layers: {len(targets)} eligible Conv2d layers packed at "
                f"F({m},3) block {block[0]}x{block[1]}, sparsity = their exact Winograd-domain zeros")
    shapes = input_shapes(model, list(targets), torch.zeros(1, first_in_channels(model), size, size))
    layers = []
    for name, mod in targets.items():
        if name not in shapes:  # a module the forward pass never reached
            continue
        _, c, h, w = shapes[name]
        if isinstance(mod, SparseWinogradConv2d):
            packed = mod.packed.to("cpu")
            layers.append(Layer(name, c, packed.K, h, w, tuple(mod.padding), packed))
        else:
            q = reference.winograd_weight(mod.weight.detach().double(), m)
            layers.append(Layer(name, c, mod.out_channels, h, w, tuple(mod.padding),
                                _pack(q, block, mod.kernel_size[0])))
    return layers, note


def layers_from_shapes(shapes: list[tuple[int, int, int, int]], sparsity: float, block: tuple[int, int], m: int,
                       gen: torch.Generator) -> list[Layer]:
    """3×3, padding-1 layers of the given (C, K, H, W) shapes with random masks."""
    layers = []
    for c, k, h, w in shapes:
        weight = torch.randn(k, c, 3, 3, generator=gen) / math.sqrt(9 * c)
        q = random_pruned_q(k, c, m, 3, sparsity, block, weight=weight, generator=gen)
        layers.append(Layer(f"{c}:{k}:{h}x{w}", c, k, h, w, (1, 1), _pack(q, block)))
    return layers
