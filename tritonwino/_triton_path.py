"""The Triton execution path, the twin of ``reference``: input transform -> Winograd-domain GEMM
(dense or sparse) -> output transform, each stage one kernel of ``tritonwino.kernels``.

Layouts (docs/notation.md): x (N, C, H, W) any strides; V (P, C, T); Q position-major
``q_pck`` (P, C, K) or packed; M (P, K, T) fp32; y (N, K, HO, WO) in x's layout.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from fractions import Fraction

import torch

from . import _checks, dwm
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
def offsets_tensor(decomposition: dwm.Decomposition | None, device: torch.device) -> torch.Tensor:
    """int32 (pieces, 2): the input transform's per-piece offset table."""
    return torch.tensor(dwm.offsets_table(decomposition), dtype=torch.int32, device=device)


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


def check_index_range(x: torch.Tensor, k: int, c: int, m: int, r: int, padding: tuple[int, int],
                      decomposition: dwm.Decomposition | None = None) -> None:
    """Refuse (ValueError) a call where any tensor this path creates or reads would have
    ``INDEX_LIMIT`` or more elements (``c``: the GEMM's channels, virtual ones when decomposed).
    Pure shape arithmetic: no host sync, works on meta tensors."""
    nb, _, h, w = x.shape
    ho, wo = _checks.conv_output_size(h, w, r, padding, decomposition)
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
    winograd_relu: bool = False,
    decomposition: dwm.Decomposition | None = None,
) -> torch.Tensor:
    """Run the three stages; ``gemm(V (P, C, T)) -> M (P, K, T) fp32`` is the middle stage. A
    decomposed convolution's pieces are virtual input channels of the one input transform."""
    check_triton_dtype(x.dtype)
    n = tile_size(m, r)
    nb, _, h, w = x.shape
    ho, wo = _checks.conv_output_size(h, w, r, padding, decomposition)
    tiles = tile_grid(ho, wo, m)
    kb, ka = kron_padded(m, r, pts, x.device)
    if decomposition is None:
        v = input_transform(x, kb, n, m, padding, tiles, _checks.operand_dtype(x.dtype),
                            winograd_relu=winograd_relu)
    else:
        v = input_transform(x, kb, n, m, padding, tiles, _checks.operand_dtype(x.dtype),
                            offsets_tensor(decomposition, x.device), decomposition.stride,
                            (ho + r - 1, wo + r - 1), winograd_relu)
    mm = gemm(v)
    y = _checks.empty_output(x, k, ho, wo)
    return output_transform(mm, ka, bias, y, m, tiles, relu)


def winograd_conv2d(x: torch.Tensor, q_pck: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, int],
                    m: int, r: int, pts: tuple[Fraction, ...], relu: bool = False,
                    allow_tf32: bool = False, winograd_relu: bool = False,
                    decomposition: dwm.Decomposition | None = None) -> torch.Tensor:
    """Dense Winograd convolution with a position-major Winograd-domain weight ``q_pck`` (P, C, K)
    (C = input channels · pieces for a decomposed convolution)."""
    p, c, k = q_pck.shape
    check_triton_dtype(x.dtype)
    check_index_range(x, k, c, m, r, padding, decomposition)
    q = q_pck.to(_checks.operand_dtype(x.dtype)).contiguous()

    def gemm(v: torch.Tensor) -> torch.Tensor:
        return winograd_gemm(v, q, allow_tf32, select.dense_config(v, q, m, r, allow_tf32))

    return run(x, gemm, k, bias, padding, m, r, pts, relu, winograd_relu, decomposition)


def sparse_winograd_conv2d(x: torch.Tensor, packed: PackedWinogradWeight, bias: torch.Tensor | None,
                           padding: tuple[int, int], relu: bool = False, allow_tf32: bool = False,
                           winograd_relu: bool = False) -> torch.Tensor:
    """Sparse Winograd convolution with a validated ``PackedWinogradWeight`` (decomposed if it says so)."""
    check_triton_dtype(x.dtype)
    check_index_range(x, packed.K, packed.C, packed.m, packed.r, padding, packed.dwm)
    vals = packed.values_as(_checks.operand_dtype(x.dtype))

    def gemm(v: torch.Tensor) -> torch.Tensor:
        cfg = select.sparse_config(v, packed, vals, allow_tf32)
        return sparse_winograd_gemm(v, vals, packed.indices, packed.offsets, packed.K, packed.group_k, allow_tf32, cfg)

    return run(x, gemm, packed.K, bias, padding, packed.m, packed.r, packed.points_fractions(), relu, winograd_relu,
               packed.dwm)
