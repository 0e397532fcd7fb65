"""The Triton execution path: input transform -> Winograd-domain GEMM -> output transform.

The GEMM is a parameter so the dense and the sparse convolution share the two transform stages.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from . import _checks
from .kernels._common import next_pow2
from .kernels.input_transform import input_transform
from .kernels.output_transform import output_transform
from .reference import tile_grid
from .transforms import tile_size, winograd_kron

TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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
    n = tile_size(m, r)
    nb, _, h, w = x.shape
    ho, wo = _checks.output_size(h, w, r, padding)
    tiles = tile_grid(ho, wo, m)
    kb, ka = kron_padded(m, r, pts, x.device)
    v = input_transform(x, kb, n, m, padding, tiles, _checks.operand_dtype(x.dtype))
    mm = gemm(v)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = torch.empty((nb, k, ho, wo), device=x.device, dtype=x.dtype, memory_format=fmt)
    return output_transform(mm, ka, bias, y, m, tiles, relu)
