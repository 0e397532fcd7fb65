"""AdderNet layer ``Y[n,k,i,j] = -Σ_{c,u,v} |X[n,c,i+u-ph,j+v-pw] - W[k,c,u,v]| (+ bias)`` in one kernel.

There is no product to hand to ``tl.dot``: each program owns a BLOCK_P × BLOCK_K tile of
(output pixel, output channel) pairs and, for every kernel offset (u, v) and every
chunk of BLOCK_C input channels, gathers the shifted input pixels (BLOCK_P × BLOCK_C, masked:
zero padding and partial blocks), loads the matching filter taps (BLOCK_C × BLOCK_K), and adds
``Σ_c |x - w|`` of the broadcast (BLOCK_P × BLOCK_C × BLOCK_K) block into an fp32 accumulator.
Padded inputs load as 0 and count as ``|0 - w|``, as in AdderNet; masked channels load 0 on both
sides and add nothing. Input and output take any strides (NCHW or channels_last).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._common import TL_NAME, check_triton_device, interpreting, next_pow2
from .registry import CompileSpec


@triton.jit
def _adder_conv_kernel(
    x_ptr,            # (N, C, H, W), any strides
    w_ptr,            # (K, C, KH, KW), contiguous, same dtype as x
    bias_ptr,         # (K,) or a dummy pointer when HAS_BIAS is False
    y_ptr,            # (N, K, HO, WO), any strides
    C, H, W, K, HO, WO, PIX, PAD_H, PAD_W,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_yn, stride_yk, stride_yh, stride_yw,
    KH: tl.constexpr,
    KW: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_k = tl.program_id(1)
    pix = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = pix < PIX
    img = pix // (HO * WO)
    rem = pix % (HO * WO)
    oh = rem // WO
    ow = rem % WO
    k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = k < K
    cr = tl.arange(0, BLOCK_C)
    w_k = k.to(tl.int64)[None, :] * (C * KH * KW)

    acc = tl.zeros((BLOCK_P, BLOCK_K), dtype=tl.float32)
    # A runtime loop over the kernel taps: unrolling them (tl.static_range) spilled for 5x5 kernels.
    for uv in range(0, KH * KW):
        u = uv // KW
        v = uv % KW
        ih = oh - PAD_H + u
        iw = ow - PAD_W + v
        in_mask = p_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_pix = img.to(tl.int64) * stride_xn + ih.to(tl.int64) * stride_xh + iw.to(tl.int64) * stride_xw
        for c0 in range(0, C, BLOCK_C):
            cc = c0 + cr
            c_mask = cc < C
            xv = tl.load(x_ptr + x_pix[:, None] + cc.to(tl.int64)[None, :] * stride_xc,
                         mask=in_mask[:, None] & c_mask[None, :], other=0.0).to(tl.float32)
            wv = tl.load(w_ptr + w_k + (cc * (KH * KW) + uv)[:, None],
                         mask=c_mask[:, None] & k_mask[None, :], other=0.0).to(tl.float32)
            acc += tl.sum(tl.abs(xv[:, :, None] - wv[None, :, :]), axis=1)

    y = -acc
    if HAS_BIAS:
        y += tl.load(bias_ptr + k, mask=k_mask, other=0.0).to(tl.float32)[None, :]
    offs = (img.to(tl.int64)[:, None] * stride_yn + k.to(tl.int64)[None, :] * stride_yk
            + oh.to(tl.int64)[:, None] * stride_yh + ow.to(tl.int64)[:, None] * stride_yw)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=p_mask[:, None] & k_mask[None, :])


@dataclass(frozen=True)
class AdderConfig:
    """Launch config of both adder kernels: ``block_rows`` output pixels (adder_conv) or tiles
    (winograd_adder) × ``block_k`` filters, reducing ``block_c`` channels at a time."""

    block_rows: int
    block_k: int
    block_c: int
    num_warps: int = 4
    num_stages: int = 2

    @property
    def label(self) -> str:
        return f"R{self.block_rows} K{self.block_k} C{self.block_c} w{self.num_warps} s{self.num_stages}"


# The broadcast block (rows·BLOCK_C·BLOCK_K fp32 values) lives in registers: kept at 8K values per
# 128 threads so nothing spills (compile-check verifies both kernels on sm_80 and sm_90).
GPU_CONFIG = AdderConfig(64, 32, 4, 4, 2)


def interpreter_config(rows: int, k: int, c: int) -> AdderConfig:
    """Large blocks: the interpreter pays per program and per loop iteration, not per element."""
    return AdderConfig(min(256, next_pow2(rows)), min(64, next_pow2(k)), min(16, next_pow2(c, 1)), 4, 1)


def adder_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: tuple[int, int],
    config: AdderConfig | None = None,
) -> torch.Tensor:
    """Launch the AdderNet layer; returns y (N, K, HO, WO) in x's dtype and memory format."""
    check_triton_device(x, weight)
    nb, c, h, w = x.shape
    k, c2, kh, kw = weight.shape
    if c != c2 or weight.dtype != x.dtype or not weight.is_contiguous():
        raise ValueError(f"adder_conv: weight must be contiguous (K, {c}, kh, kw) in {x.dtype}, "
                         f"got {tuple(weight.shape)} {weight.dtype}")
    if x.dtype not in TL_NAME:
        raise TypeError(f"adder_conv supports float32, float16 and bfloat16, got {x.dtype}")
    if bias is not None and (bias.shape != (k,) or not bias.is_contiguous()):
        raise ValueError(f"adder_conv: bias must be a contiguous ({k},) tensor, got {tuple(bias.shape)}")
    ho, wo = h + 2 * padding[0] - kh + 1, w + 2 * padding[1] - kw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"adder_conv: input {h}x{w} with padding {padding} is smaller than the {kh}x{kw} kernel")
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = torch.empty((nb, k, ho, wo), device=x.device, dtype=x.dtype, memory_format=fmt)
    pix = nb * ho * wo
    if pix == 0:
        return y
    cfg = config or (interpreter_config(pix, k, c) if interpreting() else GPU_CONFIG)
    grid = (triton.cdiv(pix, cfg.block_rows), triton.cdiv(k, cfg.block_k))
    _adder_conv_kernel[grid](
        x, weight, bias if bias is not None else weight, y,
        c, h, w, k, ho, wo, pix, padding[0], padding[1],
        x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        y.stride(0), y.stride(1), y.stride(2), y.stride(3),
        KH=kh, KW=kw, HAS_BIAS=bias is not None,
        BLOCK_P=cfg.block_rows, BLOCK_K=cfg.block_k, BLOCK_C=cfg.block_c,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return y


def compile_specs(tiles=()) -> list[CompileSpec]:
    """Every config this module ships (``tiles``, the convolution tiles, do not apply: the adder has
    its own)."""
    specs = []
    cfg = GPU_CONFIG
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        for kh, has_bias in ((3, False), (3, True), (1, False), (5, False)):
            sig = {
                "x_ptr": f"*{TL_NAME[dt]}", "w_ptr": f"*{TL_NAME[dt]}", "bias_ptr": f"*{TL_NAME[dt]}",
                "y_ptr": f"*{TL_NAME[dt]}",
                **{a: "i32" for a in ("C", "H", "W", "K", "HO", "WO", "PIX", "PAD_H", "PAD_W",
                                      "stride_xn", "stride_xc", "stride_xh", "stride_xw",
                                      "stride_yn", "stride_yk", "stride_yh", "stride_yw")},
                **{a: "constexpr" for a in ("KH", "KW", "HAS_BIAS", "BLOCK_P", "BLOCK_K", "BLOCK_C")},
            }
            specs.append(CompileSpec(
                kernel="adder_conv", fn=_adder_conv_kernel, signature=sig,
                constexprs={"KH": kh, "KW": kh, "HAS_BIAS": has_bias,
                            "BLOCK_P": cfg.block_rows, "BLOCK_K": cfg.block_k, "BLOCK_C": cfg.block_c},
                num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                label=f"{kh}x{kh} {cfg.label} {TL_NAME[dt]}{' bias' if has_bias else ''}",
            ))
    return specs
