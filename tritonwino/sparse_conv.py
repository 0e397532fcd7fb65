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

BACKENDS = _checks.BACKENDS


def resolve_backend(backend: str, x: torch.Tensor, *params: torch.Tensor | None) -> str:
    """The path to run. The Triton kernels have no backward, so when autograd needs gradients
    ``"auto"`` takes the differentiable torch path and ``"triton"`` refuses instead of silently
    returning a result without a gradient."""
    _checks.check_backend(backend)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, *params))
    if backend == "auto":
        return "triton" if x.is_cuda and not needs_grad else "torch"
    if backend == "triton" and needs_grad:
        raise RuntimeError("backend='triton' is inference-only (no backward): run under torch.no_grad() / "
                           "inference_mode, or use backend='torch' (or 'auto') to train")
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
    be = resolve_backend(backend, x, weight, bias)
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
    be = resolve_backend(backend, x, bias)
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


# Modules live in tritonwino.modules; re-exported here because this is the public entry point.
from .modules import SparseWinogradConv2d, convert  # noqa: E402
