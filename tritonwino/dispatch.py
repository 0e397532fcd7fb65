"""Measured per-layer dispatch for ``SparseWinogradConv2d(backend="auto")``.

For every layer and input-shape bucket (device, dtype, layout, batch rounded up to a power of two,
H, W) the layer runs one of three paths:

* ``conv2d``  — ``F.conv2d`` (cuDNN / oneDNN) with the spatial weight recovered from Q. Only
  offered when Q lies in the range of ``W -> G W Gᵀ`` (a spatially pruned layer); a Q pruned in the
  Winograd domain has no exact spatial equivalent, so conv2d is never offered for it.
* ``dense``   — dense Winograd with the unpacked Q.
* ``sparse``  — sparse Winograd with the packed Q.

On a CUDA tensor the Winograd paths are the Triton kernels; on CPU the fused C++ kernels
(``tritonwino._cpu_path``, backend ``"cpu"``) for float32 and the torch paths otherwise (the Triton
interpreter is never a candidate: it is a test tool, not an execution path); decomposed and
Winograd-ReLU layers take the torch paths on CPU, which the C++ kernels do not implement
(:func:`layer_backend`). The backend is part
of the cache key, so times measured for one backend never decide for another. Times are taken once —
on the first forward of a new bucket or by ``tritonwino.modules.tune_model`` — and stored in the persistent
tuning cache (``tritonwino.tuning``, kernel name ``"dispatch"``), so another process with the same
layer shapes and sparsity bucket reuses them. A Winograd path is chosen only when it beats conv2d
by more than ``MARGIN``: timing noise must never make a layer slower than conv2d.

Steady state: the layer looks its decision up in a dict keyed by the shape (host-side ints), so
the forward adds no host synchronisation.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from . import _cpu_path, tuning
from .kernels.fused_multiply import GPU_MAX_M

__all__ = [
    "MARGIN",
    "Decision",
    "candidates",
    "decide",
    "layer_backend",
    "measuring",
    "set_measure_on_first_use",
    "shape_key",
]

PATHS = ("conv2d", "dense", "sparse")
KERNEL_NAME = "dispatch"
# A Winograd path must be this much faster than conv2d to be chosen (relative).
MARGIN = 0.05

_MEASURE_ON_FIRST_USE = os.environ.get("TRITONWINO_DISPATCH", "measure") != "static"
_FORCE_MEASURE = False


@dataclass
class Decision:
    """What a layer runs for one shape bucket, and why."""

    path: str  # conv2d | dense | sparse
    backend: str  # torch | triton | cpu (for conv2d: the library conv2d runs, "torch")
    source: str  # measured | cache | pinned | static
    times_ms: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    kernels: str = ""  # the Triton kernel sequence behind a Winograd path, and why (explain's column)

    def label(self) -> str:
        return self.path if self.path == "conv2d" else f"{self.path}-winograd/{self.backend}"


def set_measure_on_first_use(flag: bool) -> bool:
    """Turn first-use measurement on or off (off: a static rule, conv2d where it exists, else
    sparse). Returns the previous setting. Also ``TRITONWINO_DISPATCH=static`` in the environment."""
    global _MEASURE_ON_FIRST_USE
    old, _MEASURE_ON_FIRST_USE = _MEASURE_ON_FIRST_USE, bool(flag)
    return old


@contextmanager
def measuring(force: bool = True):
    """Inside, every new decision is measured, ignoring the tuning cache (``tune_model`` uses it)."""
    global _FORCE_MEASURE
    old, _FORCE_MEASURE = _FORCE_MEASURE, force
    try:
        yield
    finally:
        _FORCE_MEASURE = old


def shape_key(x: torch.Tensor) -> tuple:
    """The bucket a decision is made for: host-side metadata only (no sync)."""
    nb, _, h, w = x.shape
    cl = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return (x.device.type, x.dtype, tuning.shape_bucket(nb), int(h), int(w), cl)


def winograd_backend(x: torch.Tensor) -> str:
    """Triton for CUDA tensors it supports, the C++ kernels for float32 CPU tensors (where they
    build), the torch path otherwise."""
    if x.is_cuda:
        return "triton" if x.dtype != torch.float64 else "torch"
    return "cpu" if _cpu_path.runs(x) else "torch"


def layer_backend(layer, x: torch.Tensor) -> str:
    """:func:`winograd_backend` for this layer: the C++ CPU kernels run plain F(m, r) convolutions
    only, so a decomposed (``tritonwino.dwm``) or Winograd-ReLU layer takes the torch path on CPU,
    and the GPU kernels stop at m = ``GPU_MAX_M``, so larger tiles take it on CUDA (the op would
    route it there anyway; saying so here keeps decisions and cache keys honest)."""
    be = winograd_backend(x)
    if be == "triton" and layer.m > GPU_MAX_M:
        return "torch"
    if be == "cpu" and (getattr(layer, "decomposition", None) is not None or getattr(layer, "winograd_relu", False)):
        return "torch"
    return be


def candidates(layer, x: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    """The runnable paths for ``layer`` on ``x``: name -> zero-argument callable."""
    out: dict[str, Callable[[], torch.Tensor]] = {}
    if layer.spatial_weight() is not None:
        out["conv2d"] = lambda: layer.run_path(x, "conv2d", "torch")
    be = layer_backend(layer, x)
    out["dense"] = lambda: layer.run_path(x, "dense", be)
    out["sparse"] = lambda: layer.run_path(x, "sparse", be)
    return out


def choose(times: dict[str, float]) -> tuple[str, str]:
    """Pick from measured times: the fastest, but conv2d unless a Winograd path beats it by MARGIN."""
    best = min(times, key=times.__getitem__)
    if "conv2d" not in times:
        return best, f"fastest of {', '.join(sorted(times))} (conv2d not exact for this Q)"
    if best != "conv2d" and times[best] < times["conv2d"] * (1 - MARGIN):
        return best, f"{times['conv2d'] / times[best]:.2f}x faster than conv2d"
    if best != "conv2d":
        return "conv2d", f"{best} within {MARGIN:.0%} of conv2d: keep conv2d"
    return "conv2d", "conv2d fastest"


def _cache_key(layer, x: torch.Tensor) -> str:
    dev, dtype, nb, h, w, cl = shape_key(x)
    p = layer.packed
    # a decomposed layer (its C counts virtual channels) or a Winograd-ReLU one is another function
    # than a plain layer of the same GEMM shape: never share their decisions
    extra = {} if p.decomposition is None else {"dwm": p.decomposition}
    if getattr(layer, "winograd_relu", False):
        extra["wrelu"] = 1
    return tuning.make_key(dev=dev, be=layer_backend(layer, x), dtype=dtype, n=nb, hw=(h, w), cl=cl, ck=(p.C, p.K),
                           tile=(p.m, p.r), pad=layer.padding, sig=p.sparsity_signature,
                           exact=layer.spatial_weight() is not None, pts=",".join(p.points), **extra)


def decide(layer, x: torch.Tensor) -> Decision:
    """Decision for ``layer`` (a SparseWinogradConv2d with backend="auto") on input ``x``: from
    the tuning cache, else measured (first use), else the static rule. May sync; called once per
    bucket, never in the steady state."""
    be = layer_backend(layer, x)
    exact = layer.spatial_weight() is not None
    if not (_MEASURE_ON_FIRST_USE or _FORCE_MEASURE):
        if exact:
            return Decision("conv2d", "torch", "static", {}, "static rule: conv2d (measurement off)")
        return Decision("sparse", be, "static", {}, "static rule: no exact spatial weight, sparse Winograd")
    key = _cache_key(layer, x)
    cache = tuning.get_cache()
    if not _FORCE_MEASURE:
        entry = cache.get_entry(KERNEL_NAME, key)
        path = entry["config"].get("path") if entry is not None else None
        if path in PATHS and (exact or path != "conv2d"):
            times = {k: float(v) for k, v in entry.get("timings", {}).items()}
            return Decision(path, be if path != "conv2d" else "torch", "cache", times,
                            entry["config"].get("reason", ""))
    timed = tuning.time_interleaved(candidates(layer, x), x.device, rounds=5)
    times = {name: t["ms"] for name, t in timed.items()}
    path, reason = choose(times)
    cache.put(KERNEL_NAME, key, {"path": path, "reason": reason}, times)
    return Decision(path, be if path != "conv2d" else "torch", "measured", times, reason)
