"""Rebuild plots from saved result rows (never re-runs anything).

Accepts the files `tritonwino bench` (sparse_layers_*.csv/json) and the pruning benchmarks
(rows with an `accuracy` column) write, and writes PNGs into --out:
  <stem>_speedup_N<batch>.png  speedup over F.conv2d vs Winograd sparsity, per layer shape
  <stem>_memory.png            packed fp16 bytes / dense spatial bytes vs sparsity
  <stem>_accuracy.png          test accuracy vs Winograd sparsity per method

Example: tritonwino plot bench/results/sparse_layers_cpu.csv --out plots/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..experiments.plotting import load_rows, plot_accuracy, plot_memory, plot_speedup


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", help="result files (.csv or .json)")
    p.add_argument("--out", required=True, help="folder for the PNGs")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    wrote = []
    for res in args.results:
        try:
            df = load_rows(res)
        except (OSError, ValueError) as e:  # missing file, bad JSON/CSV: one clear line, no traceback
            raise SystemExit(f"tritonwino plot: cannot read {res}: {e}") from None
        stem = Path(res).stem
        if df.empty:
            raise SystemExit(f"{res}: no rows")
        if "top1" in df.columns and "accuracy" not in df.columns:  # `tritonwino prune` rows: top-1 in %
            df = df.assign(accuracy=df["top1"] / 100.0)
            if {"method", "granularity"} <= set(df.columns):
                df = df.assign(method=df["method"] + " " + df["granularity"].astype(str))
        if {"sparse_ms", "conv2d_ms", "winograd_sparsity"} <= set(df.columns):
            for b in sorted(df["N"].unique()):
                wrote.append(plot_speedup(df, out / f"{stem}_speedup_N{int(b)}.png", int(b)))
            wrote.append(plot_memory(df, out / f"{stem}_memory.png"))
        elif {"accuracy", "winograd_sparsity"} <= set(df.columns):
            if "method" not in df.columns:
                df = df.assign(method="model")
            wrote.append(plot_accuracy(df, out / f"{stem}_accuracy.png"))
        else:
            raise SystemExit(f"{res}: not a result file this command knows (columns: {', '.join(df.columns)})")
    for w in wrote:
        print(f"wrote {w}")
    return 0
