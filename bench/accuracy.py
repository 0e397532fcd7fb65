"""Winograd accuracy as a ratio to a direct convolution's error, per tile, dtype, point set, path and
summation order.

The measure (tritonwino.points): ``ratio`` = mean|y − y_exact| of the Winograd convolution over
mean|y − y_exact| of ``F.conv2d`` run in the same dtype on the same rounded inputs. Data: fp32
uniform[−1, 1] inputs and weights, rounded to the dtype for both convolutions; y_exact = float64
``F.conv2d`` of the fp32 data, so for fp16/bf16 both errors include the input rounding.
``ratio_arith`` takes the reference from the rounded inputs instead (the arithmetic error alone;
a stricter ratio for half types, the same as ``ratio`` in fp32).

Rows: F(2,3), F(4,3), F(6,3), F(8,3) (fp32 only: tiles with n > 8 are refused in half types) ×
fp32 / fp16 / bf16 × ``points`` standard / accurate × path:
- ``torch``: the pure-torch path (kron-form transforms) with its channel-blocked accumulation
  (``channel_block`` 32, ``tritonwino.reference.CHANNEL_BLOCK``) and without it (``none``: one
  sequential sum over C, what the torch path did before);
- ``triton``: the Triton kernels (separable generated transforms; under the interpreter on a CPU,
  exact IEEE fp32 arithmetic) for both summation orders in the transforms (``natural`` and
  ``magnitude``: smallest |coefficient| first);
- ``split_operands=True`` on both paths (``tritonwino.functional.winograd_conv2d``): for fp16/bf16,
  V and Q as half hi + lo pairs (three products); for fp32, the multiply, the channel sums and the
  output transform in float64;
both on the reference layer (N, C, K, H, W) = (1, 64, 64, 24, 24), padding 1, --trials layers.
Targets (issue 14, accurate points): F(4,3) ≤ 3.0× fp32 and ≤ 4.0× fp16; F(6,3) ≤ 10× in both.

Writes bench/results/accuracy.{csv,json,md,png} (or --out DIR).

Run: python bench/accuracy.py [--out DIR] [--trials N] [--no-triton]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if not __import__("torch").cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

from tritonwino import _triton_path, reference  # noqa: E402
from tritonwino.env import environment  # noqa: E402
from tritonwino.experiments.rows import write_rows  # noqa: E402
from tritonwino.points import DEFAULT_SHAPE, error_ratio  # noqa: E402
from tritonwino.tables import markdown_table  # noqa: E402
from tritonwino.transforms import normalize_points  # noqa: E402

TILES = (2, 4, 6, 8)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TARGETS = {(4, "float32"): 3.0, (4, "float16"): 4.0, (6, "float32"): 10.0, (6, "float16"): 10.0}
SEED = 0


def usable(m: int, dtype: str) -> bool:
    return dtype == "float32" or m + 2 <= 8  # tritonwino._checks.check_tile_dtype


def measure_all(trials: int, triton: bool) -> list[dict]:
    rows = []
    block = reference.CHANNEL_BLOCK
    runs = [("torch", DEFAULT_SHAPE, "natural", block, False), ("torch", DEFAULT_SHAPE, "natural", None, False),
            ("torch", DEFAULT_SHAPE, "natural", block, True)]
    if triton:
        runs += [("triton", DEFAULT_SHAPE, "natural", None, False), ("triton", DEFAULT_SHAPE, "magnitude", None, False),
                 ("triton", DEFAULT_SHAPE, "natural", None, True)]
    for m in TILES:
        for dname, dtype in DTYPES.items():
            if not usable(m, dname):
                continue
            for pname in ("standard", "accurate"):
                pts = normalize_points(m, 3, pname)
                same = pname == "accurate" and pts == normalize_points(m, 3, "standard")
                for path, shape, order, cblock, split in runs:
                    backend = "triton" if path == "triton" else "torch"
                    _triton_path.SUMMATION_ORDER = order
                    reference.CHANNEL_BLOCK = cblock or 1 << 30
                    try:
                        res = error_ratio(m, 3, pts, dtype, backend=backend, seed=SEED, shape=shape, trials=trials,
                                          split_operands=split)
                    finally:
                        _triton_path.SUMMATION_ORDER = "natural"
                        reference.CHANNEL_BLOCK = block
                    target = TARGETS.get((m, dname)) if pname == "accurate" else None
                    rows.append({
                        "tile": f"F({m},3)", "points": pname, "point_values": " ".join(map(str, pts)),
                        "accurate_is_standard": same, "dtype": dname, "path": path, "split_operands": split,
                        "order": order if backend == "triton" else "",
                        "channel_block": (cblock or "none") if backend == "torch" else "",
                        "ratio": round(res["ratio"], 4), "ratio_arith": round(res["ratio_arith"], 4),
                        "winograd_mae": res["winograd_mae"], "direct_mae": res["direct_mae"],
                        "target": target if target is not None else "",
                        "meets_target": "" if target is None else bool(res["ratio"] <= target),
                        "shape_NCKHW": "x".join(map(str, shape)), "trials": trials, "seed": SEED,
                    })
                    r = rows[-1]
                    print(f"{r['tile']} {pname:8s} {dname:8s} {path:7s} {r['order']:9s} {r['channel_block']!s:5s} "
                          f"{'split' if split else '':5s} "
                          f"ratio {r['ratio']:8.3f}  arith {r['ratio_arith']:8.3f}", file=sys.stderr, flush=True)
    return rows


def summary_table(rows: list[dict]) -> list[str]:
    """Ratio per tile × dtype × points × path (torch: blocked channel sums, then one sequential sum;
    triton: natural order)."""
    cols = [("torch", "32", False), ("torch", "none", False), ("triton", "", False), ("torch", "32", True),
            ("triton", "", True)]
    cols = [c for c in cols if any(r["path"] == c[0] for r in rows)]
    names = {("torch", "32", False): "torch", ("torch", "none", False): "torch, one sum over C",
             ("triton", "", False): "triton", ("torch", "32", True): "torch, split operands",
             ("triton", "", True): "triton, split operands"}
    out = ["| tile | dtype | points | " + " | ".join(names[c] for c in cols) + " | target |",
           "|---|---|---|" + "---|" * len(cols) + "---|"]
    for m in TILES:
        for dname in DTYPES:
            for pname in ("standard", "accurate"):
                sel = {(r["path"], str(r["channel_block"]), r["split_operands"]): r for r in rows
                       if r["tile"] == f"F({m},3)" and r["dtype"] == dname and r["points"] == pname
                       and r["order"] in ("", "natural")}
                if not sel:
                    continue
                cells = [f"{sel[c]['ratio']:.2f}×" if c in sel else "-" for c in cols]
                tgt = TARGETS.get((m, dname)) if pname == "accurate" else None
                label = pname + (" (= standard)" if any(r["accurate_is_standard"] for r in sel.values()) else "")
                cells.append(f"≤ {tgt:g}×" if tgt else "")
                out.append(f"| F({m},3) | {dname} | {label} | " + " | ".join(cells) + " |")
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharey=True)
    for ax, dname in zip(axes, DTYPES, strict=True):
        labels, series = [], {}
        for m in TILES:
            if not usable(m, dname):
                continue
            labels.append(f"F({m},3)")
            for pname, split in (("standard", False), ("accurate", False), ("accurate", True)):
                for p in ("torch", "triton"):
                    r = [x for x in rows if x["tile"] == f"F({m},3)" and x["dtype"] == dname and x["points"] == pname
                         and x["path"] == p and x["order"] in ("", "natural") and x["channel_block"] != "none"
                         and x["split_operands"] == split]
                    name = f"{pname}{' split' if split else ''} / {p}"
                    if r or not split:
                        series.setdefault(name, []).append(r[0]["ratio"] if r else float("nan"))
        width = 0.8 / max(1, len(series))
        for i, (name, vals) in enumerate(series.items()):
            ax.bar([j + i * width for j in range(len(vals))], vals, width, label=name)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels)
        ax.set_yscale("log")
        ax.set_title(dname)
        for (m, dt), t in TARGETS.items():
            if dt == dname and f"F({m},3)" in labels:
                j = labels.index(f"F({m},3)")
                ax.hlines(t, j - 0.1, j + 0.9, colors="k", linestyles="dashed")
        ax.axhline(1.0, color="grey", lw=0.5)
    axes[0].set_ylabel("mean abs error / direct conv's (log)")
    axes[0].legend(fontsize=7)
    fig.suptitle("Winograd error as a multiple of a direct convolution's (dashed: issue-14 targets, accurate points)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--no-triton", action="store_true", help="only the torch path")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    env = environment(device)
    rows = [{**r, **env, "triton_mode": ("interpreter" if env["triton_interpret"] else "gpu")
             if r["path"] == "triton" else ""} for r in measure_all(args.trials, not args.no_triton)]
    out = Path(args.out)
    csv_path, _ = write_rows(rows, out, "accuracy")
    md = ["# Winograd accuracy: error as a multiple of a direct convolution's\n",
          f"Device: {env['device']}; torch {env['torch']}, triton {env['triton']} "
          f"({'interpreter' if env['triton_interpret'] else 'GPU'}), tritonwino {env['tritonwino']}; "
          f"{env['timestamp']}. Script: `bench/accuracy.py` (trials {args.trials}, seed {SEED}).\n",
          "ratio = mean|y − y_exact| of the Winograd path / mean|y − y_exact| of F.conv2d in the same dtype on "
          "the same rounded inputs; fp32 uniform[−1, 1] data, y_exact = float64 conv of the fp32 data. "
          "ratio_arith: the reference from the rounded inputs (arithmetic error only). Layer "
          f"{DEFAULT_SHAPE} (N, C, K, H, W), 3×3, padding 1.\n",
          "## Summary\n", *summary_table(rows), "",
          "## All rows\n",
          markdown_table(rows, ["tile", "points", "point_values", "dtype", "path", "split_operands", "order",
                                "channel_block", "ratio",
                                "ratio_arith",
                                "target", "meets_target", "shape_NCKHW"])]
    (out / "accuracy.md").write_text("\n".join(md) + "\n")
    plot(rows, out / "accuracy.png")
    print(f"wrote {csv_path}, accuracy.json, accuracy.md, accuracy.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
