"""Search interpolation points for a Winograd tile F(m, r) and report each set's error ratio: the
mean absolute error of the Winograd convolution over that of a direct convolution (F.conv2d in the
same dtype, same rounded inputs; uniform[-1, 1] data; tritonwino.points explains the measure).

Candidates have the shape the good sets share: 0, pairs ±p/q (p <= --max-num, q <= --max-den,
p/q in [1/8, 4]) and, for odd n, one more signed point; the standard and the current "accurate"
sets are always measured. With more candidates than --limit, --limit of them are drawn with --seed.
Each is ranked on a small layer (C = K = 16, 24x24) and the best --top are re-measured on the
reference layer (C = K = 64, 24x24). Everything is seeded: the same command gives the same numbers.
Torch path, CPU.

Examples:
  tritonwino points --m 4                         # F(4,3), fp32: {0, ±5/8, ±3/2} comes first
  tritonwino points --m 6 --limit 300 --top 3
  tritonwino points --m 4 --dtype float16 --json
  tritonwino points --m 4 --measure 0 1/2 -1 1 -3  # one given set (standard and accurate alongside)
"""

from __future__ import annotations

import argparse
import json

DTYPES = ("float32", "float16", "bfloat16")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--m", type=int, default=4, help="output tile size m (default 4)")
    p.add_argument("--r", type=int, default=3, help="kernel size r, odd (default 3)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="operand dtype (default float32)")
    p.add_argument("--max-num", type=int, default=8, help="largest numerator of a candidate point (default 8)")
    p.add_argument("--max-den", type=int, default=8, help="largest denominator of a candidate point (default 8)")
    p.add_argument("--limit", type=int, default=200,
                   help="most candidate sets measured, drawn with --seed when there are more; 0: all (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and of the candidate sample (default 0)")
    p.add_argument("--top", type=int, default=5, help="how many sets to report (default 5)")
    p.add_argument("--quick", action="store_true", help="rank only, no re-measurement on the reference layer")
    p.add_argument("--measure", nargs="+", metavar="POINT",
                   help="measure this set of n - 1 points (e.g. 0 1/2 -1 1 -3) instead of searching")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..points import DEFAULT_SHAPE, candidate_magnitudes, error_ratio, search_points
    from ..transforms import normalize_points

    dtype = getattr(torch, args.dtype)
    if args.r % 2 == 0:
        raise SystemExit(f"--r must be odd (only odd kernel sizes are implemented), got {args.r}")
    try:
        normalize_points(args.m, args.r, None)
        if args.measure:
            sets = [("given", normalize_points(args.m, args.r, args.measure)), ("standard", "standard"),
                    ("accurate", "accurate")]
    except ValueError as e:
        raise SystemExit(f"tritonwino points: {e}") from None
    for name, v in (("--top", args.top), ("--max-num", args.max_num), ("--max-den", args.max_den)):
        if v < 1:
            raise SystemExit(f"{name} must be >= 1, got {v}")
    if args.limit < 0:
        raise SystemExit(f"--limit must be >= 0, got {args.limit}")
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))

    if args.measure:
        results = []
        for name, pts in sets:
            pts = normalize_points(args.m, args.r, pts)
            res = error_ratio(args.m, args.r, pts, dtype, seed=args.seed, shape=DEFAULT_SHAPE)
            results.append({"name": name, "points": [str(p) for p in pts], "ratio": res["ratio"],
                            "ratio_arith": res["ratio_arith"]})
    else:
        mags = candidate_magnitudes(args.max_num, args.max_den)
        results = search_points(args.m, args.r, dtype=dtype, magnitudes=mags, limit=args.limit or None,
                                seed=args.seed, top=args.top,
                                confirm_shape=None if args.quick else DEFAULT_SHAPE)
    summary = {"tile": f"F({args.m},{args.r})", "dtype": args.dtype, "seed": args.seed,
               "measured_on": "ranking layer (1, 16, 16, 24, 24)" if args.quick and not args.measure
               else f"(N, C, K, H, W) = {DEFAULT_SHAPE}", "results": results}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['tile']} {args.dtype}, seed {args.seed}, error ratio to a direct convolution "
          f"measured on {summary['measured_on']}:")
    for i, r in enumerate(results, 1):
        label = r.get("name", f"#{i}")
        print(f"  {label:>8}  {r['ratio']:7.3f}x  {{{', '.join(r['points'])}}}")
    return 0
