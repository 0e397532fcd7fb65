"""The Triton execution path, the twin of ``reference``: input transform -> Winograd-domain GEMM
(dense or sparse) -> output transform, each stage one kernel of ``tritonwino.kernels``.

Layouts (docs/notation.md): x (N, C, H, W) any strides; V (P, C, T); Q position-major
``q_pck`` (P, C, K) or packed; M (P, K, T) fp32; y (N, K, HO, WO) in x's layout.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from fractions import Fraction

import torch

from . import _checks
from .kernels._common import next_pow2
from .kernels.input_transform import input_transform
from .kernels.output_transform import output_transform
from .kernels.sparse_winograd_gemm import sparse_winograd_gemm
from .kernels.winograd_gemm import winograd_gemm
from .packing import PackedWinogradWeight
from .reference import tile_grid
from .transforms import tile_size, winograd_kron
from .tuning import select

__all__ = [
    "INDEX_LIMIT",
    "TRITON_DTYPES",
    "check_index_range",
    "check_triton_dtype",
    "kernel_bias",
    "kron_padded",
    "run",
    "sparse_winograd_conv2d",
    "winograd_conv2d",
]

TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Largest element count a Triton-path tensor may have. The kernels compute most offsets in
# int64, but that has never been run at this size, so the Triton path refuses rather than risk a
# silently wrong result; the torch path (int64 indexing throughout) has no such limit.
# A module-level constant so tests can lower it instead of allocating 8 GiB.
INDEX_LIMIT = 2**31


@functools.lru_cache(maxsize=64)
def kron_padded(m: int, r: int, pts: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """KB (NN, NN) and KA (PP, MM) in fp32, zero-padded to the kernels' power-of-two blocks."""
    kb, ka = winograd_kron(m, r, pts)
    n = tile_size(m, r)
    nn, mm = next_pow2(n * n), next_pow2(m * m)
    kbp = torch.zeros(nn, nn, dtype=torch.float64)
    kbp[: n * n, : n * n] = kb
    kap = torch.zeros(nn, mm, dtype=torch.float64)
    kap[: n * n, : m * m] = ka
    return kbp.float().to(device), kap.float().to(device)


def check_triton_dtype(dtype: torch.dtype) -> None:
    if dtype not in TRITON_DTYPES:
        raise TypeError(f"backend='triton' supports float32, float16 and bfloat16 inputs, got {dtype}; "
                        "use backend='torch' for float64")


def check_index_range(x: torch.Tensor, k: int, c: int, m: int, r: int, padding: tuple[int, int]) -> None:
    """Refuse (ValueError) a call where any tensor this path creates or reads would have
    ``INDEX_LIMIT`` or more elements. Pure shape arithmetic: no host sync, works on meta tensors."""
    nb, _, h, w = x.shape
    ho, wo = _checks.output_size(h, w, r, padding)
    n = tile_size(m, r)
    t = nb * (-(-ho // m)) * (-(-wo // m))
    sizes = {"input": x.numel(), "output": nb * k * ho * wo, "V (P x C x tiles)": n * n * c * t,
             "M (P x K x tiles)": n * n * k * t}
    for what, size in sizes.items():
        if size >= INDEX_LIMIT:
            raise ValueError(
                f"the Triton path does not support tensors of {INDEX_LIMIT} or more elements: the {what} "
                f"tensor for input shape {tuple(x.shape)} would have {size}. Split the batch, or use "
                "backend='torch' (int64 indexing)."
            )


def run(
    x: torch.Tensor,
    gemm: Callable[[torch.Tensor], torch.Tensor],
    k: int,
    bias: torch.Tensor | None,
    padding: tuple[int, int],
    m: int,
    r: int,
    pts: tuple,
    relu: bool = False,
) -> torch.Tensor:
    """Run the three stages; ``gemm(V (P, C, T)) -> M (P, K, T) fp32`` is the middle stage."""
    check_triton_dtype(x.dtype)
    _checks.check_tile_dtype(m, r, x.dtype)
    n = tile_size(m, r)
    nb, _, h, w = x.shape
    ho, wo = _checks.output_size(h, w, r, padding)
    tiles = tile_grid(ho, wo, m)
    kb, ka = kron_padded(m, r, pts, x.device)
    v = input_transform(x, kb, n, m, padding, tiles, _checks.operand_dtype(x.dtype))
    mm = gemm(v)
    y = _checks.empty_output(x, k, ho, wo)
    return output_transform(mm, ka, kernel_bias(bias), y, m, tiles, relu)


def kernel_bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    """The bias as the output kernel reads it: (K,) dense (it indexes ``bias_ptr + k``, so a strided
    view or an ``expand``-ed scalar would read the wrong elements or past its storage), in a dtype
    the kernels take (float64 is rounded to float32, as the torch path adds it)."""
    if bias is None:
        return None
    if bias.dtype not in TRITON_DTYPES:
        bias = bias.to(torch.float32)
    return bias.contiguous()


def winograd_conv2d(x: torch.Tensor, q_pck: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, int],
                    m: int, r: int, pts: tuple[Fraction, ...], relu: bool = False,
                    allow_tf32: bool = False) -> torch.Tensor:
    """Dense Winograd convolution with a position-major Winograd-domain weight ``q_pck`` (P, C, K)."""
    p, c, k = q_pck.shape
    check_triton_dtype(x.dtype)
    if p != tile_size(m, r) ** 2 or c != x.shape[1]:  # the GEMM launcher would only assert
        raise ValueError(f"q_pck {tuple(q_pck.shape)} does not fit F({m},{r}) (P = {tile_size(m, r) ** 2}) and an "
                         f"input of {x.shape[1]} channels")
    _checks.check_tile_dtype(m, r, x.dtype, q_pck.dtype)
    check_index_range(x, k, c, m, r, padding)
    q = q_pck.to(_checks.operand_dtype(x.dtype)).contiguous()

    def gemm(v: torch.Tensor) -> torch.Tensor:
        return winograd_gemm(v, q, allow_tf32, select.dense_config(v, q, m, r, allow_tf32))

    return run(x, gemm, k, bias, padding, m, r, pts, relu)


def sparse_winograd_conv2d(x: torch.Tensor, packed: PackedWinogradWeight, bias: torch.Tensor | None,
                           padding: tuple[int, int], relu: bool = False, allow_tf32: bool = False) -> torch.Tensor:
    """Sparse Winograd convolution with a validated ``PackedWinogradWeight`` (its contents are
    checked by ``packed.validate()``; here only what the launch itself needs, without a host sync)."""
    check_triton_dtype(x.dtype)
    packed.check_fields()
    _checks.check_tile_dtype(packed.m, packed.r, x.dtype)
    check_index_range(x, packed.K, packed.C, packed.m, packed.r, padding)
    if not (packed.indices.is_contiguous() and packed.offsets.is_contiguous()):
        # The kernel (and the autotuner's timed launches) read indices/offsets by flat offset: dense
        # arrays only. A view loaded from a file or built by hand may have other strides.
        packed = dataclasses.replace(packed, indices=packed.indices.contiguous(),
                                     offsets=packed.offsets.contiguous(), _cast_cache=packed._cast_cache)
    vals = packed.values_as(_checks.operand_dtype(x.dtype))  # contiguous

    def gemm(v: torch.Tensor) -> torch.Tensor:
        cfg = select.sparse_config(v, packed, vals, allow_tf32)
        return sparse_winograd_gemm(v, vals, packed.indices, packed.offsets, packed.K, packed.group_k, allow_tf32,
                                    cfg)

    return run(x, gemm, packed.K, bias, padding, packed.m, packed.r, packed.points_fractions(), relu)
