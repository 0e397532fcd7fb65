"""Config selection for the Winograd-domain GEMM kernels, persisted by ``tritonwino.tuning``.

Keys: a bucket of the tile count T (next power of two, so batch sizes share results), C, K, dtype,
tile, tf32, and for the sparse kernel the packing's group size, block and *sparsity signature*
(density bucket) — never the raw mask, never the exact batch. The first call with a new key times
every candidate (``triton.testing.do_bench`` on a GPU, a CPU timer under the interpreter) and
stores the winner in the cache file of this GPU and Triton version; later calls, in this or any
other process, read it. Under the interpreter the default candidate list has one config (the
largest blocks), so nothing is timed unless a caller passes several candidates.
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from . import tuning
from .kernels._common import dot_precision, interpreting
from .kernels.sparse_winograd_gemm import SparseGemmConfig, sparse_winograd_gemm
from .kernels.sparse_winograd_gemm import gpu_configs as sparse_gpu_configs
from .kernels.sparse_winograd_gemm import interpreter_config as sparse_interpreter_config
from .kernels.winograd_gemm import GemmConfig, winograd_gemm
from .kernels.winograd_gemm import gpu_configs as dense_gpu_configs
from .kernels.winograd_gemm import interpreter_config as dense_interpreter_config

SPARSE_KERNEL = "sparse_winograd_gemm"
DENSE_KERNEL = "winograd_gemm"

# In-process memo: the steady-state forward does a dict lookup, no file I/O and no host sync.
_MEMO: dict[tuple[str, str], dict] = {}


def sparse_key(t_total: int, packed, dtype: torch.dtype, allow_tf32: bool) -> str:
    return tuning.make_key(T=tuning.shape_bucket(t_total), C=packed.C, K=packed.K, dtype=dtype,
                           tile=(packed.m, packed.r), group_k=packed.group_k, block=packed.block,
                           sig=packed.sparsity_signature, tf32=allow_tf32 and dtype == torch.float32)


def dense_key(t_total: int, c: int, k: int, m: int, r: int, dtype: torch.dtype, allow_tf32: bool) -> str:
    return tuning.make_key(T=tuning.shape_bucket(t_total), C=c, K=k, dtype=dtype, tile=(m, r),
                           tf32=allow_tf32 and dtype == torch.float32)


def _select(kernel: str, key: str, candidates: list[dict], bench, force: bool) -> dict:
    memo_key = (kernel, key)
    if not force and memo_key in _MEMO and _MEMO[memo_key] in candidates:
        return _MEMO[memo_key]
    best = tuning.autotune(kernel, key, candidates, bench, force=force)
    _MEMO[memo_key] = best
    return best


def sparse_config(v: torch.Tensor, packed, values: torch.Tensor, allow_tf32: bool = False,
                  candidates: list[SparseGemmConfig] | None = None, force: bool = False) -> SparseGemmConfig:
    """The config for the sparse GEMM on V (P, C, T) with this packed weight."""
    t_total = v.shape[2]
    if candidates is None:
        candidates = ([sparse_interpreter_config(t_total)] if interpreting() else
                      list(sparse_gpu_configs(v.dtype, dot_precision(v.dtype, allow_tf32), packed.group_k)))
    cands = [asdict(c) for c in candidates]
    key = sparse_key(t_total, packed, v.dtype, allow_tf32)

    def bench(cfg: dict) -> float:
        c = SparseGemmConfig(**cfg)
        return tuning.do_bench_ms(lambda: sparse_winograd_gemm(
            v, values, packed.indices, packed.offsets, packed.K, packed.group_k, allow_tf32, c))

    return SparseGemmConfig(**_select(SPARSE_KERNEL, key, cands, bench, force))


def dense_config(v: torch.Tensor, q_pck: torch.Tensor, m: int, r: int, allow_tf32: bool = False,
                 candidates: list[GemmConfig] | None = None, force: bool = False) -> GemmConfig:
    """The config for the dense GEMM on V (P, C, T) and Q (P, C, K)."""
    _, c, t_total = v.shape
    k = q_pck.shape[2]
    if candidates is None:
        candidates = ([dense_interpreter_config(t_total, k, c)] if interpreting() else
                      list(dense_gpu_configs(v.dtype, dot_precision(v.dtype, allow_tf32))))
    cands = [asdict(cf) for cf in candidates]
    key = dense_key(t_total, c, k, m, r, v.dtype, allow_tf32)

    def bench(cfg: dict) -> float:
        g = GemmConfig(**cfg)
        return tuning.do_bench_ms(lambda: winograd_gemm(v, q_pck, allow_tf32, g))

    return GemmConfig(**_select(DENSE_KERNEL, key, cands, bench, force))


def clear_memo() -> None:
    _MEMO.clear()
