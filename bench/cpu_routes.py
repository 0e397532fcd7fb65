"""Which CPU route for the sparse Winograd convolution: the measurement behind the README's choice.

Routes, all computing the same layer (F(m,3), (32,1) granularity, fp32), timed interleaved with
oneDNN ``F.conv2d`` (one call of each per round; medians, p20-p80 spread):

* ``cpu``      — the fused C++ kernel (``backend="cpu"``, tritonwino/csrc/winograd_cpu.cpp);
* ``torch``    — the pure-torch path (depthwise conv with kron(Bᵀ,Bᵀ) filters, gathered (P·G, L, T)
                 copy, batched matmul, kron(Aᵀ,Aᵀ) GEMM + permutes);
* ``inductor`` — ``torch.compile`` (Inductor's C++/OpenMP code generation) of that torch path;
* ``csr``      — the torch path's transforms around one ``torch.sparse.mm`` with a block-diagonal
                 CSR matrix of all positions' Q_pᵀ (MKL's sparse GEMM: no gathered copy).

Rows -> bench/results/cpu_routes.{csv,json,md}. Inductor compiles each shape once (tens of seconds).

Run: python bench/cpu_routes.py [--threads 2] [--shapes 64:56 128:28 256:14 512:7] [--batches 1 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tritonwino import reference
from tritonwino.env import environment
from tritonwino.experiments.rows import write_rows
from tritonwino.packing import pack_winograd_weight
from tritonwino.sparse_conv import sparse_winograd_conv2d
from tritonwino.tables import markdown_table
from tritonwino.testing import random_pruned_q
from tritonwino.tuning import time_interleaved

ROUTES = ("cpu", "torch", "inductor", "csr")


def csr_route(q: torch.Tensor, m: int):
    """The sparse multiply as one CSR x dense product over all positions (block-diagonal Q_pᵀ)."""
    k, c, n, _ = q.shape
    p = n * n
    qt = q.permute(2, 3, 0, 1).reshape(p, k, c).float()  # Q_pᵀ (K x C) per position
    csr = torch.block_diag(*qt).to_sparse_csr()  # (P K) x (P C)

    def run(x: torch.Tensor) -> torch.Tensor:
        nb, _, h, w = x.shape
        v = reference.input_transform(x, m, 3, (1, 1))  # (P, C, T)
        mm = torch.sparse.mm(csr, v.reshape(p * c, -1)).reshape(p, k, -1)
        y = reference.output_transform(mm, nb, h, w, m, 3)
        return y.contiguous()

    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["64:56", "128:28", "256:14", "512:7"], metavar="C:H")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--tiles", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--routes", nargs="+", default=list(ROUTES), choices=ROUTES)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--name", default="cpu_routes")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="tw-routes-inductor-"))
    env = environment("cpu")
    gen = torch.Generator().manual_seed(0)
    rows = []
    load_start = os.getloadavg()[0]
    for shape in args.shapes:
        c, h = (int(v) for v in shape.split(":"))
        for nb in args.batches:
            x = torch.randn(nb, c, h, h, generator=gen)
            w = torch.randn(c, c, 3, 3, generator=gen) / (9 * c) ** 0.5
            cands = {"conv2d": lambda x=x, w=w: F.conv2d(x, w, padding=1)}
            for m in args.tiles:
                q = random_pruned_q(c, c, m, 3, args.sparsity, (32, 1), generator=gen)
                packed = pack_winograd_weight(q, (32, 1), dtype=torch.float32)
                for route in args.routes:
                    if route in ("cpu", "torch"):
                        fn = lambda x=x, pk=packed, be=route: sparse_winograd_conv2d(x, pk, None, 1, backend=be)
                    elif route == "inductor":
                        # static shapes: a dynamic-shape recompile (second batch size) fails to lower the conv
                        fn = torch.compile(lambda x, pk=packed: reference.sparse_winograd_conv2d(x, pk, None, (1, 1)),
                                           dynamic=False)
                        fn = lambda x=x, f=fn: f(x)
                    else:
                        run = csr_route(q, m)
                        fn = lambda x=x, f=run: f(x)
                    cands[f"{route} F({m},3)"] = fn
            t0 = time.time()
            with torch.no_grad():
                ref = cands["conv2d"]()
                for name, fn in cands.items():  # compiles / builds outside the timed rounds
                    y = fn()
                    if name.startswith(("cpu", "torch", "inductor", "csr")) and y.shape != ref.shape:
                        raise RuntimeError(f"{name}: shape {tuple(y.shape)} != {tuple(ref.shape)}")
            t = time_interleaved(cands, "cpu", rounds=args.rounds, warmup=1)
            base = t["conv2d"]
            for name, tm in t.items():
                rows.append({"C": c, "H": h, "N": nb, "sparsity": args.sparsity, "block": "32x1", "candidate": name,
                             "ms": tm["ms"], "ms_p20": tm["ms_p20"], "ms_p80": tm["ms_p80"], "ms_min": tm["ms_min"],
                             "speedup_vs_conv2d": base["ms"] / tm["ms"], "rounds": tm["reps"],
                             "load_avg_1m": os.getloadavg()[0], **env})
            summary = ", ".join(f"{k} {v['ms']:.3g} ms ({base['ms'] / v['ms']:.2f}x)" for k, v in t.items())
            print(f"{c}x{h} N={nb} ({time.time() - t0:.0f} s): {summary}", file=sys.stderr, flush=True)
    write_rows(rows, args.out, args.name)
    for r in rows:
        r["spread"] = f"{r['ms_p20']:.3g}-{r['ms_p80']:.3g}"
    note = (f"# CPU routes for sparse Winograd ({env['device']}, {args.threads} threads)\n\n"
            f"torch {env['torch']}, {env['timestamp']}. {int(args.sparsity * 100)}% Winograd-domain sparsity at "
            f"(32,1). Median ms of {args.rounds} interleaved rounds (every candidate of a shape in turn), "
            f"spread p20-p80. 1-minute load average {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at "
            f"the end ({os.cpu_count()} cores).\n\n")
    (Path(args.out) / f"{args.name}.md").write_text(note + markdown_table(
        rows, ["C", "H", "N", "candidate", "ms", "spread", "speedup_vs_conv2d"]) + "\n")
    print(f"wrote {args.out}/{args.name}.csv/.json/.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
