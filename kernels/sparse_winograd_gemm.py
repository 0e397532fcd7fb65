"""Stage 2 (sparse): Winograd-domain GEMMs that skip pruned weights.

Grid = (T blocks, output-channel groups G, positions P). A program owns one group of BLOCK_K
(= the packing's group_k) output channels at one position. It walks that group's kept-channel
list in chunks of BLOCK_C, gathers the matching rows of V_p (P, C, T) and multiplies them by the
dense (kept × BLOCK_K) value slab with `tl.dot`, accumulating in fp32. Pruned channels are never
loaded; a group with nothing kept runs no loop iteration and only writes its zeros.

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
def _sparse_winograd_gemm_kernel(
    v_ptr,            # (P, C, T) transformed input
    val_ptr,          # (nnz, BLOCK_K) kept values
    idx_ptr,          # int16 or int32 (nnz,) kept input channels
    off_ptr,          # int32 (P*G + 1) group starts
    m_ptr,            # fp32 (P, K, T)
    C, K, T, G,
    BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid_t = tl.program_id(0)
    g = tl.program_id(1)
    p = tl.program_id(2).to(tl.int64)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t_mask = t < T
    kk = tl.arange(0, BLOCK_K)
    pg = p * G + g
    start = tl.load(off_ptr + pg).to(tl.int64)
    nkept = tl.load(off_ptr + pg + 1).to(tl.int64) - start
    v_base = v_ptr + p * C * T

    acc = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.float32)
    for j0 in range(0, nkept, BLOCK_C):
        jj = j0 + tl.arange(0, BLOCK_C)
        j_mask = jj < nkept
        ch = tl.load(idx_ptr + start + jj, mask=j_mask, other=0).to(tl.int64)
        a = tl.load(v_base + ch[None, :] * T + t[:, None], mask=t_mask[:, None] & j_mask[None, :], other=0.0)
        b = tl.load(val_ptr + (start + jj)[:, None] * BLOCK_K + kk[None, :], mask=j_mask[:, None], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)

    k = g * BLOCK_K + kk
    out = m_ptr + p * K * T + k.to(tl.int64)[None, :] * T + t[:, None]
    tl.store(out, acc, mask=t_mask[:, None] & (k[None, :] < K))


@dataclass(frozen=True)
class SparseGemmConfig:
    block_t: int
    block_c: int
    num_warps: int = 4
    num_stages: int = 3

    @property
    def label(self) -> str:
        return f"T{self.block_t} C{self.block_c} w{self.num_warps} s{self.num_stages}"


# Candidates for the autotuner on a GPU (BLOCK_K is fixed by the packing's group_k).
GPU_CONFIGS = (
    SparseGemmConfig(64, 32, 4, 3),
    SparseGemmConfig(128, 32, 4, 3),
    SparseGemmConfig(128, 64, 8, 3),
    SparseGemmConfig(256, 32, 8, 2),
    SparseGemmConfig(64, 16, 4, 2),
)


# fp32 operands with IEEE products run on CUDA cores (FMA): larger tiles spill on sm_80.
FP32_IEEE_CONFIGS = (
    SparseGemmConfig(64, 32, 4, 3),
    SparseGemmConfig(64, 16, 4, 2),
)


def gpu_configs(dtype: torch.dtype, precision: str, group_k: int) -> tuple[SparseGemmConfig, ...]:
    """The candidates the autotuner may launch (compile-check proves each spill-free on sm_80/sm_90).

    A 64-wide group with fp32 operands is the register-heaviest case: with IEEE products only the
    smallest tile fits, and with tf32 the 128-tile/4-warp and 256-tile configs spill on sm_80."""
    if dtype == torch.float32 and precision == "ieee":
        return FP32_IEEE_CONFIGS if group_k < 64 else FP32_IEEE_CONFIGS[1:]
    if group_k >= 64:
        heavy = dtype == torch.float32
        return tuple(c for c in GPU_CONFIGS if not (c.block_t >= 128 and c.num_warps == 4)
                     and not (heavy and c.block_t >= 256))
    return GPU_CONFIGS


def interpreter_config(t_total: int) -> SparseGemmConfig:
    return SparseGemmConfig(min(256, next_pow2(t_total)), 32, 4, 1)


def sparse_winograd_gemm(
    v: torch.Tensor,
    values: torch.Tensor,
    indices: torch.Tensor,
    offsets: torch.Tensor,
    k: int,
    group_k: int,
    allow_tf32: bool = False,
    config: SparseGemmConfig | None = None,
) -> torch.Tensor:
    """M (P, K, T) fp32 from V (P, C, T) and a packed weight's arrays (values in V's dtype)."""
    check_triton_device(v, values, indices, offsets)
    p, c, t_total = v.shape
    g = -(-k // group_k)
    assert values.dtype == v.dtype and values.shape[1] == group_k and v.is_contiguous()
    assert offsets.numel() == p * g + 1 and offsets.dtype == torch.int32
    assert indices.dtype in (torch.int16, torch.int32)
    mm = torch.empty((p, k, t_total), device=v.device, dtype=torch.float32)
    if mm.numel() == 0:
        return mm
    precision = dot_precision(v.dtype, allow_tf32)
    cfg = config or (interpreter_config(t_total) if interpreting() else gpu_configs(v.dtype, precision, group_k)[0])
    grid = (triton.cdiv(t_total, cfg.block_t), g, p)
    _sparse_winograd_gemm_kernel[grid](
        v, values, indices, offsets, mm, c, k, t_total, g,
        BLOCK_T=cfg.block_t, BLOCK_K=group_k, BLOCK_C=cfg.block_c,
        PRECISION=precision, UPCAST=upcast_dot(v.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return mm


def compile_specs() -> list[CompileSpec]:
    specs = []
    for dt, prec in ((torch.float16, "ieee"), (torch.bfloat16, "ieee"), (torch.float32, "tf32"),
                     (torch.float32, "ieee")):
        for group_k, idx_t in [(gk, it) for it in ("i16", "i32") for gk in (16, 32, 64)]:
            for cfg in gpu_configs(dt, prec, group_k):
                sig = {"v_ptr": f"*{TL_NAME[dt]}", "val_ptr": f"*{TL_NAME[dt]}", "idx_ptr": f"*{idx_t}",
                       "off_ptr": "*i32", "m_ptr": "*fp32", "C": "i32", "K": "i32", "T": "i32", "G": "i32",
                       **{a: "constexpr" for a in ("BLOCK_T", "BLOCK_K", "BLOCK_C", "PRECISION", "UPCAST")}}
                specs.append(CompileSpec(
                    kernel="sparse_winograd_gemm", fn=_sparse_winograd_gemm_kernel, signature=sig,
                    constexprs={"BLOCK_T": cfg.block_t, "BLOCK_K": group_k, "BLOCK_C": cfg.block_c,
                                "PRECISION": prec, "UPCAST": False},
                    num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                    label=f"{cfg.label} gk{group_k} {idx_t} {TL_NAME[dt]}{'/tf32' if prec == 'tf32' else ''}",
                    expects_mma=not (dt == torch.float32 and prec == "ieee"),
                ))
    return specs
