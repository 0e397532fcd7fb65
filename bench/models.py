"""End-to-end model latency: dense vs pruned-and-converted, with an Amdahl breakdown.

Models: ResNet-18 (ResNet.max variant: all 16 3x3 convs stride 1) and VGG-16 (13 3x3 convs),
layer shapes as in ``tritonwino.models``; random weights. Pruning: spatial structured pruning
(``SpatialPruner``, granularity (16, 1), F(4,3)) of every eligible conv to a target Winograd-domain
sparsity — the masks are computed from random weights, so they are realistic in structure but not
trained. Then ``convert(backend="auto")`` + ``tune_model`` (measured per-layer dispatch), and for
comparison the same model pinned to the sparse path everywhere (``backend="cpu"``, the C++ kernels, on
CPU; ``"triton"`` on a GPU).

Amdahl: the share of the dense model's time spent in eligible 3x3 stride-1 convs (forward hooks,
``perf_counter``), and the resulting bound 1 / (1 - share) if those convs cost nothing.

CPU: batch {1, 8}; GPU (if present): batch {1, 8, 32}. Input size ``--size`` (default 64, not 224:
a 2-core CPU needs seconds per VGG-16 forward at 224). Rows -> bench/results/models_<cpu|cuda>.*

Run: python bench/models.py [--size 64] [--sparsities 0.5 0.75 0.9] [--reps 3] [--threads 2] [--name models_cpu]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from tritonwino.env import environment
from tritonwino.experiments.layers import eligible_conv_names
from tritonwino.experiments.models import resnet18_max, vgg16
from tritonwino.experiments.rows import write_rows
from tritonwino.pruning import SpatialPruner
from tritonwino.sparse_conv import SparseWinogradConv2d, convert, tune_model
from tritonwino.tables import markdown_table
from tritonwino.tuning import time_interleaved


def amdahl_share(model: torch.nn.Module, x: torch.Tensor, names: list[str], reps: int) -> float:
    """Median fraction of a forward spent inside the ``names`` convs."""
    mods = dict(model.named_modules())
    acc = {"t": 0.0}
    start: dict[str, float] = {}
    hooks = []
    for n in names:
        hooks.append(mods[n].register_forward_pre_hook(lambda m, i, n=n: start.__setitem__(n, time.perf_counter())))
        hooks.append(mods[n].register_forward_hook(
            lambda m, i, o, n=n: acc.__setitem__("t", acc["t"] + time.perf_counter() - start[n])))
    shares = []
    with torch.inference_mode():
        model(x)
        for _ in range(reps):
            acc["t"] = 0.0
            t0 = time.perf_counter()
            model(x)
            shares.append(acc["t"] / (time.perf_counter() - t0))
    for h in hooks:
        h.remove()
    return statistics.median(shares)


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def _spread(t: dict) -> str:
    return f"{t['ms_p20']:.3g}-{t['ms_p80']:.3g}" if t.get("ms_p20") is not None else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=64, help="input H = W (default 64)")
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.75, 0.9])
    ap.add_argument("--batches", type=int, nargs="+", default=None)
    ap.add_argument("--models", nargs="+", default=["resnet18_max", "vgg16"])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (default 1: on a shared 2-core machine, 2 oneDNN threads competing with "
                         "other processes ran up to 50x slower and made every timing noise)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--name", default=None, help="result file stem (default models_<cpu|cuda>)")
    args = ap.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    batches = args.batches or ([1, 8, 32] if device.type == "cuda" else [1, 8])
    env = environment(device)
    factories = {"resnet18_max": resnet18_max, "vgg16": vgg16}
    rows = []
    t_all = time.time()
    load_start = _load()
    for mname in args.models:
        torch.manual_seed(0)
        dense = factories[mname]().eval().to(device)
        names = eligible_conv_names(dense)
        for sp in args.sparsities:
            pruned = copy.deepcopy(dense)
            t0 = time.time()
            pruner = SpatialPruner(pruned, m=4, block=(16, 1), keep_dense=None, tol=1e-3, max_iter=30)
            pruner.prune(sp)
            prune_s = time.time() - t0
            auto = convert(copy.deepcopy(pruned), m=4, block=(16, 1), backend="auto")
            pinned = convert(copy.deepcopy(pruned), m=4, block=(16, 1), backend="cpu" if device.type == "cpu"
                             else "triton")
            layers = [m for m in auto.modules() if isinstance(m, SparseWinogradConv2d)]
            wsp = sum(m.winograd_sparsity() * m.in_channels * m.out_channels for m in layers) / sum(
                m.in_channels * m.out_channels for m in layers)
            for nb in batches:
                x = torch.randn(nb, 3, args.size, args.size, device=device)
                t0 = time.time()
                tune_model(auto, x)
                tune_s = time.time() - t0
                chosen = [d.path for m in layers for d in m.dispatch_decisions().values()]
                with torch.inference_mode():
                    err = float((auto(x) - pruned(x)).abs().max() / pruned(x).abs().max())
                models = {"dense": dense, "auto": auto, "pinned": pinned}
                t = time_interleaved({n: (lambda mdl=mdl, x=x: mdl(x)) for n, mdl in models.items()}, device,
                                     rounds=args.reps)
                t_dense, t_auto, t_pin = t["dense"], t["auto"], t["pinned"]
                share = amdahl_share(dense, x, names, args.reps)
                row = {"model": mname, "input": f"{nb}x3x{args.size}x{args.size}", "N": nb,
                       "target_sparsity": sp, "winograd_sparsity": round(wsp, 4),
                       "eligible_convs": len(names), "tile": "F(4,3)", "block": "16x1",
                       "dense_ms": t_dense["ms"], "converted_auto_ms": t_auto["ms"],
                       "dense_ms_min": t_dense.get("ms_min"), "converted_auto_ms_min": t_auto.get("ms_min"),
                       "dense_p20_p80": _spread(t_dense), "auto_p20_p80": _spread(t_auto),
                       "sparse_everywhere_p20_p80": _spread(t_pin),
                       "speedup_auto": t_dense["ms"] / t_auto["ms"],
                       "sparse_everywhere_ms": t_pin["ms"], "speedup_sparse_everywhere": t_dense["ms"] / t_pin["ms"],
                       "eligible_share": share, "amdahl_bound": 1 / max(1e-9, 1 - share),
                       "chosen_conv2d": chosen.count("conv2d"), "chosen_dense": chosen.count("dense"),
                       "chosen_sparse": chosen.count("sparse"), "max_rel_err_vs_pruned": err,
                       "prune_s": prune_s, "tune_s": tune_s,
                       "masks": "SpatialPruner(16,1) on random weights", "path_sparse_everywhere":
                       "cpu" if device.type == "cpu" else "triton", **env}
                rows.append(row)
                print(f"{mname} N={nb} sp={sp}: dense {t_dense['ms']:.1f} ms, auto {t_auto['ms']:.1f} ms "
                      f"({row['speedup_auto']:.2f}x), sparse-everywhere {t_pin['ms']:.1f} ms "
                      f"({row['speedup_sparse_everywhere']:.2f}x), eligible share {share:.0%}, chosen "
                      f"conv2d/dense/sparse {row['chosen_conv2d']}/{row['chosen_dense']}/{row['chosen_sparse']}",
                      file=sys.stderr, flush=True)
    name = args.name or f"models_{device.type}"
    write_rows(rows, args.out, name)
    cols = ["model", "input", "target_sparsity", "winograd_sparsity", "dense_ms", "dense_p20_p80", "converted_auto_ms",
            "auto_p20_p80", "speedup_auto", "sparse_everywhere_ms", "speedup_sparse_everywhere", "eligible_share",
            "amdahl_bound", "chosen_conv2d", "chosen_dense", "chosen_sparse"]
    note = (f"# End-to-end model latency ({env['device']}, {env['threads']} threads, {env['timer']})\n\n"
            f"Input {args.size}x{args.size} (not 224: CPU time budget). Random weights; masks from spatial "
            "structured pruning at (16,1) granularity to the target Winograd-domain sparsity (F(4,3)). "
            "`converted_auto`: measured per-layer dispatch (conv2d / dense Winograd / sparse Winograd); "
            "`sparse_everywhere`: every eligible layer pinned to the sparse path "
            f"({'C++ cpu kernels' if device.type == 'cpu' else 'Triton kernels'}). `eligible_share`: fraction of the "
            "dense model's time in eligible 3x3 stride-1 convs; `amdahl_bound` = 1/(1-share). "
            f"Median of {args.reps} interleaved runs (dense, auto, sparse-everywhere in turn). "
            f"Total run {time.time() - t_all:.0f} s.\n\n")
    if device.type == "cpu":
        note += (f"CPU timings, {args.threads} thread(s); 1-minute load average {load_start:.2f} at the start and "
                 f"{_load():.2f} at the end of the run (the machine has {os.cpu_count()} cores). The CPU runs the "
                 "C++ kernels and torch paths, not the Triton kernels: nothing here says anything about GPU "
                 "speed.\n\n")
    (Path(args.out) / f"{name}.md").write_text(note + markdown_table(rows, cols))
    print(f"wrote {args.out}/{name}.csv/.json/.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
