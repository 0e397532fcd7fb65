"""Accuracy of each tile, dtype, point set and path against float64 F.conv2d.

Writes bench/results/accuracy.{csv,json,md} (or --out DIR). Error metrics per configuration, over
--trials random layers (inputs and weights standard normal, weights scaled by 1/sqrt(C·r²)):
max relative error = max|y − y64| / max|y64| and mean relative error = mean|y − y64| / mean|y64|.
The Triton path runs under the interpreter on CPU (exact IEEE fp32 dot) — on a GPU it runs the real
kernels; the row says which.

Run: python bench/accuracy.py [--out DIR] [--trials N] [--no-triton]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if not __import__("torch").cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from fractions import Fraction as Fr  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tritonwino.env import environment  # noqa: E402
from tritonwino.experiments.rows import write_rows  # noqa: E402
from tritonwino.sparse_conv import winograd_conv2d  # noqa: E402
from tritonwino.tables import markdown_table  # noqa: E402
from tritonwino.transforms import ACCURATE_POINTS, default_points  # noqa: E402

# Per tile size n: the library default, the better-conditioned set where one exists, and one
# alternative rational set for comparison.
POINT_SETS = {
    "standard": lambda n: default_points(n),
    "barabasz": lambda n: ACCURATE_POINTS.get(n),
    "alternative": lambda n: {4: (0, 1, Fr(-1, 2)), 6: (0, Fr(1, 2), -1, 1, -3),
                              8: (0, 1, -1, Fr(1, 2), Fr(-1, 2), Fr(3, 2), Fr(-3, 2))}.get(n),
}


def measure(m: int, dtype: torch.dtype, points, backend: str, trials: int, device: str, shape) -> dict:
    gen = torch.Generator().manual_seed(1234)
    n_, c, k, h, w = shape
    max_rel, mean_num, mean_den = 0.0, 0.0, 0.0
    for _ in range(trials):
        x = torch.randn(n_, c, h, w, generator=gen).to(dtype).to(device)
        wt = (torch.randn(k, c, 3, 3, generator=gen) / (9 * c) ** 0.5).to(dtype).to(device)
        y = winograd_conv2d(x, wt, None, 1, m, backend=backend, points=points).double()
        ref = F.conv2d(x.double(), wt.double(), padding=1)
        err = (y - ref).abs()
        max_rel = max(max_rel, float(err.max() / ref.abs().max()))
        mean_num += float(err.mean())
        mean_den += float(ref.abs().mean())
    return {"max_rel_err": max_rel, "mean_rel_err": mean_num / mean_den}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--no-triton", action="store_true", help="only the torch path")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    env = environment(device)
    shape = (2, 32, 32, 16, 16)
    rows = []
    backends = ["torch"] + ([] if args.no_triton else ["triton"])
    for m in (2, 4, 6):
        n = m + 2
        for pname, pfn in POINT_SETS.items():
            pts = pfn(n)
            if pts is None:
                continue
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                for backend in backends:
                    res = measure(m, dtype, pts, backend, args.trials, device, shape)
                    rows.append({
                        "tile": f"F({m},3)", "points": pname, "point_values": " ".join(map(str, pts)),
                        "dtype": str(dtype).split(".")[1], "path": backend, **res,
                        "shape_NCKHW": "x".join(map(str, shape)), "trials": args.trials,
                        "triton_mode": ("interpreter" if env["triton_interpret"] else "gpu")
                        if backend == "triton" else "",
                        **env,
                    })
                    print(f"{rows[-1]['tile']} {pname:8s} {rows[-1]['dtype']:8s} {backend:6s} "
                          f"max {res['max_rel_err']:.2e} mean {res['mean_rel_err']:.2e}", file=sys.stderr)
    csv_path, _ = write_rows(rows, args.out, "accuracy")
    md = ["# Winograd accuracy vs float64 F.conv2d\n",
          f"Device: {env['device']}; torch {env['torch']}, triton {env['triton']}; {env['timestamp']}.",
          f"Layer {shape} (N, C, K, H, W), 3x3, padding 1, {args.trials} random trials; relative errors.\n",
          markdown_table(rows, ["tile", "points", "dtype", "path", "max_rel_err", "mean_rel_err"])]
    (Path(args.out) / "accuracy.md").write_text("\n".join(md))
    print(f"wrote {csv_path} and accuracy.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
