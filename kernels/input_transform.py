"""Stage 1: padding, tiling and V = Bᵀ X B in one kernel (no unfold / im2col tensor).

Each program takes BLOCK_T tiles of one input channel, gathers their n×n windows straight from
x (masked: zero padding and partial tiles), and multiplies the flattened windows by
KB = kron(Bᵀ, Bᵀ)ᵀ with one fp32 `tl.dot`. V is written as (P, C, T) — positions outermost, tiles
contiguous — which is what both Winograd-domain GEMMs read.

Decomposed convolutions (tritonwino.dwm: stride 2, large kernels) read x in place: V channel c is
virtual channel ``piece·C_IN + c_in``, whose window element (a, b) of tile row ty is
``x[c_in, STRIDE·(ty·m + a) + oy − PAD_H, ...]`` with the piece's (oy, ox) from a small table
(a plain convolution is one piece at (0, 0), stride 1). Window rows/columns past the expanded
input's extent HX × WX read zero, as in the torch twin. WINOGRAD_RELU applies ReLU to V (Liu et al.).

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
    x_ptr,            # input (N, C_IN, H, W), any strides (NCHW or channels_last)
    kb_ptr,           # fp32 (NN, NN): KB zero-padded, row = window element, col = position
    v_ptr,            # output (P, C, T), contiguous
    off_ptr,          # int32 (C // C_IN, 2): per piece, the (row, column) offset into the padded input
    C, C_IN, H, W, HX, WX, TW, TILES_PER_IMG, T, PAD_H, PAD_W, STRIDE,
    stride_xn, stride_xc, stride_xh, stride_xw,
    N_TILE: tl.constexpr,   # n, input tile side
    M_TILE: tl.constexpr,   # m, output tile side (tile stride)
    NN: tl.constexpr,       # n*n rounded up to a power of two (>= 16)
    BLOCK_T: tl.constexpr,
    WINOGRAD_RELU: tl.constexpr,
):
    pid_t = tl.program_id(0)
    c = tl.program_id(1).to(tl.int64)  # virtual channel piece·C_IN + c_in
    piece = c // C_IN
    c_in = c % C_IN
    oy = tl.load(off_ptr + 2 * piece)
    ox = tl.load(off_ptr + 2 * piece + 1)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t_mask = t < T
    img = t // TILES_PER_IMG
    rem = t % TILES_PER_IMG
    ty = rem // TW
    tx = rem % TW

    e = tl.arange(0, NN)
    a = e // N_TILE
    b = e % N_TILE
    i = ty[:, None] * M_TILE + a[None, :]  # row of the (virtual) expanded input
    j = tx[:, None] * M_TILE + b[None, :]
    h = i * STRIDE + oy - PAD_H
    w = j * STRIDE + ox - PAD_W
    mask = (t_mask[:, None] & (e[None, :] < N_TILE * N_TILE) & (i < HX) & (j < WX)
            & (h >= 0) & (h < H) & (w >= 0) & (w < W))
    offs = (img.to(tl.int64)[:, None] * stride_xn + c_in * stride_xc
            + h.to(tl.int64) * stride_xh + w.to(tl.int64) * stride_xw)
    win = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)

    kb = tl.load(kb_ptr + e[:, None] * NN + e[None, :])
    v = tl.dot(win, kb, input_precision="ieee")  # the transform itself is always full fp32
    if WINOGRAD_RELU:
        v = tl.maximum(v, 0.0)

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
    offsets: torch.Tensor | None = None,
    stride: int = 1,
    extent: tuple[int, int] | None = None,
    winograd_relu: bool = False,
) -> torch.Tensor:
    """Launch stage 1. ``kb`` is the padded fp32 (NN, NN) KB on x's device; returns V (P, C, T).

    A decomposed convolution passes ``offsets`` (int32 (pieces, 2) on x's device), ``stride`` and
    ``extent`` = (HX, WX), the expanded input's size; V then has C = C_in · pieces channels."""
    check_triton_device(x, kb)
    nb, c_in, h, w = x.shape
    if offsets is None:
        offsets = torch.zeros((1, 2), dtype=torch.int32, device=x.device)
    if extent is None:
        extent = (h + 2 * padding[0], w + 2 * padding[1])
    assert offsets.dtype == torch.int32 and offsets.shape[1] == 2 and offsets.is_contiguous()
    c = c_in * offsets.shape[0]
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
        x, kb, v, offsets, c, c_in, h, w, extent[0], extent[1], tw, th * tw, t_total, padding[0], padding[1], stride,
        x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        N_TILE=n, M_TILE=m, NN=nn, BLOCK_T=block_t, WINOGRAD_RELU=winograd_relu, num_warps=num_warps,
    )
    return v


def compile_specs() -> list[CompileSpec]:
    specs = []
    # F(m, 3) tiles, and the F(m, 2) pieces of 3×3 stride-2 convolutions (tritonwino.dwm); the
    # Winograd-domain ReLU on the fp16 variants (it adds one max per element).
    for (m, n) in ((2, 4), (4, 6), (6, 8), (2, 3), (4, 5), (6, 7)):
        nn = next_pow2(n * n)
        for in_dt in (torch.float32, torch.float16, torch.bfloat16):
            out_dt = torch.float32 if in_dt == torch.float32 else in_dt
            sig = {
                "x_ptr": f"*{TL_NAME[in_dt]}", "kb_ptr": "*fp32", "v_ptr": f"*{TL_NAME[out_dt]}", "off_ptr": "*i32",
                **{k: "i32" for k in ("C", "C_IN", "H", "W", "HX", "WX", "TW", "TILES_PER_IMG", "T", "PAD_H",
                                      "PAD_W", "STRIDE", "stride_xn", "stride_xc", "stride_xh", "stride_xw")},
                "N_TILE": "constexpr", "M_TILE": "constexpr", "NN": "constexpr", "BLOCK_T": "constexpr",
                "WINOGRAD_RELU": "constexpr",
            }
            block_t, num_warps = transform_launch(nn, 1 << 20)
            for wrelu in (False, True) if in_dt == torch.float16 else (False,):
                specs.append(CompileSpec(
                    kernel="input_transform", fn=_input_transform_kernel, signature=sig,
                    constexprs={"N_TILE": n, "M_TILE": m, "NN": nn, "BLOCK_T": block_t, "WINOGRAD_RELU": wrelu},
                    num_warps=num_warps, num_stages=1,
                    label=f"F({m},{n - m + 1}) T{block_t} w{num_warps} {TL_NAME[in_dt]}{' wrelu' if wrelu else ''}",
                ))
    return specs
