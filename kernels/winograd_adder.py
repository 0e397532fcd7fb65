"""Stage 2 of the Winograd AdderNet layer: ``M_p[k, t] = -Σ_c |U_p[c, k] - V_p[c, t]|`` per position p.

The ℓ1 "multiply" has no ``tl.dot``: grid = (T blocks, K blocks, P); each program loads BLOCK_C
channels of V_p (BLOCK_T × BLOCK_C, tiles contiguous) and U_p (BLOCK_C × BLOCK_K, output
channels contiguous) and adds ``Σ_c |v - u|`` of their broadcast block into an fp32
accumulator. V is (P, C, T) as the input transform writes it, U is (P, C, K), M is (P, K, T)
fp32 as the output transform reads it, so stages 1 and 3 are the convolution's kernels. Masked
channels load 0 on both sides and add nothing.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import TL_NAME, check_triton_device, interpreting
from .adder_conv import GPU_CONFIG, AdderConfig, interpreter_config
from .registry import CompileSpec


@triton.jit
def _winograd_adder_kernel(
    v_ptr,            # (P, C, T)
    u_ptr,            # (P, C, K), same dtype as V
    m_ptr,            # fp32 (P, K, T)
    C, K, T,
    BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_k = tl.program_id(1)
    p = tl.program_id(2).to(tl.int64)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    t_mask = t < T
    k_mask = k < K
    v_base = v_ptr + p * C * T
    u_base = u_ptr + p * C * K
    cr = tl.arange(0, BLOCK_C)

    acc = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cc = c0 + cr
        c_mask = cc < C
        a = tl.load(v_base + cc.to(tl.int64)[None, :] * T + t[:, None],
                    mask=t_mask[:, None] & c_mask[None, :], other=0.0).to(tl.float32)
        b = tl.load(u_base + cc.to(tl.int64)[:, None] * K + k[None, :],
                    mask=c_mask[:, None] & k_mask[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(tl.abs(a[:, :, None] - b[None, :, :]), axis=1)

    out = m_ptr + p * K * T + k.to(tl.int64)[None, :] * T + t[:, None]
    tl.store(out, -acc, mask=t_mask[:, None] & k_mask[None, :])


def winograd_adder_domain(
    v: torch.Tensor, u: torch.Tensor, config: AdderConfig | None = None
) -> torch.Tensor:
    """M (P, K, T) fp32 = ``-Σ_c |U_p[c, k] - V_p[c, t]|`` for V (P, C, T) and U (P, C, K) of one dtype."""
    check_triton_device(v, u)
    if v.dim() != 3 or u.dim() != 3 or v.shape[:2] != u.shape[:2]:
        raise ValueError(f"winograd_adder_domain: need V (P, C, T) and U (P, C, K) with the same P and C, "
                         f"got {tuple(v.shape)} and {tuple(u.shape)}")
    if v.dtype != u.dtype or v.dtype not in TL_NAME or not (v.is_contiguous() and u.is_contiguous()):
        raise ValueError(f"winograd_adder_domain: V and U must be contiguous and of one dtype among "
                         f"{list(TL_NAME)}, got {v.dtype} and {u.dtype}")
    p, c, t_total = v.shape
    k = u.shape[2]
    mm = torch.empty((p, k, t_total), device=v.device, dtype=torch.float32)
    if mm.numel() == 0:
        return mm
    if c == 0:
        return mm.zero_()
    cfg = config or (interpreter_config(t_total, k, c) if interpreting() else GPU_CONFIG)
    grid = (triton.cdiv(t_total, cfg.block_rows), triton.cdiv(k, cfg.block_k), p)
    _winograd_adder_kernel[grid](
        v, u, mm, c, k, t_total,
        BLOCK_T=cfg.block_rows, BLOCK_K=cfg.block_k, BLOCK_C=cfg.block_c,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return mm


def compile_specs(tiles=()) -> list[CompileSpec]:
    """Every config this module ships (``tiles``, the convolution tiles, do not apply: the adder has
    its own)."""
    cfg = GPU_CONFIG
    specs = []
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        sig = {"v_ptr": f"*{TL_NAME[dt]}", "u_ptr": f"*{TL_NAME[dt]}", "m_ptr": "*fp32",
               "C": "i32", "K": "i32", "T": "i32",
               **{a: "constexpr" for a in ("BLOCK_T", "BLOCK_K", "BLOCK_C")}}
        specs.append(CompileSpec(
            kernel="winograd_adder", fn=_winograd_adder_kernel, signature=sig,
            constexprs={"BLOCK_T": cfg.block_rows, "BLOCK_K": cfg.block_k, "BLOCK_C": cfg.block_c},
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            label=f"{cfg.label} {TL_NAME[dt]}",
        ))
    return specs
