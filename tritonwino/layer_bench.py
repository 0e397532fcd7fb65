"""Layer benchmark: ResNet-18's 3×3 layer shapes, conv2d vs dense vs sparse Winograd.

Shapes C=K in {64,128,256,512} at H=W in {56,28,14,7}; Winograd-domain sparsity {0,50,75,90}% at
granularities (1,1), (16,1), (32,1), (16,16); batch {1,8} on CPU ({1,8,32} on a GPU). Each row:
times of F.conv2d, dense Winograd and sparse Winograd for every available path, speedup, packed
bytes vs dense spatial weight bytes, and the environment (device, versions, threads, TF32, timer).
On CPU only the torch paths are timed (the Triton interpreter is a correctness tool, not a
runtime); on a GPU the Triton kernels are timed too.

CLI: ``tritonwino bench --out DIR`` (``--quick`` for a smoke run); ``bench/sparse_layers.py`` runs the
full sweep into bench/results/.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import reference
from .benchmark import environment, markdown_table, time_ms, write_rows
from .sparse_conv import pack_winograd_weight, sparse_winograd_conv2d, winograd_conv2d

SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7)]
SPARSITIES = [0.0, 0.5, 0.75, 0.9]
BLOCKS = [(1, 1), (16, 1), (32, 1), (16, 16)]


def pruned_q(k: int, c: int, m: int, sparsity: float, block, gen) -> torch.Tensor:
    """A Winograd-domain weight with ``sparsity`` exact zeros, pruned at the block granularity."""
    q = reference.winograd_weight(torch.randn(k, c, 3, 3, generator=gen) / math.sqrt(9 * c), m)
    n = m + 2
    bk, bc = block
    keep = torch.rand(math.ceil(k / bk), math.ceil(c / bc), n, n, generator=gen) >= sparsity
    keep = keep.repeat_interleave(bk, 0)[:k].repeat_interleave(bc, 1)[:, :c]
    return (q * keep).float()


def sparse_row(c: int, k: int, h: int, nb: int, m: int, block, sparsity: float, q: torch.Tensor, packed,
               packed16, path: str, conv2d: dict, sparse: dict, env: dict, **extra) -> dict:
    """One result row in the schema ``plot_speedup`` / ``plot_memory`` read (shared with the demo)."""
    return {
        "C": c, "K": k, "H": h, "W": h, "N": nb, "tile": f"F({m},3)", "block": f"{block[0]}x{block[1]}",
        "target_sparsity": sparsity, "winograd_sparsity": float((q == 0).float().mean()),
        "kept_slots": packed.density, "path": path, **extra,
        "conv2d_ms": conv2d["ms"], "sparse_ms": sparse["ms"],
        "sparse_ms_p20": sparse["ms_p20"], "sparse_ms_p80": sparse["ms_p80"],
        "speedup_vs_conv2d": conv2d["ms"] / sparse["ms"],
        "packed_bytes_fp32": packed.nbytes, "packed_bytes_fp16": packed16.nbytes,
        "dense_spatial_bytes_fp32": k * c * 9 * 4, **env,
    }


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--out", required=True, help="folder for the CSV/JSON/markdown results")
    ap.add_argument("--name", default=None, help="result file stem (default sparse_layers_<device type>)")
    ap.add_argument("--tiles", type=int, nargs="+", default=[2, 4], help="output tile sizes m of F(m,3)")
    ap.add_argument("--batches", type=int, nargs="+", default=None,
                    help="batch sizes (default 1 8 on CPU, 1 8 32 on a GPU)")
    ap.add_argument("--quick", action="store_true", help="two shapes, batch 1: a smoke run of about a minute")
    ap.add_argument("--shapes", nargs="+", default=None, metavar="C:H",
                    help="layer shapes C=K channels and H=W size, e.g. 64:56 512:7 (default: ResNet-18's four)")
    ap.add_argument("--sparsities", type=float, nargs="+", default=SPARSITIES, help="Winograd-domain sparsities")
    ap.add_argument("--blocks", nargs="+", default=[f"{a}x{b}" for a, b in BLOCKS], metavar="BKxBC",
                    help="granularities, e.g. 1x1 16x1 32x1 16x16")
    ap.add_argument("--plot", action="store_true", help="also write the speedup and memory plots")


def _parse_shapes(items: list[str]) -> list[tuple[int, int]]:
    out = []
    for it in items:
        try:
            c, h = (int(v) for v in it.split(":"))
        except ValueError as e:
            raise SystemExit(f"--shapes: expected C:H such as 64:56, got {it!r}") from e
        out.append((c, h))
    return out


def _parse_blocks(items: list[str]) -> list[tuple[int, int]]:
    out = []
    for it in items:
        try:
            bk, bc = (int(v) for v in it.lower().split("x"))
        except ValueError as e:
            raise SystemExit(f"--blocks: expected BKxBC such as 16x1, got {it!r}") from e
        out.append((bk, bc))
    return out


def run(args: argparse.Namespace) -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env = environment(device)
    batches = args.batches or ([1, 8, 32] if device.type == "cuda" else [1, 8])
    shapes = _parse_shapes(args.shapes) if args.shapes else (SHAPES[2:] if args.quick else SHAPES)
    blocks = _parse_blocks(args.blocks)
    if args.quick:
        batches = [1]
    paths = ["torch"] + (["triton"] if device.type == "cuda" else [])
    gen = torch.Generator().manual_seed(0)
    rows = []
    jobs = [(c, h, nb, m) for c, h in shapes for nb in batches for m in args.tiles]
    for c, h, nb, m in tqdm(jobs, desc="layers", file=sys.stderr):
        x = torch.randn(nb, c, h, h, generator=gen).to(device)
        w = (torch.randn(c, c, 3, 3, generator=gen) / math.sqrt(9 * c)).to(device)
        base = time_ms(lambda x=x, w=w: F.conv2d(x, w, padding=1), device)
        # Dense Winograd with its weight transformed once, as a deployed layer holds it.
        q_pck = reference.winograd_weight(w, m).permute(2, 3, 0, 1).reshape((m + 2) ** 2, c, c).float()
        dense = {"torch": time_ms(lambda x=x, q=q_pck, m=m: reference.winograd_conv2d_pck(x, q, None, (1, 1), m, 3),
                                  device)}
        if "triton" in paths:
            dense["triton"] = time_ms(lambda x=x, w=w, m=m: winograd_conv2d(x, w, None, 1, m, backend="triton"),
                                      device)
        for sparsity in args.sparsities:
            for block in blocks:
                q = pruned_q(c, c, m, sparsity, block, gen)
                packed = pack_winograd_weight(q, block).to(device)
                packed16 = pack_winograd_weight(q, block, dtype=torch.float16)
                for p in paths:
                    sp = time_ms(lambda p=p, x=x, pk=packed: sparse_winograd_conv2d(x, pk, None, 1, backend=p), device)
                    rows.append(sparse_row(
                        c, c, h, nb, m, block, sparsity, q, packed, packed16, p, base, sp, env,
                        dtype="float32", layout="NCHW", dense_winograd_ms=dense[p]["ms"],
                        speedup_vs_dense_winograd=dense[p]["ms"] / sp["ms"]))
    stem = args.name or f"sparse_layers_{device.type}"
    csv_path, _ = write_rows(rows, args.out, stem)
    md = [f"# Sparse Winograd layers ({env['device']}, {env['timer']}, {env['threads']} threads)\n",
          f"torch {env['torch']}, triton {env['triton']}, {env['timestamp']}. Times in ms (median).\n",
          markdown_table(rows, ["C", "H", "N", "tile", "block", "target_sparsity", "kept_slots", "path",
                                "conv2d_ms", "dense_winograd_ms", "sparse_ms", "speedup_vs_conv2d"])]
    (Path(args.out) / f"{stem}.md").write_text("\n".join(md))
    print(f"wrote {csv_path}")
    if args.plot:
        from .plotting import plot_memory, plot_speedup

        for b in sorted({r["N"] for r in rows}):
            print(f"wrote {plot_speedup(pd.DataFrame(rows), Path(args.out) / f'{stem}_speedup_N{b}.png', b)}")
        print(f"wrote {plot_memory(pd.DataFrame(rows), Path(args.out) / f'{stem}_memory.png')}")
    return 0
