"""Plots rebuilt from saved result rows only (CSV/JSON written by the benchmarks), never by re-running.

* ``plot_speedup``: speedup over F.conv2d versus Winograd-domain sparsity, one panel per layer shape,
  one line per (tile, path, granularity), the 1.0× line, the break-even sparsity marked, p20–p80
  spread as error bars, device and settings in the title.
* ``plot_memory``: packed bytes / dense spatial bytes versus sparsity.
* ``plot_accuracy``: accuracy versus Winograd sparsity per pruning method.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def load_rows(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no results at {path}")
    if path.suffix == ".json":
        return pd.DataFrame(json.loads(path.read_text()))
    if path.suffix == ".csv":
        return pd.read_csv(path)
    raise ValueError(f"{path}: expected a .csv or .json results file")


def _title(df: pd.DataFrame, what: str) -> str:
    first = df.iloc[0]
    bits = [what, str(first.get("device", "?"))]
    if "timer" in df:
        bits.append(f"timer {first['timer']}")
    if "threads" in df and first.get("device_type", "") == "cpu":
        bits.append(f"{first['threads']} threads")
    if "tf32" in df and first.get("device_type", "") == "cuda":
        bits.append(f"TF32 {'on' if first['tf32'] else 'off'}")
    return " | ".join(bits)


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _finish_axes(ax, df: pd.DataFrame, ylabel: str, what: str) -> None:
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(_title(df, what), fontsize=9)


def break_even(xs: np.ndarray, ys: np.ndarray) -> float | None:
    """Smallest sparsity where the (linearly interpolated) speedup reaches 1.0, or None."""
    order = np.argsort(xs)
    xs, ys = xs[order], ys[order]
    if len(xs) and ys[0] >= 1.0:
        return float(xs[0])
    for i in range(1, len(xs)):
        if ys[i - 1] < 1.0 <= ys[i]:
            return float(xs[i - 1] + (1.0 - ys[i - 1]) * (xs[i] - xs[i - 1]) / (ys[i] - ys[i - 1]))
    return None


def plot_speedup(df: pd.DataFrame, out: str | Path, batch: int | None = None) -> Path:
    """One panel per (C, H) layer shape; returns the PNG path."""
    df = df.copy()
    if batch is None:
        batch = int(df["N"].min())
    df = df[df["N"] == batch]
    if "K" not in df.columns:
        df = df.assign(K=df["C"])
    shapes = sorted({(int(c), int(k), int(h)) for c, k, h in zip(df["C"], df["K"], df["H"], strict=True)})
    ncol = min(2, len(shapes))
    nrow = -(-len(shapes) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(max(6.5 * ncol, 9.0), 4.2 * nrow + 0.8), squeeze=False)
    for ax, (c, k, h) in zip(axes.flat, shapes, strict=False):
        sub = df[(df["C"] == c) & (df["K"] == k) & (df["H"] == h)]
        for (tile, path, block), g in sub.groupby(["tile", "path", "block"]):
            g = g.groupby("winograd_sparsity", as_index=False).median(numeric_only=True).sort_values(
                "winograd_sparsity")
            xs = g["winograd_sparsity"].to_numpy()
            ys = (g["conv2d_ms"] / g["sparse_ms"]).to_numpy()
            lo = ys - (g["conv2d_ms"] / g["sparse_ms_p80"]).to_numpy()
            hi = (g["conv2d_ms"] / g["sparse_ms_p20"]).to_numpy() - ys
            line = ax.errorbar(xs * 100, ys, yerr=[np.clip(lo, 0, None), np.clip(hi, 0, None)], marker="o",
                               ms=3, capsize=2, label=f"{tile} {path} {block}")
            be = break_even(xs, ys)
            if be is not None:
                ax.axvline(be * 100, color=line[0].get_color(), ls=":", lw=0.8)
        ax.axhline(1.0, color="k", lw=1)
        ax.set_yscale("log")
        ax.set_title(f"{f'C=K={c}' if c == k else f'C={c}, K={k}'}, {h}x{h}, N={batch}")
        ax.set_xlabel("Winograd-domain sparsity (%)")
        ax.set_ylabel("speedup over F.conv2d")
        ax.grid(alpha=0.3, which="both")
    for ax in list(axes.flat)[len(shapes):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.suptitle(_title(df, "Sparse Winograd speedup (dotted: break-even)"), fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    return _save(fig, out)


def plot_memory(df: pd.DataFrame, out: str | Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    df = df.drop_duplicates(subset=["C", "tile", "block", "target_sparsity"])
    for (tile, block), g in df.groupby(["tile", "block"]):
        g = g.groupby("winograd_sparsity", as_index=False).mean(numeric_only=True).sort_values("winograd_sparsity")
        ax.plot(g["winograd_sparsity"] * 100, g["packed_bytes_fp16"] / (g["dense_spatial_bytes_fp32"] / 2),
                marker="o", ms=3, label=f"{tile} {block} fp16")
    ax.axhline(1.0, color="k", lw=1)
    ax.set_xlabel("Winograd-domain sparsity (%)")
    _finish_axes(ax, df, "packed bytes / dense spatial bytes (fp16)", "Packed weight size")
    fig.tight_layout()
    return _save(fig, out)


def plot_accuracy(df: pd.DataFrame, out: str | Path, x: str = "winograd_sparsity", y: str = "accuracy",
                  by: str = "method") -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, g in df.groupby(by):
        g = g.sort_values(x)
        ax.plot(g[x] * 100, g[y] * 100, marker="o", ms=3, label=str(name))
    ax.set_xlabel("Winograd-domain sparsity of pruned layers (%)")
    _finish_axes(ax, df, "test accuracy (%)", "Accuracy vs Winograd sparsity")
    fig.tight_layout()
    return _save(fig, out)
