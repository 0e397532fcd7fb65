"""Stage 1: padding, tiling and V = Bᵀ X B in one kernel (no unfold / im2col tensor).

Each program takes BLOCK_T tiles of one input channel, gathers their n×n windows straight from
x (masked: zero padding and partial tiles), and multiplies the flattened windows by
KB = kron(Bᵀ, Bᵀ)ᵀ with one fp32 `tl.dot`. V is written as (P, C, T) — positions outermost, tiles
contiguous — which is what both Winograd-domain GEMMs read.

Notation and layouts (F(m, r), n, P, T, V, Q, M, group_k): docs/notation.md.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import TL_NAME, check_triton_device, next_pow2, transform_launch
from .registry import CompileSpec


@triton.jit
def _input_transform_kernel(
    x_ptr,            # input (N, C, H, W), any strides (NCHW or channels_last)
    kb_ptr,           # fp32 (NN, NN): KB zero-padded, row = window element, col = position
    v_ptr,            # output (P, C, T), contiguous
    C, H, W, TW, TILES_PER_IMG, T, PAD_H, PAD_W,
    stride_xn, stride_xc, stride_xh, stride_xw,
    N_TILE: tl.constexpr,   # n, input tile side
    M_TILE: tl.constexpr,   # m, output tile side (tile stride)
    NN: tl.constexpr,       # n*n rounded up to a power of two (>= 16)
    BLOCK_T: tl.constexpr,
):
    pid_t = tl.program_id(0)
    c = tl.program_id(1).to(tl.int64)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t_mask = t < T
    img = t // TILES_PER_IMG
    rem = t % TILES_PER_IMG
    ty = rem // TW
    tx = rem % TW

    e = tl.arange(0, NN)
    a = e // N_TILE
    b = e % N_TILE
    h = ty[:, None] * M_TILE - PAD_H + a[None, :]
    w = tx[:, None] * M_TILE - PAD_W + b[None, :]
    mask = t_mask[:, None] & (e[None, :] < N_TILE * N_TILE) & (h >= 0) & (h < H) & (w >= 0) & (w < W)
    offs = (img.to(tl.int64)[:, None] * stride_xn + c * stride_xc
            + h.to(tl.int64) * stride_xh + w.to(tl.int64) * stride_xw)
    win = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)

    kb = tl.load(kb_ptr + e[:, None] * NN + e[None, :])
    v = tl.dot(win, kb, input_precision="ieee")  # the transform itself is always full fp32

    p = e
    v_offs = p.to(tl.int64)[None, :] * C * T + c * T + t[:, None]
    v_mask = t_mask[:, None] & (p[None, :] < N_TILE * N_TILE)
    tl.store(v_ptr + v_offs, v.to(v_ptr.dtype.element_ty), mask=v_mask)


def input_transform(
    x: torch.Tensor,
    kb: torch.Tensor,
    n: int,
    m: int,
    padding: tuple[int, int],
    tiles: tuple[int, int],
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Launch stage 1. ``kb`` is the padded fp32 (NN, NN) KB on x's device; returns V (P, C, T)."""
    check_triton_device(x, kb)
    nb, c, h, w = x.shape
    th, tw = tiles
    t_total = nb * th * tw
    nn = kb.shape[0]
    assert nn == next_pow2(n * n) and kb.dtype == torch.float32 and kb.is_contiguous()
    v = torch.empty((n * n, c, t_total), device=x.device, dtype=out_dtype)
    if t_total == 0 or c == 0:
        return v
    block_t, num_warps = transform_launch(nn, t_total)
    grid = (triton.cdiv(t_total, block_t), c)
    _input_transform_kernel[grid](
        x, kb, v, c, h, w, tw, th * tw, t_total, padding[0], padding[1],
        x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        N_TILE=n, M_TILE=m, NN=nn, BLOCK_T=block_t, num_warps=num_warps,
    )
    return v


def compile_specs() -> list[CompileSpec]:
    specs = []
    for (m, n) in ((2, 4), (4, 6), (6, 8)):
        nn = next_pow2(n * n)
        for in_dt in (torch.float32, torch.float16, torch.bfloat16):
            out_dt = torch.float32 if in_dt == torch.float32 else in_dt
            sig = {
                "x_ptr": f"*{TL_NAME[in_dt]}", "kb_ptr": "*fp32", "v_ptr": f"*{TL_NAME[out_dt]}",
                **{k: "i32" for k in ("C", "H", "W", "TW", "TILES_PER_IMG", "T", "PAD_H", "PAD_W",
                                      "stride_xn", "stride_xc", "stride_xh", "stride_xw")},
                "N_TILE": "constexpr", "M_TILE": "constexpr", "NN": "constexpr", "BLOCK_T": "constexpr",
            }
            block_t, num_warps = transform_launch(nn, 1 << 20)
            specs.append(CompileSpec(
                kernel="input_transform", fn=_input_transform_kernel, signature=sig,
                constexprs={"N_TILE": n, "M_TILE": m, "NN": nn, "BLOCK_T": block_t},
                num_warps=num_warps, num_stages=1,
                label=f"F({m},{n - m + 1}) T{block_t} w{num_warps} {TL_NAME[in_dt]}",
            ))
    return specs
