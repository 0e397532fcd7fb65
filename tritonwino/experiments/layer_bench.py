"""The layer sweep behind ``tritonwino bench``: ResNet-18's 3×3 layer shapes, F.conv2d vs dense vs
sparse Winograd over sparsities and granularities.

Shapes C=K in {64,128,256,512} at H=W in {56,28,14,7}; Winograd-domain sparsity {0,50,75,90}% at
granularities (1,1), (16,1), (32,1), (16,16). Paths: on CPU the fused C++ kernels (``"cpu"``, where
they build) and the pure-torch path (``"torch"``); on a GPU the Triton kernels and the torch path
(the Triton interpreter is a correctness tool, not a runtime).

Timing: for one (shape, batch) every candidate — F.conv2d, the dense Winograd of each (tile, path)
and the sparse Winograd of each (tile, sparsity, granularity, path) — is timed *interleaved* (one call of each
per round, ``rounds`` rounds; ``tritonwino.tuning.time_interleaved``), so load from other processes
hits all of them alike and every row's speedup comes from one run. Rows carry medians, the p20/p80
spread and the minimum of both conv2d and the sparse path.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .. import reference
from ..env import environment
from ..functional import resolve_backend, sparse_winograd_conv2d, winograd_conv2d_pck
from ..packing import pack_winograd_weight
from ..tables import markdown_table
from ..testing import random_pruned_q
from ..tuning import time_interleaved
from .rows import sparse_row

__all__ = ["BLOCKS", "SHAPES", "SPARSITIES", "best_tile_summary", "default_paths", "report", "sweep"]

SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7)]
SPARSITIES = [0.0, 0.5, 0.75, 0.9]
BLOCKS = [(1, 1), (16, 1), (32, 1), (16, 16)]


def default_paths(device: torch.device) -> list[str]:
    """The Winograd backends worth timing on ``device``."""
    if device.type == "cuda":
        return ["torch", "triton"]
    # "auto" picks the C++ kernels for a float32 CPU tensor wherever they build
    return (["cpu"] if resolve_backend("auto", torch.empty(1, 1, 1, 1)) == "cpu" else []) + ["torch"]


def sweep(shapes: Sequence[tuple[int, int]], batches: Sequence[int], tiles: Sequence[int],
          sparsities: Sequence[float], blocks: Sequence[tuple[int, int]], device: torch.device,
          seed: int = 0, paths: Sequence[str] | None = None, rounds: int = 15) -> list[dict]:
    """Time every (shape, batch, tile, sparsity, block, path) and return one row each (``sparse_row``)."""
    env = environment(device)
    paths = list(paths) if paths is not None else default_paths(device)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    jobs = [(c, h, nb) for c, h in shapes for nb in batches]
    for c, h, nb in tqdm(jobs, desc="layers", file=sys.stderr):
        x = torch.randn(nb, c, h, h, generator=gen).to(device)
        w = (torch.randn(c, c, 3, 3, generator=gen) / (9 * c) ** 0.5).to(device)
        cands = {"conv2d": lambda x=x, w=w: F.conv2d(x, w, padding=1)}
        configs = []
        for m in tiles:
            # Dense Winograd with its weight transformed once (P, C, K), as a deployed layer holds it.
            q_pck = reference.winograd_weight(w, m).permute(2, 3, 1, 0).reshape((m + 2) ** 2, c, c).float()
            q_pck = q_pck.contiguous()
            for p in paths:
                cands[f"dense/{m}/{p}"] = (lambda x=x, q=q_pck, m=m, p=p:
                                           winograd_conv2d_pck(x, q, None, 1, m, 3, backend=p))
            for sparsity in sparsities:
                for block in blocks:
                    q = random_pruned_q(c, c, m, 3, sparsity, block, generator=gen).float()
                    packed = pack_winograd_weight(q, block).to(device)
                    packed16 = pack_winograd_weight(q, block, dtype=torch.float16)
                    configs.append((m, sparsity, block, q, packed, packed16))
                    for p in paths:
                        cands[f"sparse/{m}/{p}/{sparsity}/{block}"] = (
                            lambda p=p, x=x, pk=packed: sparse_winograd_conv2d(x, pk, None, 1, backend=p))
        with torch.no_grad():
            for fn in cands.values():  # builds / first-use work outside the timed rounds
                fn()
        t = time_interleaved(cands, device, rounds=rounds, warmup=1)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        base = t["conv2d"]
        for m, sparsity, block, q, packed, packed16 in configs:
            for p in paths:
                sp, dense = t[f"sparse/{m}/{p}/{sparsity}/{block}"], t[f"dense/{m}/{p}"]
                rows.append(sparse_row(
                    c, c, h, nb, m, block, sparsity, q, packed, packed16, p, base, sp, env,
                    dtype="float32", layout="NCHW", dense_winograd_ms=dense["ms"],
                    speedup_vs_dense_winograd=dense["ms"] / sp["ms"],
                    conv2d_ms_p20=base["ms_p20"], conv2d_ms_p80=base["ms_p80"], conv2d_ms_min=base["ms_min"],
                    sparse_ms_min=sp["ms_min"], speedup_of_minima=base["ms_min"] / sp["ms_min"],
                    rounds=sp["reps"], timing="interleaved", load_avg_1m=load))
    return rows


def best_tile_summary(rows: list[dict], path: str) -> list[dict]:
    """Per (C, H, N, sparsity, block): the faster of the tiles for ``path``, with its speedup and spread."""
    best: dict[tuple, dict] = {}
    for r in rows:
        if r["path"] != path:
            continue
        key = (r["C"], r["H"], r["N"], r["target_sparsity"], r["block"])
        if key not in best or r["sparse_ms"] < best[key]["sparse_ms"]:
            best[key] = r
    out = []
    for key in sorted(best):
        r = best[key]
        out.append({"C": r["C"], "H": r["H"], "N": r["N"], "target_sparsity": r["target_sparsity"],
                    "block": r["block"], "best_tile": r["tile"], "conv2d_ms": r["conv2d_ms"],
                    "sparse_ms": r["sparse_ms"],
                    "sparse_p20_p80": f"{r['sparse_ms_p20']:.3g}-{r['sparse_ms_p80']:.3g}",
                    "conv2d_p20_p80": f"{r.get('conv2d_ms_p20', float('nan')):.3g}-"
                                      f"{r.get('conv2d_ms_p80', float('nan')):.3g}",
                    "speedup_vs_conv2d": r["speedup_vs_conv2d"]})
    return out


def report(rows: list[dict]) -> str:
    """The markdown report of a sweep."""
    env = rows[0] if rows else environment("cpu")
    loads = [r["load_avg_1m"] for r in rows if r.get("load_avg_1m") is not None]
    load = f" 1-minute load average {min(loads):.2f}-{max(loads):.2f} ({env['cpu_count']} cores)." if loads else ""
    parts = [
        f"# Sparse Winograd layers ({env['device']}, {env['timer']}, {env['threads']} threads)\n",
        f"torch {env['torch']}, triton {env['triton']}, {env['timestamp']}. Times in ms: medians of "
        f"{env.get('rounds', '?')} interleaved rounds (conv2d and every path in turn), spread p20-p80.{load}\n",
    ]
    for path in sorted({r["path"] for r in rows}):
        parts += [f"## Best of the tiles, path `{path}`\n",
                  markdown_table(best_tile_summary(rows, path),
                                 ["C", "H", "N", "target_sparsity", "block", "best_tile", "conv2d_ms",
                                  "conv2d_p20_p80", "sparse_ms", "sparse_p20_p80", "speedup_vs_conv2d"]) + "\n"]
    parts += ["## All rows\n",
              markdown_table(rows, ["C", "H", "N", "tile", "block", "target_sparsity", "kept_slots", "path",
                                    "conv2d_ms", "dense_winograd_ms", "sparse_ms", "speedup_vs_conv2d"]) + "\n"]
    return "\n".join(parts)
