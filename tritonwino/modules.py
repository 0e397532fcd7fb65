"""``nn.Module`` integration: ``SparseWinogradConv2d`` and ``convert`` (re-exported by
``tritonwino.sparse_conv``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import reference
from .packing import PackedWinogradWeight, pack_winograd_weight
from .sparse_conv import BACKENDS, sparse_winograd_conv2d
from .transforms import normalize_points

__all__ = ["SparseWinogradConv2d", "convert", "ineligible_reason"]


class SparseWinogradConv2d(torch.nn.Module):
    """A 3×3 (or r×r) stride-1 convolution run as a sparse Winograd convolution.

    Holds the packed Winograd-domain weight (values + indices, not a dense copy) and the bias.
    Inference module: the packed weight is a buffer, not a trainable parameter.
    """

    def __init__(self, packed: PackedWinogradWeight, bias: torch.Tensor | None, padding: tuple[int, int],
                 backend: str = "auto"):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        packed.validate()
        self.packed = packed
        self.padding = padding
        self.backend = backend
        self.in_channels, self.out_channels = packed.C, packed.K
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_conv2d(cls, conv: torch.nn.Conv2d, m: int = 4, block: Sequence[int] = (16, 1),
                    backend: str = "auto", points: Sequence[object] | None = None,
                    q: torch.Tensor | None = None) -> SparseWinogradConv2d:
        """Build from a (pruned) ``nn.Conv2d``: Q = G W Gᵀ in float64, its exact zeros are the
        sparsity. Pass ``q`` to use a Winograd-domain weight directly (e.g. from step-2 pruning)."""
        reason = ineligible_reason(conv)
        if reason:
            raise ValueError(f"cannot convert {conv}: {reason}")
        r = conv.kernel_size[0]
        pts = normalize_points(m, r, points)
        if q is None:
            q = reference.winograd_weight(conv.weight.detach(), m, pts)
        packed = pack_winograd_weight(q, block, r=r, points=pts, dtype=torch.float32)
        return cls(packed, conv.bias, tuple(conv.padding), backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sparse_winograd_conv2d(x, self.packed, self.bias, self.padding, self.backend)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        probe = fn(torch.zeros((), device=self.packed.device))
        if probe.device != self.packed.device:
            self.packed = self.packed.to(probe.device)
        return self

    def extra_repr(self) -> str:
        p = self.packed
        return (f"{p.C}, {p.K}, kernel_size={p.r}, padding={self.padding}, tile=F({p.m},{p.r}), "
                f"block={p.block}, winograd_sparsity={1 - p.density:.1%} (channel slots), "
                f"backend={self.backend}")


def ineligible_reason(conv: torch.nn.Module) -> str | None:
    """Why a module cannot become a SparseWinogradConv2d (None if it can)."""
    if not isinstance(conv, torch.nn.Conv2d):
        return "not an nn.Conv2d"
    kh, kw = conv.kernel_size
    if kh != kw or kh % 2 == 0:
        return f"kernel {kh}x{kw} (needs an odd square kernel)"
    if kh == 1:
        return "1x1 kernel (Winograd gives no saving)"
    if tuple(conv.stride) != (1, 1):
        return f"stride {tuple(conv.stride)}"
    if tuple(conv.dilation) != (1, 1):
        return f"dilation {tuple(conv.dilation)}"
    if conv.groups != 1:
        return f"groups={conv.groups}"
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return f"padding {conv.padding!r} / mode {conv.padding_mode}"
    return None


def convert(model: torch.nn.Module, m: int = 4, block: Sequence[int] = (16, 1), filter_fn=None,
            backend: str = "auto", points: Sequence[object] | None = None) -> torch.nn.Module:
    """Swap every eligible ``nn.Conv2d`` of ``model`` (in place) for a ``SparseWinogradConv2d``.

    ``filter_fn(module, fqn) -> bool`` restricts which layers are swapped. Ineligible layers
    (other strides, 1×1, groups, dilation) stay as they are. Returns the model; the swaps and
    skips are recorded in ``model.tritonwino_conversion`` as (name, "swapped" | reason) pairs.
    """
    log: list[tuple[str, str]] = []
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, torch.nn.Conv2d):
            continue
        reason = ineligible_reason(mod)
        if reason is None and filter_fn is not None and not filter_fn(mod, name):
            reason = "excluded by filter_fn"
        if reason:
            log.append((name, reason))
            continue
        new = SparseWinogradConv2d.from_conv2d(mod, m, block, backend, points).to(mod.weight.device)
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, new)
        log.append((name, "swapped"))
    model.tritonwino_conversion = log
    return model
