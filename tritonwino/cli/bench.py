"""Layer benchmark: ResNet-18's 3x3 layer shapes, F.conv2d vs dense vs sparse Winograd.

Shapes C=K in {64,128,256,512} at H=W in {56,28,14,7}; Winograd-domain sparsity {0,50,75,90}% at
granularities (1,1), (16,1), (32,1), (16,16); batch {1,8} on CPU ({1,8,32} on a GPU). Each row:
times of F.conv2d, dense Winograd and sparse Winograd for every path, speedup, packed bytes vs dense
spatial weight bytes, and the environment (device, versions, threads, TF32, timer). Paths: on CPU
the fused C++ kernels ("cpu") and the pure-torch path ("torch"); on a GPU the Triton kernels too
(the Triton interpreter is a correctness tool, not a runtime). Every candidate of one (shape, batch,
tile) is timed interleaved with F.conv2d, so each speedup comes from one run.

Examples:
  tritonwino bench --out results/ --quick            (two shapes, batch 1: about a minute)
  tritonwino bench --out results/ --shapes 512:7 --sparsities 0.75 0.9 --blocks 16x1 32x1 --plot
  tritonwino bench --out results/ --threads 2 --paths cpu --blocks 16x1 32x1
bench/sparse_layers.py runs the full sweep into bench/results/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..experiments.layer_bench import BLOCKS, SHAPES, SPARSITIES, default_paths, report, sweep
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
    ap.add_argument("--paths", nargs="+", default=None, choices=["cpu", "torch", "triton"],
                    help="Winograd backends to time (default: cpu and torch on CPU, torch and triton on a GPU)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for every candidate (default: torch's default); stated in every row")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds per candidate (default 15)")
    ap.add_argument("--plot", action="store_true", help="also write the speedup and memory plots")


def run(args: argparse.Namespace) -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batches = [1] if args.quick else (args.batches or ([1, 8, 32] if device.type == "cuda" else [1, 8]))
    shapes = ([tuple(parse_shape(s, "--shapes", (2,), "64:56 (C:H)")) for s in args.shapes] if args.shapes
              else (SHAPES[2:] if args.quick else SHAPES))
    blocks = [parse_block(b, "--blocks") for b in args.blocks]
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    paths = args.paths or default_paths(device)
    if "cpu" in paths and device.type == "cpu":
        from ..functional import resolve_backend

        resolve_backend("cpu", torch.empty(1, 1, 1, 1))  # a clear error now if the C++ kernels cannot build
    rows = sweep(shapes, batches, args.tiles, args.sparsities, blocks, device, paths=paths, rounds=args.rounds)
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
