"""Config selection: the generic best-of-candidates search (:func:`autotune`) and the per-kernel
choices for the Winograd-domain GEMMs, persisted in the tuning cache (``cache.py``).

Keys: a bucket of the tile count T (next power of two, so batch sizes share results), C, K, dtype,
tile, tf32, and for the sparse kernel the packing's group size, block and *sparsity signature*
(density bucket) — never the raw mask, never the exact batch. The first call with a new key times
every candidate (``triton.testing.do_bench`` on a GPU, a CPU timer under the interpreter) and
stores the winner in the cache file of this GPU and Triton version; later calls, in this or any
other process, read it. Under the interpreter the default candidate list has one config (the
largest blocks), so nothing is timed unless a caller passes several candidates.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict

import torch

from ..kernels._common import dot_precision, interpreting
from ..kernels.sparse_winograd_gemm import SparseGemmConfig, sparse_winograd_gemm
from ..kernels.sparse_winograd_gemm import gpu_configs as sparse_gpu_configs
from ..kernels.sparse_winograd_gemm import interpreter_config as sparse_interpreter_config
from ..kernels.winograd_gemm import GemmConfig, winograd_gemm
from ..kernels.winograd_gemm import gpu_configs as dense_gpu_configs
from ..kernels.winograd_gemm import interpreter_config as dense_interpreter_config
from .cache import TuningCache, config_label, get_cache, jsonable_config, make_key, norm_key, shape_bucket
from .timer import do_bench_ms

SPARSE_KERNEL = "sparse_winograd_gemm"
DENSE_KERNEL = "winograd_gemm"

# In-process memo: the steady-state forward does a dict lookup, no file I/O and no host sync.
_MEMO: dict[tuple[str, str], dict] = {}


def sparse_key(t_total: int, packed, dtype: torch.dtype, allow_tf32: bool) -> str:
    return make_key(T=shape_bucket(t_total), C=packed.C, K=packed.K, dtype=dtype,
              tile=(packed.m, packed.r), group_k=packed.group_k, block=packed.block,
              sig=packed.sparsity_signature, tf32=allow_tf32 and dtype == torch.float32)


def dense_key(t_total: int, c: int, k: int, m: int, r: int, dtype: torch.dtype, allow_tf32: bool) -> str:
    return make_key(T=shape_bucket(t_total), C=c, K=k, dtype=dtype, tile=(m, r),
              tf32=allow_tf32 and dtype == torch.float32)


def _select(kernel: str, key: str, candidates: list[dict], bench, force: bool) -> dict:
    memo_key = (kernel, key)
    if not force and memo_key in _MEMO and _MEMO[memo_key] in candidates:
        return _MEMO[memo_key]
    best = autotune(kernel, key, candidates, bench, force=force)
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
        return do_bench_ms(lambda: sparse_winograd_gemm(
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
        return do_bench_ms(lambda: winograd_gemm(v, q_pck, allow_tf32, g))

    return GemmConfig(**_select(DENSE_KERNEL, key, cands, bench, force))


def clear_memo() -> None:
    _MEMO.clear()


def autotune(kernel: str, key: tuple | str | dict, configs: Sequence[dict],
             bench_fn: Callable[[dict], float], *, force: bool = False,
             cache: TuningCache | None = None) -> dict:
    """The best of ``configs`` for ``kernel`` at ``key``.

    A cached winner that is still one of ``configs`` is returned without timing (unless
    ``force``). With a single config it is returned untimed. Otherwise every config is timed with
    ``bench_fn(config) -> ms``; a config that raises (e.g. out of shared memory) or returns a
    non-finite time is skipped with a warning, the fastest is stored in the cache together with
    all timings and errors, and returned. Raises ``RuntimeError`` if every config fails.
    """
    configs = list(configs)
    if not configs:
        raise ValueError(f"autotune({kernel!r}): no configs given")
    if len(configs) == 1:
        return configs[0]
    cache = cache if cache is not None else get_cache()
    if not force:
        cached = _guarded(lambda: cache.get(kernel, key), f"reading the tuning cache {cache.path}")
        if cached is not None:
            for c in configs:
                if jsonable_config(c) == cached:
                    return c
    timings: dict[str, float] = {}
    errors: dict[str, str] = {}
    best: tuple[float, dict] | None = None
    for c in configs:
        label = config_label(c)
        try:
            ms = float(bench_fn(c))
            if not math.isfinite(ms) or ms < 0:
                raise ValueError(f"bench_fn returned {ms!r}")
        except Exception as e:  # noqa: BLE001 - any failure of one config just skips it
            errors[label] = f"{type(e).__name__}: {e}"
            warnings.warn(f"tritonwino autotune {kernel} [{norm_key(key)}]: config {label} failed "
                          f"and is skipped: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)
            continue
        timings[label] = ms
        if best is None or ms < best[0]:
            best = (ms, c)
    if best is None:
        raise RuntimeError(f"autotune({kernel!r}, {norm_key(key)!r}): every config failed: {errors}")
    _guarded(lambda: cache.put(kernel, key, best[1], timings, errors=errors), f"writing the tuning cache {cache.path}")
    return best[1]


def _guarded(fn: Callable[[], object], what: str):
    """The cache is an optimisation: whatever goes wrong in it (TuningCache already turns file
    problems into warnings; this is the last line) costs a re-tune, never the caller's forward."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"tritonwino: {what} failed and is skipped: {type(e).__name__}: {e}", RuntimeWarning,
                      stacklevel=3)
        return None
