"""Where the Winograd error comes from: the torch path rebuilt stage by stage, with one rounding
source at a time removed (that stage computed in float64 instead), on the measure of
``bench/accuracy.py`` (mean |error| over a direct convolution's, same rounded inputs).

Stages of ``reference.winograd_conv2d_pck`` and what "exact" replaces:

* ``V transform``: ``input_transform`` in fp32 (the kron-form conv, n² products summed in fp32) ->
  computed in float64 and rounded to fp32 once;
* ``V operand``: V rounded to the operand dtype (fp16/bf16; in fp32 only a float64 V from an exact
  transform is rounded) -> kept as computed;
* ``Q operand``: Q = G W Gᵀ (float64) rounded to the operand dtype -> kept in float64;
* ``channel sum``: ``winograd_gemm`` in fp32 (C summed in blocks of ``CHANNEL_BLOCK``) -> float64;
* ``output transform``: ``output_transform`` in fp32 -> float64, rounded to fp32 once.

The row with nothing exact is the torch path itself (its ratio must equal ``bench/accuracy.py``'s
torch row; the script checks). ``V and Q operands`` exact together is what splitting both operands
into fp16 hi + lo parts (3 MMAs) could at best reach.

Writes bench/results/accuracy_budget.{csv,json,md} (or --out DIR).
Run: python bench/accuracy_budget.py [--out DIR] [--trials N]   (about a minute on one thread)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from tritonwino import reference
from tritonwino.env import environment
from tritonwino.experiments.rows import write_rows
from tritonwino.points import DEFAULT_SHAPE, _data, error_ratio
from tritonwino.tables import markdown_table
from tritonwino.transforms import normalize_points

CASES = [(4, "accurate", torch.float32), (4, "accurate", torch.float16),
         (6, "standard", torch.float32), (6, "standard", torch.float16)]
STAGES = ("V transform", "V operand", "Q operand", "channel sum", "output transform")
VARIANTS = [(), *[(s,) for s in STAGES], ("V operand", "Q operand"), STAGES]


def winograd(x: torch.Tensor, w: torch.Tensor, m: int, pts: tuple, exact: tuple[str, ...]) -> torch.Tensor:
    """The torch path's F(m,3) convolution (padding 1) of the rounded x, w, with the ``exact`` stages
    in float64; the result in x's dtype."""
    dt, f32, f64 = x.dtype, torch.float32, torch.float64
    v = reference.input_transform(x.to(f64 if "V transform" in exact else f32), m, 3, (1, 1), pts)
    if "V operand" not in exact:
        v = v.to(dt)  # fp32: rounds a float64 V once; fp16/bf16: the GEMM operand
    q = reference.winograd_weight(w, m, pts)  # float64
    if "Q operand" not in exact:
        q = q.to(dt)
    n = m + 2
    q_pck = q.permute(2, 3, 1, 0).reshape(n * n, w.shape[1], w.shape[0])
    acc = f64 if "channel sum" in exact else f32
    mm = reference.winograd_gemm(v.to(acc), q_pck.to(acc))
    mm = mm.to(f64 if "output transform" in exact else f32)
    nb, _, h, wd = x.shape
    return reference.output_transform(mm, nb, h, wd, m, 3, pts).to(f32).to(dt)


def ratio(m: int, pts: tuple, dtype: torch.dtype, exact: tuple[str, ...], trials: int) -> float:
    err = direct = 0.0
    for t in range(trials):
        x32, w32 = _data(DEFAULT_SHAPE, 3, t)  # the seeds error_ratio(seed=0) uses
        x, w = x32.to(dtype), w32.to(dtype)
        ref = F.conv2d(x32.double(), w32.double(), padding=1)
        err += float((winograd(x, w, m, pts, exact).double() - ref).abs().mean())
        direct += float((F.conv2d(x, w, padding=1).double() - ref).abs().mean())
    return err / direct


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--trials", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    env = environment("cpu")
    rows = []
    for m, pname, dtype in CASES:
        pts = normalize_points(m, 3, pname)
        dname = str(dtype).removeprefix("torch.")
        path = error_ratio(m, 3, pts, dtype, backend="torch", seed=0, trials=args.trials)["ratio"]
        for exact in VARIANTS:
            if dtype == torch.float32 and exact in (("V operand",), ("V operand", "Q operand")):
                continue  # an fp32 transform's V is not rounded again: the same as the path
            r = ratio(m, pts, dtype, exact, args.trials)
            if not exact and abs(r - path) > 1e-3 * path:
                raise SystemExit(f"F({m},3) {dname}: the rebuilt path gives {r:.4f}, the torch path {path:.4f}")
            rows.append({"tile": f"F({m},3)", "points": pname, "dtype": dname,
                         "exact": " + ".join(exact) if len(exact) < len(STAGES) else "all stages",
                         "ratio": round(r, 3), "torch_path_ratio": round(path, 3),
                         "channel_block": reference.CHANNEL_BLOCK, "shape_NCKHW": "x".join(map(str, DEFAULT_SHAPE)),
                         "trials": args.trials, **env})
            print(f"F({m},3) {pname:8s} {dname:8s} exact: {rows[-1]['exact'] or '-':30s} {r:7.2f}x",
                  file=sys.stderr, flush=True)
    out = Path(args.out)
    csv_path, _ = write_rows(rows, out, "accuracy_budget")
    table = [{"tile, points": f"{r['tile']} {r['points']}", "dtype": r["dtype"], "exact stage(s)": r["exact"] or
              "none (the torch path)", "ratio": f"{r['ratio']:.2f}×"} for r in rows]
    md = ["# Winograd error budget: one rounding source removed at a time\n",
          f"{env['device']}, torch {env['torch']}, tritonwino {env['tritonwino']}; {env['timestamp']}. Script: "
          f"`bench/accuracy_budget.py` (trials {args.trials}); measure and layer {DEFAULT_SHAPE} (N, C, K, H, W) "
          "as in `accuracy.md`. Each row computes the named stage(s) in float64 and everything else as the torch "
          "path does; the first row of each case is the torch path itself.\n",
          markdown_table(table, list(table[0]))]
    (out / "accuracy_budget.md").write_text("\n".join(md) + "\n")
    print(f"wrote {csv_path}, accuracy_budget.json, accuracy_budget.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
