"""Config selection: the generic best-of-candidates search (:func:`autotune`), the launch configs
of the fused Winograd kernels and the choice between the one- and the two-kernel sparse path,
persisted in the tuning cache (``cache.py``).

Keys: a bucket of the tile count T (next power of two, so batch sizes share results), C, K, dtype,
tile, tf32, and for sparse layers the packing's group size, block and *sparsity signature*
(density bucket) — never the raw mask, never the exact batch — and the kernel path. The first call
with a new key times every candidate (``triton.testing.do_bench`` on a GPU, a CPU timer under the
interpreter) and stores the winner in the cache file of this GPU and Triton version; later calls,
in this or any other process, read it. Under the interpreter the default candidate list has one
config (the largest blocks), so nothing is timed unless a caller passes several candidates.

The sparse path (one kernel or two, see ``tritonwino._triton_path``) is chosen per key as well: by
timing both on a GPU, and without one by the counted-work model in closed form
(``tritonwino.workmodel.estimate``, H100 peaks: a model, not a measurement).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from ..kernels._common import dot_precision, interpreting
from ..kernels.fused_multiply import (
    ONE_KERNEL_MAX_M,
    FusedConfig,
    gpu_configs,
    interpreter_config,
    one_kernel_supported,
)
from ..kernels.input_transform import gpu_config as input_gpu_config
from .cache import TuningCache, config_label, get_cache, jsonable_config, make_key, norm_key, shape_bucket
from .timer import do_bench_ms

SPARSE_KERNEL = "fused_sparse"
DENSE_KERNEL = "fused_dense"
PATH_KERNEL = "sparse_path"
PATH_ENV = "TRITONWINO_SPARSE_PATH"
AUTOTUNE_ENV = "TRITONWINO_AUTOTUNE"
MODEL_GPU = "H100"

# In-process memo: the steady-state forward does a dict lookup, no file I/O and no host sync.
_MEMO: dict[tuple[str, str], object] = {}


@dataclass
class PathChoice:
    """Which kernel sequence a sparse layer runs for one key, and why."""

    path: str                    # one-kernel | two-kernel
    source: str                  # measured | cache | model | env | rule
    reason: str
    times: dict[str, float] = field(default_factory=dict)   # ms measured, or µs modeled

    def describe(self) -> str:
        return f"{self.path} ({self.source}: {self.reason})"


def _source(path: str) -> str:
    return "v" if path == "two-kernel" else "x"


def sparse_key(t_total: int, packed, dtype: torch.dtype, allow_tf32: bool, path: str = "two-kernel") -> str:
    return make_key(T=shape_bucket(t_total), C=packed.C, K=packed.K, dtype=dtype,
                           tile=(packed.m, packed.r), group_k=packed.group_k, block=packed.block,
                           sig=packed.sparsity_signature, tf32=allow_tf32 and dtype == torch.float32, path=path)


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


def _gpu_candidates(configs) -> list[FusedConfig]:
    """All candidates, or only the first with ``TRITONWINO_AUTOTUNE=0`` (no config timing: one
    compile per kernel, e.g. for a time-boxed GPU check)."""
    return list(configs)[:1] if os.environ.get(AUTOTUNE_ENV) == "0" else list(configs)


def sparse_candidates(call, path: str) -> list[FusedConfig]:
    """The launch configs tried for ``call`` on ``path``."""
    if interpreting():
        return [interpreter_config(call.t_total)]
    prec = dot_precision(call.operand, call.allow_tf32)
    return _gpu_candidates(gpu_configs(call.packed.m, call.packed.group_k, call.operand, prec, _source(path)))


def sparse_config(call, path: str, candidates: list[FusedConfig] | None = None, force: bool = False) -> FusedConfig:
    """The fused-multiply config for a ``_pipeline.SparseCall`` on ``path`` (timed on its own
    kernel: V is computed once outside the timing for the two-kernel path)."""
    candidates = candidates if candidates is not None else sparse_candidates(call, path)
    cands = [asdict(c) for c in candidates]
    key = sparse_key(call.t_total, call.packed, call.operand, call.allow_tf32, path)
    src = {}

    def bench(cfg: dict) -> float:
        if "v" not in src:
            src["v"] = call.transform() if path == "two-kernel" else call.x
        y = call.multiply(src["v"], _source(path), FusedConfig(**cfg))
        return do_bench_ms(lambda: call.multiply(src["v"], _source(path), FusedConfig(**cfg), y))

    return FusedConfig(**_select(SPARSE_KERNEL, key, cands, bench, force))


def dense_config(v: torch.Tensor, q_pck: torch.Tensor, m: int, r: int, allow_tf32: bool, launch,
                 candidates: list[FusedConfig] | None = None, force: bool = False) -> FusedConfig:
    """The dense fused-multiply config for V (P, C, T) and Q (P, C, K); ``launch(cfg)`` runs it."""
    from ..kernels.fused_multiply import dense_block_k

    _, c, t_total = v.shape
    k = q_pck.shape[2]
    if candidates is None:
        candidates = ([interpreter_config(t_total)] if interpreting() else
                      _gpu_candidates(gpu_configs(m, dense_block_k(k), v.dtype, dot_precision(v.dtype, allow_tf32),
                                                  "v")))
    key = dense_key(t_total, c, k, m, r, v.dtype, allow_tf32)
    return FusedConfig(**_select(DENSE_KERNEL, key, [asdict(cf) for cf in candidates],
                                 lambda cfg: do_bench_ms(lambda: launch(FusedConfig(**cfg))), force))


# --------------------------------------------------------------------------------------------
# one kernel or two
# --------------------------------------------------------------------------------------------
def modeled_path_times(call, gpu: str = MODEL_GPU) -> dict[str, float]:
    """Modeled µs of both sparse paths for this call (closed-form counted work, GPU launch configs,
    roofline with ``gpu``'s published peaks): a model, not a measurement."""
    from ..kernels._common import TL_NAME
    from ..workmodel.estimate import pack_stats, sparse_launches
    from ..workmodel.roofline import GPUS, path_time_us

    packed, x = call.packed, call.x
    stats = pack_stats(packed)
    es = x.element_size()
    prec = dot_precision(call.operand, call.allow_tf32)
    out = {}
    for path in ("two-kernel", "one-kernel"):
        cfg = gpu_configs(packed.m, packed.group_k, call.operand, prec, _source(path))[0]
        launches = sparse_launches(
            call.spec, x.shape[0], packed.C, packed.K, x.shape[2], x.shape[3], call.padding, stats,
            packed.group_k, path, cfg, input_gpu_config(packed.n), in_es=es,
            idx_es=packed.indices.element_size(), operand=TL_NAME[call.operand], precision=prec,
            has_bias=call.bias is not None, relu=call.relu, winograd_relu=call.winograd_relu)
        out[path] = path_time_us(launches, GPUS[gpu])
    return out


def sparse_path(call, force: bool = False) -> PathChoice:
    """One kernel or two for this call's key: two kernels for a decomposed convolution
    (``tritonwino.dwm``: the one-kernel path transforms x itself and knows nothing of pieces; not
    even ``$TRITONWINO_SPARSE_PATH`` changes that) and for fp32 operands; else
    ``$TRITONWINO_SPARSE_PATH`` if set; else on a GPU the faster of both as timed (cached); else the
    counted-work model's choice."""
    if getattr(call, "decomposition", None) is not None:
        d = call.decomposition
        return PathChoice("two-kernel", "rule", f"decomposed {d.kernel}x{d.kernel} stride-{d.stride} convolution: "
                                                "the one-kernel path does not read pieces")
    if not one_kernel_supported(call.packed.m, call.operand):
        what = f"{str(call.operand).removeprefix('torch.')} F({call.packed.m},{call.packed.r})"
        return PathChoice("two-kernel", "rule", f"the one-kernel path is offered for fp16/bf16 operands and "
                                                f"F(m<={ONE_KERNEL_MAX_M}), not {what}")
    env = os.environ.get(PATH_ENV)
    if env:
        if env not in ("one-kernel", "two-kernel"):
            raise ValueError(f"{PATH_ENV} must be 'one-kernel' or 'two-kernel', got {env!r}")
        return PathChoice(env, "env", f"{PATH_ENV}={env}")
    key = sparse_key(call.t_total, call.packed, call.operand, call.allow_tf32, "path")
    memo_key = (PATH_KERNEL, key)
    hit = _MEMO.get(memo_key)
    if hit is not None and not force:
        return hit
    if not call.x.is_cuda:
        times = modeled_path_times(call)
        best = min(times, key=times.__getitem__)
        other = "one-kernel" if best == "two-kernel" else "two-kernel"
        choice = PathChoice(best, "model", f"{MODEL_GPU} roofline of counted work (a model, not a measurement): "
                                           f"{times[best]:.3g} us vs {other} {times[other]:.3g} us", times)
    else:
        cache = get_cache()
        entry = None if force else cache.get_entry(PATH_KERNEL, key)
        if entry is not None and entry["config"].get("path") in ("one-kernel", "two-kernel"):
            times = {k: float(v) for k, v in entry.get("timings", {}).items()}
            choice = PathChoice(entry["config"]["path"], "cache", entry["config"].get("reason", ""), times)
        else:
            times = {}
            for path in ("two-kernel", "one-kernel"):
                cfg = sparse_config(call, path)
                times[path] = do_bench_ms(lambda path=path, cfg=cfg: call.run(path, cfg))
            best = min(times, key=times.__getitem__)
            other = "one-kernel" if best == "two-kernel" else "two-kernel"
            reason = f"measured {times[best]:.3g} ms vs {other} {times[other]:.3g} ms"
            cache.put(PATH_KERNEL, key, {"path": best, "reason": reason}, times)
            choice = PathChoice(best, "measured", reason, times)
    _MEMO[memo_key] = choice
    return choice


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


def memoised_sparse_choice(call) -> tuple[str, FusedConfig]:
    """(path, config) for ``call`` from this process's memo only: no timing, no cache file, no
    host sync, so it can run while torch.compile traces. A bucket not decided yet gets the
    two-kernel path with its first candidate config."""
    choice = _MEMO.get((PATH_KERNEL, sparse_key(call.t_total, call.packed, call.operand, call.allow_tf32, "path")))
    path = choice.path if choice is not None and one_kernel_supported(call.packed.m, call.operand) else "two-kernel"
    if os.environ.get(PATH_ENV) in ("one-kernel", "two-kernel"):
        path = os.environ[PATH_ENV]
    if getattr(call, "decomposition", None) is not None:
        path = "two-kernel"  # decomposed: the one-kernel path does not read pieces
    key = sparse_key(call.t_total, call.packed, call.operand, call.allow_tf32, path)
    cfg = _MEMO.get((SPARSE_KERNEL, key))
    return path, FusedConfig(**cfg) if cfg is not None else sparse_candidates(call, path)[0]
