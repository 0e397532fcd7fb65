"""Layer benchmark: ResNet-18's 3x3 layer shapes, F.conv2d vs dense vs sparse Winograd.

Shapes C=K in {64,128,256,512} at H=W in {56,28,14,7}; Winograd-domain sparsity {0,50,75,90}% at
granularities (1,1), (16,1), (32,1), (16,16); batch {1,8} on CPU ({1,8,32} on a GPU). Each row:
times of F.conv2d, dense Winograd and sparse Winograd for every available path, speedup, packed
bytes vs dense spatial weight bytes, and the environment (device, versions, threads, TF32, timer).
On CPU only the torch paths are timed (the Triton interpreter is a correctness tool, not a
runtime); on a GPU the Triton kernels are timed too.

Examples:
  tritonwino bench --out results/ --quick            (two shapes, batch 1: about a minute)
  tritonwino bench --out results/ --shapes 512:7 --sparsities 0.75 0.9 --blocks 16x1 32x1 --plot
bench/sparse_layers.py runs the full sweep into bench/results/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..experiments.layer_bench import BLOCKS, SHAPES, SPARSITIES, report, sweep
from ..experiments.rows import write_rows
from .args import parse_block, parse_shape


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


def run(args: argparse.Namespace) -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batches = [1] if args.quick else (args.batches or ([1, 8, 32] if device.type == "cuda" else [1, 8]))
    shapes = ([tuple(parse_shape(s, "--shapes", (2,), "64:56 (C:H)")) for s in args.shapes] if args.shapes
              else (SHAPES[2:] if args.quick else SHAPES))
    blocks = [parse_block(b, "--blocks") for b in args.blocks]
    rows = sweep(shapes, batches, args.tiles, args.sparsities, blocks, device)
    stem = args.name or f"sparse_layers_{device.type}"
    csv_path, _ = write_rows(rows, args.out, stem)
    (Path(args.out) / f"{stem}.md").write_text(report(rows))
    print(f"wrote {csv_path}")
    if args.plot:
        import pandas as pd

        from ..experiments.plotting import plot_memory, plot_speedup

        for b in sorted({r["N"] for r in rows}):
            print(f"wrote {plot_speedup(pd.DataFrame(rows), Path(args.out) / f'{stem}_speedup_N{b}.png', b)}")
        print(f"wrote {plot_memory(pd.DataFrame(rows), Path(args.out) / f'{stem}_memory.png')}")
    return 0
