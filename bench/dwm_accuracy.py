"""Accuracy and multiplication counts of the decomposable Winograd method (tritonwino.dwm): stride-2
and large kernels split into ≤3×3 stride-1 pieces that run as one F(m, r_piece) convolution.

For every (kernel, stride, tile m, dtype) and method — ``dwm`` (the pieces), ``single-tile`` (one
F(m, k) tile, stride-1 odd kernels only: what the library ran for 5×5 before, and what plain
Winograd does for large kernels) and ``plain`` (3×3 stride 1, its own single piece) — over --trials
random layers (inputs and weights standard normal, weights scaled by 1/sqrt(C·k²), both rounded to
the dtype first): the max relative error max|y − y64| / max|y64| against float64 F.conv2d of the
same rounded inputs, and the same for F.conv2d itself run in that dtype on the CPU ("direct"); the
ratio says how many times a direct convolution's own error the Winograd path makes.

Multiplications (the Winograd-domain elementwise stage per input/output channel pair, for this
layer's output size): direct HO·WO·k² vs Winograd tiles·pieces·n²; ``mults_kept`` skips the Q
entries that are zero for every weight (the zero padding of pieces shorter than r, which the sparse
kernel skips at vector granularity); reductions are direct / Winograd.

The torch path (tritonwino.reference) is measured: it has the kernels' numerics (fp32 transforms
and accumulation, V and Q rounded to half types), and tests/test_dwm.py holds the Triton kernels
to within 2x its error. CPU only; no timing.

Run: python bench/dwm_accuracy.py [--out DIR] [--trials N]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from tritonwino import dwm, reference
from tritonwino.env import environment
from tritonwino.experiments.rows import write_rows
from tritonwino.sparse_conv import winograd_conv2d
from tritonwino.tables import markdown_table

KERNELS = [(3, 1), (3, 2), (5, 1), (5, 2), (7, 1), (7, 2)]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
COLUMNS = ("kernel", "stride", "method", "tile", "pieces", "dtype", "max_rel_err", "direct_max_rel_err",
           "ratio_to_direct", "mults_direct", "mults_winograd", "mults_kept", "reduction", "reduction_kept")


def measure(k: int, s: int, m: int, dtype: torch.dtype, decompose, trials: int, shape) -> dict:
    gen = torch.Generator().manual_seed(1234)
    nb, c, kout, h = shape
    p = k // 2
    worst = worst_direct = 0.0
    for _ in range(trials):
        x = torch.randn(nb, c, h, h, generator=gen).to(dtype)
        w = (torch.randn(kout, c, k, k, generator=gen) / math.sqrt(c * k * k)).to(dtype)
        ref = F.conv2d(x.double(), w.double(), stride=s, padding=p)
        scale = float(ref.abs().max())
        y = winograd_conv2d(x, w, None, p, m, backend="torch", stride=s, decompose=decompose)
        direct = F.conv2d(x, w, stride=s, padding=p)
        worst = max(worst, float((y.double() - ref).abs().max()) / scale)
        worst_direct = max(worst_direct, float((direct.double() - ref).abs().max()) / scale)
    return {"max_rel_err": worst, "direct_max_rel_err": worst_direct}


def structural_kept(k: int, s: int, m: int, d) -> float:
    """Fraction of Q entries (per channel pair) not zero for every weight: the pieces' padding."""
    if d is None:
        return 1.0
    w = torch.ones(1, 1, k, k, dtype=torch.float64)
    q = reference.winograd_weight(dwm.expand_weight(w, d), m)  # all-ones weights: no accidental zeros
    return float((q != 0).double().mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--trials", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    env = environment("cpu")
    shape = (2, 32, 32, 24)  # N, C, K, H = W
    rows = []
    for k, s in KERNELS:
        methods = [("plain", False)] if (k, s) == (3, 1) else [("dwm", True)]
        if s == 1 and k % 2 and k > 3:
            methods.append(("single-tile", False))
        for method, decompose in methods:
            d = dwm.plan(k, s, decompose)
            for m in (2, 4, 6):
                r = k if d is None else d.r
                ho = (shape[3] + 2 * (k // 2) - k) // s + 1
                mults = dwm.multiplications(k, s, m, ho, ho, d)
                kept = structural_kept(k, s, m, d)
                for dname, dtype in DTYPES.items():
                    res = measure(k, s, m, dtype, decompose, args.trials, shape)
                    rows.append({
                        "kernel": f"{k}x{k}", "stride": s, "method": method, "tile": f"F({m},{r})",
                        "pieces": 1 if d is None else d.pieces, "dtype": dname,
                        "max_rel_err": res["max_rel_err"], "direct_max_rel_err": res["direct_max_rel_err"],
                        "ratio_to_direct": res["max_rel_err"] / max(res["direct_max_rel_err"], 1e-300),
                        "mults_direct": mults["direct"], "mults_winograd": mults["winograd"],
                        "mults_kept": round(mults["winograd"] * kept),
                        "reduction": mults["direct_over_winograd"],
                        "reduction_kept": mults["direct"] / (mults["winograd"] * kept),
                        "N": shape[0], "C": shape[1], "K": shape[2], "H": shape[3], "trials": args.trials,
                        "path": "torch (reference)", **env,
                    })
                    print(f"{k}x{k}/{s} {method:11s} F({m},{r}) {dname:8s} rel {res['max_rel_err']:.2e} "
                          f"direct {res['direct_max_rel_err']:.2e} ratio {rows[-1]['ratio_to_direct']:.1f} "
                          f"mults /{mults['direct_over_winograd']:.2f}", flush=True)
    out = Path(args.out)
    write_rows(rows, out, "dwm_accuracy")

    def cell(v):
        if isinstance(v, float):
            return f"{v:.2e}" if v < 0.01 else f"{v:.2f}"
        return str(v)

    text = [
        "# Decomposable Winograd method: accuracy and multiplications", "",
        f"Max relative error against float64 `F.conv2d` of the same rounded inputs, over {args.trials} random "
        f"layers of N={shape[0]}, C={shape[1]}, K={shape[2]}, {shape[3]}x{shape[3]} input, padding k//2 "
        "(normal inputs, weights / sqrt(C·k²)). `direct` is `F.conv2d` itself in that dtype on the CPU; "
        "`ratio_to_direct` = Winograd error / direct error. Torch path (the kernels' numerics; the Triton "
        "path is tested to stay within 2x of it). Multiplications: the elementwise stage per channel pair "
        "for this layer; `kept` skips the Q entries that are zero for every weight (the zero padding of "
        "short pieces, skipped by the sparse kernel); reductions are direct / Winograd. "
        f"{env['device']}, torch {env['torch']}, tritonwino {env['tritonwino']}, {env['timestamp']}.", "",
        "`dwm` = the kernel split into ≤3×3 stride-1 pieces (polyphase for stride 2) run as one F(m, r) "
        "convolution over C·pieces virtual channels; `single-tile` = one F(m, k) tile (stride 1 only); "
        "`plain` = 3×3 stride 1 (a single piece).", "",
        markdown_table(rows, COLUMNS, cell),
    ]
    (out / "dwm_accuracy.md").write_text("\n".join(text) + "\n")
    print(f"wrote {out / 'dwm_accuracy.csv'}, .json, .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
