"""Public API: dense and sparse Winograd convolution (functional forms and modules).

``backend``: ``"auto"`` (Triton kernels for CUDA tensors, the torch path for CPU tensors),
``"triton"`` (force the kernels; on CPU tensors this needs ``TRITON_INTERPRET=1`` set before
import), ``"torch"`` (the pure-torch path of ``tritonwino.reference``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _checks, reference
from .packing import PackedWinogradWeight, pack_winograd_weight
from .transforms import normalize_points, tile_size

__all__ = [
    "BACKENDS",
    "SparseWinogradConv2d",
    "convert",
    "PackedWinogradWeight",
    "pack_winograd_weight",
    "sparse_winograd_conv2d",
    "winograd_conv2d",
]

BACKENDS = ("auto", "triton", "torch")


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if x.is_cuda else "torch"
    return backend


def winograd_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    padding: int | tuple[int, int] = 0,
    m: int = 4,
    backend: str = "auto",
    *,
    points: Sequence[object] | None = None,
    stride: int | tuple[int, int] = 1,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    relu: bool = False,
    allow_tf32: bool = False,
) -> torch.Tensor:
    """Dense Winograd F(m×m, r×r) convolution, r taken from ``weight`` (K, C, r, r).

    Same result as ``F.conv2d(x, weight, bias, padding=padding)`` up to the tile's rounding
    error. Only stride 1, dilation 1, groups 1 and odd square kernels are supported; other values
    raise ``ValueError`` naming the argument. ``relu=True`` fuses a ReLU into the output
    transform. ``allow_tf32`` lets fp32 GEMMs use tf32 tensor cores on a GPU.
    """
    _checks.check_conv_unsupported(stride, dilation, groups)
    k, c, r = _checks.check_weight(weight)
    _checks.check_input(x, c)
    _checks.check_bias(bias, k)
    _checks.check_same_device(x=x, weight=weight, bias=bias)
    pad = _checks.check_padding(padding)
    pts = normalize_points(m, r, points)
    be = resolve_backend(backend, x)
    if be == "torch":
        return reference.winograd_conv2d(x, weight, bias, pad, m, pts, relu)

    from . import _pipeline, autotune
    from .kernels.winograd_gemm import winograd_gemm

    _pipeline.check_triton_dtype(x.dtype)
    n = tile_size(m, r)
    opd = _checks.operand_dtype(x.dtype)
    q = reference.winograd_weight(weight.detach(), m, pts)  # float64, then cast once
    q_pck = q.permute(2, 3, 1, 0).reshape(n * n, c, k).to(opd).contiguous()

    def gemm(v: torch.Tensor) -> torch.Tensor:
        cfg = autotune.dense_config(v, q_pck, m, r, allow_tf32)
        return winograd_gemm(v, q_pck, allow_tf32, cfg)

    return _pipeline.run(x, gemm, k, bias, pad, m, r, pts, relu)


def sparse_winograd_conv2d(
    x: torch.Tensor,
    packed: PackedWinogradWeight,
    bias: torch.Tensor | None = None,
    padding: int | tuple[int, int] = 0,
    backend: str = "auto",
    *,
    relu: bool = False,
    allow_tf32: bool = False,
) -> torch.Tensor:
    """Sparse Winograd convolution: input transform -> sparse multiply -> output transform.

    ``packed`` comes from ``pack_winograd_weight``; its tile, kernel size and interpolation points
    are used, so a weight built with one point set is never run with another.
    """
    if not isinstance(packed, PackedWinogradWeight):
        raise TypeError(f"packed must be a PackedWinogradWeight (see pack_winograd_weight), "
                        f"got {type(packed).__name__}")
    _checks.check_input(x, packed.C)
    _checks.check_bias(bias, packed.K)
    _checks.check_same_device(x=x, packed=packed.values, bias=bias)
    pad = _checks.check_padding(padding)
    be = resolve_backend(backend, x)
    if be == "torch":
        return reference.sparse_winograd_conv2d(x, packed, bias, pad, relu)

    from . import _pipeline, autotune
    from .kernels.sparse_winograd_gemm import sparse_winograd_gemm

    _pipeline.check_triton_dtype(x.dtype)
    vals = packed.values_as(_checks.operand_dtype(x.dtype))

    def gemm(v: torch.Tensor) -> torch.Tensor:
        cfg = autotune.sparse_config(v, packed, vals, allow_tf32)
        return sparse_winograd_gemm(v, vals, packed.indices, packed.offsets, packed.K, packed.group_k, allow_tf32,
                                    cfg)

    return _pipeline.run(x, gemm, packed.K, bias, pad, packed.m, packed.r, packed.points_fractions(), relu)


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
