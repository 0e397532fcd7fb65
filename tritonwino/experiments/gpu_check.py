"""The layer benchmark of ``bench/gpu_check.sh``: the sparse Triton paths against ``F.conv2d`` on one
GPU, as reference/gpu-performance.md §4 prescribes.

``F.conv2d`` runs channels_last in fp16 with ``torch.backends.cudnn.benchmark = True``; every
timing is ``triton.testing.do_bench`` (L2 flushed) of the layer, or of a CUDA-graph replay of it
at N = 1 (launch-bound). Shapes 64@56², 128@28², 256@14², 512@7² (3×3, padding 1) at N ∈ {1, 8, 32};
Winograd-domain sparsity 0 / 75 / 90 % at (16, 1) and (32, 1); F(4,3). Per case: the sparse path the
library chooses (timed choice between one and two kernels), both paths forced, and dense Winograd;
each row carries the error against the float64 layer beside the speedup.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Case", "plan", "run_case", "time_layer_ms"]

# deepest first: they are where sparse Winograd can pay, and a time budget cuts the tail
SHAPES = [(512, 7), (256, 14), (128, 28), (64, 56)]
BATCHES = [1, 8, 32]
SPARSITIES = [0.0, 0.75, 0.9]
BLOCKS = [(16, 1), (32, 1)]


@dataclass(frozen=True)
class Case:
    c: int
    h: int
    n: int
    sparsity: float
    block: tuple[int, int]
    m: int = 4

    def label(self) -> str:
        return f"{self.c}@{self.h}² N={self.n} {self.sparsity:.0%} ({self.block[0]},{self.block[1]})"


def plan(shapes=SHAPES, batches=BATCHES, sparsities=SPARSITIES, blocks=BLOCKS) -> list[Case]:
    """Every case of the check, in run order."""
    return [Case(c, h, n, s, b) for c, h in shapes for n in batches for s in sparsities for b in blocks]


def time_layer_ms(fn: Callable[[], torch.Tensor], graph: bool) -> float:
    """Median ms of ``fn`` (do_bench, L2 flushed); with ``graph`` of a CUDA-graph replay of it."""
    import triton.testing

    if not graph:
        return float(triton.testing.do_bench(fn))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return float(triton.testing.do_bench(g.replay))


def _rel_err(y: torch.Tensor, oracle: torch.Tensor) -> float:
    return float((y.double() - oracle).abs().max() / oracle.abs().max().clamp_min(1e-30))


def run_case(case: Case, env: dict, seed: int = 0) -> list[dict]:
    """Time F.conv2d and the Winograd paths on ``case``; one row per path."""
    from .. import _triton_path, reference
    from ..functional import sparse_winograd_conv2d, winograd_conv2d_pck
    from ..packing import pack_winograd_weight
    from ..testing import random_pruned_q
    from ..tuning import select

    dev, dt = torch.device("cuda"), torch.float16
    torch.backends.cudnn.benchmark = True
    gen = torch.Generator().manual_seed(seed)
    c, h, n, m = case.c, case.h, case.n, case.m
    x = torch.randn(n, c, h, h, generator=gen).to(dev, dt).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(c, c, 3, 3, generator=gen) / math.sqrt(9 * c)).to(dev, dt).contiguous(
        memory_format=torch.channels_last)
    q = random_pruned_q(c, c, m, 3, case.sparsity, case.block, weight=w.float().cpu(), generator=gen)
    packed = pack_winograd_weight(q.float(), case.block).to(dev)
    graph = n == 1
    rows = []
    with torch.inference_mode():
        t_conv = time_layer_ms(lambda: F.conv2d(x, w, padding=1), graph)
        err_conv = _rel_err(F.conv2d(x, w, padding=1), F.conv2d(x.double(), w.double(), padding=1))
        oracle = reference.winograd_conv2d_q(x.double(), q.to(dev), None, (1, 1), m, 3)
        choice = select.sparse_path(_triton_path.SparseCall(x, packed, packed.values_as(dt), None, (1, 1)))
        n_q = (m + 2) ** 2
        q_pck = q.permute(2, 3, 1, 0).reshape(n_q, c, c).to(dev, dt).contiguous()
        runs = {
            "sparse (chosen)": lambda: sparse_winograd_conv2d(x, packed, None, 1, backend="triton"),
            "one-kernel": lambda: _triton_path.sparse_winograd_conv2d(x, packed, None, (1, 1), path="one-kernel"),
            "two-kernel": lambda: _triton_path.sparse_winograd_conv2d(x, packed, None, (1, 1), path="two-kernel"),
            "dense winograd": lambda: winograd_conv2d_pck(x, q_pck, None, 1, m, 3, backend="triton"),
        }
        for name, fn in runs.items():
            y = fn()  # compile, tune, warm caches
            t = time_layer_ms(fn, graph)
            rows.append({
                "C": c, "K": c, "H": h, "W": h, "N": n, "tile": f"F({m},3)",
                "block": f"{case.block[0]}x{case.block[1]}", "sparsity": case.sparsity, "kept_slots": packed.density,
                "dtype": "float16", "layout": "channels_last",
                "path": name, "chosen_path": choice.path, "chosen_why": choice.reason,
                "conv2d_ms": t_conv, "winograd_ms": t, "speedup_vs_conv2d": t_conv / t,
                "rel_err": _rel_err(y, oracle), "conv2d_rel_err": err_conv, "cuda_graph": graph,
                "cudnn_benchmark": torch.backends.cudnn.benchmark, **env,
            })
    return rows


def run_all(cases: list[Case], env: dict, budget_s: float | None = None) -> tuple[list[dict], list[str]]:
    """Run ``cases`` in order until ``budget_s`` seconds have passed; returns (rows, skipped labels)."""
    rows: list[dict] = []
    t0 = time.perf_counter()
    skipped = []
    for i, case in enumerate(cases):
        if budget_s is not None and time.perf_counter() - t0 > budget_s:
            skipped = [c.label() for c in cases[i:]]
            break
        rows += run_case(case, env)
        done = ", ".join(f"{r['path']} {r['speedup_vs_conv2d']:.2f}x" for r in rows[-4:])
        print(f"[{time.perf_counter() - t0:6.0f} s] {case.label()}: {done}", file=sys.stderr, flush=True)
    return rows, skipped


def describe(cases: list[Case]) -> str:
    return "\n".join(f"  {c.label()}" for c in cases)


def environment_rows() -> dict:
    """Device, driver and versions for every row (``tritonwino.env.environment`` plus the driver)."""
    from ..env import environment

    env = environment("cuda")
    env["driver"] = torch.version.cuda or "?"
    env["tf32_cudnn"] = bool(torch.backends.cudnn.allow_tf32)
    env["autotune"] = os.environ.get("TRITONWINO_AUTOTUNE", "1") != "0"
    return env
