"""The Winograd AdderNet's last stage: Y = Aᵀ M A per tile, plus bias and an optional ReLU,
written NCHW or channels_last (any output strides).

The convolution path fuses its output transform into the multiply (``fused_multiply``); the adder's
Winograd-domain stage is a sum of |V − U| rather than a dot product, so it keeps M (P, K, T) in
memory and this separate kron-matrix kernel transforms it.

Each program takes BLOCK_T tiles of one output channel, gathers their P Winograd-domain values
from M (P, K, T) and multiplies by KA = kron(Aᵀ, Aᵀ)ᵀ with one fp32 `tl.dot`; masks drop the
parts of partial tiles that fall outside the output.

Notation and layouts (F(m, r), n, P, T, V, Q, M, group_k): docs/notation.md.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import TL_NAME, check_triton_device, interpreting, next_pow2
from .registry import CompileSpec


def transform_launch(nn: int, t_total: int) -> tuple[int, int]:
    """(BLOCK_T, num_warps): with 64-wide tiles (n*n or m*m padded to 64) 32 tiles per program fit
    in registers, smaller ones take 64 (compile-check verifies both on sm_80 and sm_90)."""
    if interpreting():
        return min(1024, next_pow2(t_total)), 4
    return (32, 4) if nn >= 64 else (64, 4)


@triton.jit
def _output_transform_kernel(
    m_ptr,            # fp32 (P, K, T), contiguous
    ka_ptr,           # fp32 (PP, MM): KA zero-padded, row = position, col = output element
    bias_ptr,         # (K,) or a dummy pointer when HAS_BIAS is False
    y_ptr,            # output (N, K, HO, WO), any strides
    K, HO, WO, TW, TILES_PER_IMG, T,
    stride_yn, stride_yk, stride_yh, stride_yw,
    P: tl.constexpr,        # n*n positions
    M_TILE: tl.constexpr,
    PP: tl.constexpr,       # P rounded up to a power of two (>= 16)
    MM: tl.constexpr,       # m*m rounded up to a power of two (>= 16)
    HAS_BIAS: tl.constexpr,
    RELU: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    pid_t = tl.program_id(0)
    k = tl.program_id(1).to(tl.int64)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t_mask = t < T

    p = tl.arange(0, PP)
    mvals = tl.load(m_ptr + p.to(tl.int64)[None, :] * K * T + k * T + t[:, None],
                    mask=t_mask[:, None] & (p[None, :] < P), other=0.0)
    o = tl.arange(0, MM)
    ka = tl.load(ka_ptr + p[:, None] * MM + o[None, :])
    y = tl.dot(mvals, ka, input_precision="ieee")  # (BLOCK_T, MM), full fp32
    if HAS_BIAS:
        y += tl.load(bias_ptr + k).to(tl.float32)
    if RELU:
        y = tl.maximum(y, 0.0)

    img = t // TILES_PER_IMG
    rem = t % TILES_PER_IMG
    ty = rem // TW
    tx = rem % TW
    oh = ty[:, None] * M_TILE + o[None, :] // M_TILE
    ow = tx[:, None] * M_TILE + o[None, :] % M_TILE
    mask = t_mask[:, None] & (o[None, :] < M_TILE * M_TILE) & (oh < HO) & (ow < WO)
    offs = (img.to(tl.int64)[:, None] * stride_yn + k * stride_yk
            + oh.to(tl.int64) * stride_yh + ow.to(tl.int64) * stride_yw)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def output_transform(
    mm: torch.Tensor,
    ka: torch.Tensor,
    bias: torch.Tensor | None,
    y: torch.Tensor,
    m: int,
    tiles: tuple[int, int],
    relu: bool = False,
) -> torch.Tensor:
    """Launch stage 3 into the preallocated ``y`` (N, K, HO, WO); ``ka`` is padded fp32 (PP, MM)."""
    check_triton_device(mm, ka, y)
    p, k, t_total = mm.shape
    nb, k2, ho, wo = y.shape
    th, tw = tiles
    assert k == k2 and t_total == nb * th * tw and mm.dtype == torch.float32 and mm.is_contiguous()
    pp, mmx = ka.shape
    assert pp == next_pow2(p) and mmx == next_pow2(m * m)
    if t_total == 0 or k == 0:
        return y
    block_t, num_warps = transform_launch(max(pp, mmx), t_total)
    grid = (triton.cdiv(t_total, block_t), k)
    _output_transform_kernel[grid](
        mm, ka, bias if bias is not None else mm, y,
        k, ho, wo, tw, th * tw, t_total,
        y.stride(0), y.stride(1), y.stride(2), y.stride(3),
        P=p, M_TILE=m, PP=pp, MM=mmx, HAS_BIAS=bias is not None, RELU=relu,
        BLOCK_T=block_t, num_warps=num_warps,
    )
    return y


def compile_specs(tiles=()) -> list[CompileSpec]:
    """Every config this module ships (``tiles``, the convolution tiles, do not apply: the adder has
    its own)."""
    specs = []
    # the adder's tiles: F(2,3) (balanced or standard matrices) and F(4,3) (standard)
    for (m, n) in ((2, 4), (4, 6)):
        for out_dt in (torch.float32, torch.float16, torch.bfloat16):
            for has_bias, relu in ((True, False), (False, True)):
                sig = {
                    "m_ptr": "*fp32", "ka_ptr": "*fp32", "bias_ptr": f"*{TL_NAME[out_dt]}",
                    "y_ptr": f"*{TL_NAME[out_dt]}",
                    **{a: "i32" for a in ("K", "HO", "WO", "TW", "TILES_PER_IMG", "T",
                                          "stride_yn", "stride_yk", "stride_yh", "stride_yw")},
                    **{a: "constexpr" for a in ("P", "M_TILE", "PP", "MM", "HAS_BIAS", "RELU", "BLOCK_T")},
                }
                pp, mmx = next_pow2(n * n), next_pow2(m * m)
                block_t, num_warps = transform_launch(max(pp, mmx), 1 << 20)
                specs.append(CompileSpec(
                    kernel="adder_output_transform", fn=_output_transform_kernel, signature=sig,
                    constexprs={"P": n * n, "M_TILE": m, "PP": pp, "MM": mmx,
                                "HAS_BIAS": has_bias, "RELU": relu, "BLOCK_T": block_t},
                    num_warps=num_warps, num_stages=1,
                    label=f"F({m},{n - m + 1}) T{block_t} w{num_warps} {TL_NAME[out_dt]}"
                          f"{' bias' if has_bias else ''}"
                          f"{' relu' if relu else ''}",
                ))
    return specs
