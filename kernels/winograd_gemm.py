"""Stage 2 (dense): the P independent Winograd-domain GEMMs ``M_p = V_pᵀ Q_p``.

Grid = (T blocks, K blocks, P). V is (P, C, T) with tiles contiguous, Q is (P, C, K) with output
channels contiguous, M is (P, K, T) fp32. Operands are fp32, fp16 or bf16; accumulation is fp32;
fp32 operands use full IEEE products unless the caller allows tf32.

Notation and layouts (F(m, r), n, P, T, V, Q, M, group_k): docs/notation.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._common import TL_NAME, check_triton_device, dot_precision, interpreting, next_pow2, upcast_dot
from .registry import CompileSpec


@triton.jit
def _winograd_gemm_kernel(
    v_ptr,            # (P, C, T)
    q_ptr,            # (P, C, K)
    m_ptr,            # fp32 (P, K, T)
    C, K, T,
    BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr,   # "ieee" or "tf32" (fp32 operands only)
    UPCAST: tl.constexpr,      # interpreter bf16 workaround
):
    pid_t = tl.program_id(0)
    pid_k = tl.program_id(1)
    p = tl.program_id(2).to(tl.int64)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    t_mask = t < T
    k_mask = k < K
    v_base = v_ptr + p * C * T
    q_base = q_ptr + p * C * K

    acc = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cc = c0 + tl.arange(0, BLOCK_C)
        c_mask = cc < C
        a = tl.load(v_base + cc.to(tl.int64)[None, :] * T + t[:, None],
                    mask=t_mask[:, None] & c_mask[None, :], other=0.0)
        b = tl.load(q_base + cc.to(tl.int64)[:, None] * K + k[None, :],
                    mask=c_mask[:, None] & k_mask[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)

    out = m_ptr + p * K * T + k.to(tl.int64)[None, :] * T + t[:, None]
    tl.store(out, acc, mask=t_mask[:, None] & k_mask[None, :])


@dataclass(frozen=True)
class GemmConfig:
    block_t: int
    block_k: int
    block_c: int
    num_warps: int = 4
    num_stages: int = 3

    @property
    def label(self) -> str:
        return f"T{self.block_t} K{self.block_k} C{self.block_c} w{self.num_warps} s{self.num_stages}"


# Configs offered to the autotuner on a GPU; every one must pass compile-check for sm_80/sm_90.
GPU_CONFIGS = (
    GemmConfig(64, 64, 32, 4, 3),
    GemmConfig(128, 64, 32, 4, 3),
    GemmConfig(64, 128, 32, 4, 3),
    GemmConfig(128, 128, 32, 8, 3),
    GemmConfig(32, 64, 64, 4, 2),
)


# fp32 operands with IEEE products run on CUDA cores (FMA): larger tiles spill on sm_80.
FP32_IEEE_CONFIGS = (
    GemmConfig(64, 64, 32, 4, 3),
    GemmConfig(64, 64, 16, 4, 2),
    GemmConfig(32, 64, 32, 4, 2),
)


def gpu_configs(dtype: torch.dtype, precision: str) -> tuple[GemmConfig, ...]:
    """The candidates the autotuner may launch for this operand dtype and dot precision."""
    return FP32_IEEE_CONFIGS if dtype == torch.float32 and precision == "ieee" else GPU_CONFIGS


def interpreter_config(t_total: int, k: int, c: int) -> GemmConfig:
    """One large config: the interpreter's cost is per program and per loop iteration."""
    return GemmConfig(min(256, next_pow2(t_total)), min(64, next_pow2(k)), min(64, next_pow2(c)), 4, 1)


def winograd_gemm(
    v: torch.Tensor, q: torch.Tensor, allow_tf32: bool = False, config: GemmConfig | None = None
) -> torch.Tensor:
    """M (P, K, T) fp32 = per-position V_pᵀ Q_p for V (P, C, T) and Q (P, C, K) of one dtype."""
    check_triton_device(v, q)
    p, c, t_total = v.shape
    p2, c2, k = q.shape
    assert p == p2 and c == c2 and v.dtype == q.dtype and v.is_contiguous() and q.is_contiguous()
    mm = torch.empty((p, k, t_total), device=v.device, dtype=torch.float32)
    if mm.numel() == 0:
        return mm
    if c == 0:
        return mm.zero_()
    precision = dot_precision(v.dtype, allow_tf32)
    cfg = config or (interpreter_config(t_total, k, c) if interpreting() else gpu_configs(v.dtype, precision)[0])
    grid = (triton.cdiv(t_total, cfg.block_t), triton.cdiv(k, cfg.block_k), p)
    _winograd_gemm_kernel[grid](
        v, q, mm, c, k, t_total,
        BLOCK_T=cfg.block_t, BLOCK_K=cfg.block_k, BLOCK_C=cfg.block_c,
        PRECISION=precision, UPCAST=upcast_dot(v.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return mm


def compile_specs() -> list[CompileSpec]:
    specs = []
    for dt, prec in ((torch.float16, "ieee"), (torch.bfloat16, "ieee"), (torch.float32, "tf32"),
                     (torch.float32, "ieee")):
        for cfg in gpu_configs(dt, prec):
            sig = {"v_ptr": f"*{TL_NAME[dt]}", "q_ptr": f"*{TL_NAME[dt]}", "m_ptr": "*fp32",
                   "C": "i32", "K": "i32", "T": "i32",
                   **{a: "constexpr" for a in ("BLOCK_T", "BLOCK_K", "BLOCK_C", "PRECISION", "UPCAST")}}
            specs.append(CompileSpec(
                kernel="winograd_gemm", fn=_winograd_gemm_kernel, signature=sig,
                constexprs={"BLOCK_T": cfg.block_t, "BLOCK_K": cfg.block_k, "BLOCK_C": cfg.block_c,
                            "PRECISION": prec, "UPCAST": False},
                num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                label=f"{cfg.label} {TL_NAME[dt]}{'/tf32' if prec == 'tf32' else ''}",
                expects_mma=not (dt == torch.float32 and prec == "ieee"),
            ))
    return specs
