"""The layer sweep behind ``tritonwino bench``: ResNet-18's 3×3 layer shapes, F.conv2d vs dense vs
sparse Winograd over sparsities and granularities.

Shapes C=K in {64,128,256,512} at H=W in {56,28,14,7}; Winograd-domain sparsity {0,50,75,90}% at
granularities (1,1), (16,1), (32,1), (16,16). On CPU only the torch paths are timed (the Triton
interpreter is a correctness tool, not a runtime); on a GPU the Triton kernels are timed too.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .. import reference
from ..env import environment
from ..functional import sparse_winograd_conv2d, winograd_conv2d
from ..packing import pack_winograd_weight
from ..tables import markdown_table
from ..testing import random_pruned_q
from ..tuning import time_ms
from .rows import sparse_row

__all__ = ["BLOCKS", "SHAPES", "SPARSITIES", "report", "sweep"]

SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7)]
SPARSITIES = [0.0, 0.5, 0.75, 0.9]
BLOCKS = [(1, 1), (16, 1), (32, 1), (16, 16)]


def sweep(shapes: Sequence[tuple[int, int]], batches: Sequence[int], tiles: Sequence[int],
          sparsities: Sequence[float], blocks: Sequence[tuple[int, int]], device: torch.device,
          seed: int = 0) -> list[dict]:
    """Time every (shape, batch, tile, sparsity, block) and return one row per path (``sparse_row``)."""
    env = environment(device)
    paths = ["torch"] + (["triton"] if device.type == "cuda" else [])
    gen = torch.Generator().manual_seed(seed)
    rows = []
    jobs = [(c, h, nb, m) for c, h in shapes for nb in batches for m in tiles]
    for c, h, nb, m in tqdm(jobs, desc="layers", file=sys.stderr):
        x = torch.randn(nb, c, h, h, generator=gen).to(device)
        w = (torch.randn(c, c, 3, 3, generator=gen) / (9 * c) ** 0.5).to(device)
        base = time_ms(lambda x=x, w=w: F.conv2d(x, w, padding=1), device)
        # Dense Winograd with its weight transformed once (P, C, K), as a deployed layer holds it.
        q_pck = reference.winograd_weight(w, m).permute(2, 3, 1, 0).reshape((m + 2) ** 2, c, c).float()
        dense = {"torch": time_ms(lambda x=x, q=q_pck, m=m: reference.winograd_conv2d_pck(x, q, None, (1, 1), m, 3),
                                  device)}
        if "triton" in paths:
            dense["triton"] = time_ms(lambda x=x, w=w, m=m: winograd_conv2d(x, w, None, 1, m, backend="triton"),
                                      device)
        for sparsity in sparsities:
            for block in blocks:
                q = random_pruned_q(c, c, m, 3, sparsity, block, generator=gen).float()
                packed = pack_winograd_weight(q, block).to(device)
                packed16 = pack_winograd_weight(q, block, dtype=torch.float16)
                for p in paths:
                    sp = time_ms(lambda p=p, x=x, pk=packed: sparse_winograd_conv2d(x, pk, None, 1, backend=p), device)
                    rows.append(sparse_row(
                        c, c, h, nb, m, block, sparsity, q, packed, packed16, p, base, sp, env,
                        dtype="float32", layout="NCHW", dense_winograd_ms=dense[p]["ms"],
                        speedup_vs_dense_winograd=dense[p]["ms"] / sp["ms"]))
    return rows


def report(rows: list[dict]) -> str:
    """The markdown report of a sweep."""
    env = rows[0] if rows else environment("cpu")
    return "\n".join([
        f"# Sparse Winograd layers ({env['device']}, {env['timer']}, {env['threads']} threads)\n",
        f"torch {env['torch']}, triton {env['triton']}, {env['timestamp']}. Times in ms (median).\n",
        markdown_table(rows, ["C", "H", "N", "tile", "block", "target_sparsity", "kept_slots", "path",
                              "conv2d_ms", "dense_winograd_ms", "sparse_ms", "speedup_vs_conv2d"]) + "\n"])
