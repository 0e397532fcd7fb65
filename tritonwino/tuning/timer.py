"""The one timer: every benchmark, the autotuner and measured dispatch time code through here.

GPU: ``triton.testing.do_bench`` (warm-up, L2 flushed between runs), quantiles 0.5 / 0.2 / 0.8.
CPU: warm-up calls, then ``time.perf_counter`` repeats; the median with the 20th/80th percentiles.
Several candidates are timed *interleaved* (one call of each per round) on CPU, so that load
from other processes on a shared machine hits every candidate alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .. import env

__all__ = ["Timing", "do_bench_ms", "time_interleaved", "time_ms"]

Timing = dict[str, Any]  # {"ms": median, "ms_p20", "ms_p80", "ms_min", "reps"}


def _on_gpu(device: torch.device | str | None) -> bool:
    if device is None:
        return env.cuda_available() and not env.interpreting()
    return torch.device(device).type == "cuda" and not env.interpreting()


def _summary(times: list[float]) -> Timing:
    times = sorted(times)
    q = statistics.quantiles(times, n=5) if len(times) >= 2 else [times[0]] * 4
    return {"ms": statistics.median(times), "ms_p20": q[0], "ms_p80": q[3], "ms_min": times[0],
            "reps": len(times)}


def time_ms(fn: Callable[[], object], device: torch.device | str | None = None, *, warmup: int = 2,
            reps: int = 7, min_time_s: float = 0.0) -> Timing:
    """Time ``fn()`` and return ``{"ms", "ms_p20", "ms_p80", "ms_min", "reps"}`` in milliseconds.

    Args:
        fn: the work to time (called with gradients off).
        device: where it runs (default: CUDA if available); CUDA uses ``do_bench``.
        warmup: untimed calls first (CPU).
        reps: at least this many timed calls (CPU).
        min_time_s: keep repeating until this much time has passed (CPU), so sub-millisecond work
            gets enough samples for its median to shrug off a scheduler hiccup.

    Example:
        >>> t = time_ms(lambda: torch.ones(1000).sum(), "cpu", reps=3)
        >>> t["ms"] > 0
        True
    """
    if _on_gpu(device):
        import triton.testing

        torch.backends.cudnn.benchmark = True
        med, lo, hi = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
        return {"ms": med, "ms_p20": lo, "ms_p80": hi, "ms_min": lo, "reps": None}
    with torch.no_grad():
        for _ in range(max(0, warmup)):
            fn()
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < max(1, reps) or (time.perf_counter() - start) < min_time_s:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return _summary(times)


def do_bench_ms(fn: Callable[[], object], *, warmup: int = 2, rep: int = 5) -> float:
    """Median milliseconds of ``fn()`` on whatever device runs it (the autotuner's timer)."""
    return float(time_ms(fn, None, warmup=warmup, reps=rep)["ms"])


def time_interleaved(fns: Mapping[str, Callable[[], object]], device: torch.device | str | None = None, *,
                     rounds: int = 5, warmup: int = 1) -> dict[str, Timing]:
    """Time several candidates; on CPU one call of each per round, ``rounds`` rounds.

    Args:
        fns: name -> zero-argument callable.
        device: where they run; on CUDA each is timed with ``do_bench`` in turn.
        rounds: timed rounds (CPU).
        warmup: untimed rounds first (caches, oneDNN primitive creation).

    Example:
        >>> t = time_interleaved({"a": lambda: None, "b": lambda: None}, "cpu", rounds=2)
        >>> sorted(t)
        ['a', 'b']
    """
    if _on_gpu(device):
        return {name: time_ms(fn, device) for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for _ in range(max(0, warmup)):
            for fn in fns.values():
                fn()
        for _ in range(max(1, rounds)):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: _summary(ts) for name, ts in times.items()}
