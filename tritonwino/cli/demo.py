"""The main job, end to end on an embedded dataset:

  1. train a small VGG-style CNN (Fashion-MNIST from Debian's dataset-fashion-mnist if installed,
     else scikit-learn's bundled digits);
  2. spatial-Winograd pruning, step 1 (spatial structured pruning at the (16, 1) granularity the
     sparse kernel runs), with a short gradual schedule and retraining after every stage;
  3. convert the pruned convolutions to SparseWinogradConv2d (packed F(4,3) weights);
  4. verify: converted outputs against the pruned model, accuracy on the test set;
  5. benchmark every converted layer and the whole model, plus a speedup-vs-sparsity sweep on the
     model's layer shapes (Triton kernels on a GPU; torch paths on CPU, labelled as CPU timings);
  6. write plots, the CSV/JSON rows behind every plot and report.md into --out.

Example: tritonwino demo --out out/demo        (about 1.5 minutes on 2 CPU cores)
         tritonwino demo --out out/demo --quick (under a minute)
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..env import environment
from ..experiments.data import load_dataset
from ..experiments.layers import input_shapes
from ..experiments.models import SmallVGG
from ..experiments.plotting import plot_accuracy, plot_memory, plot_speedup
from ..experiments.rows import sparse_row, write_rows
from ..experiments.training import Batches, accuracy, train
from ..functional import resolve_backend
from ..pruning import SpatialPruner, finalize
from ..sparse_conv import SparseWinogradConv2d, convert, pack_winograd_weight, sparse_winograd_conv2d, tune_model
from ..tables import markdown_table
from ..testing import random_pruned_q
from ..tuning import time_ms


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="folder for plots, CSV/JSON rows and report.md")
    p.add_argument("--quick", action="store_true", help="smaller data, fewer steps: under a minute on CPU")
    p.add_argument("--dataset", default="auto", help="auto (Fashion-MNIST if installed, else digits), "
                   "fashion-mnist or digits")
    p.add_argument("--data-root", default=None, help="folder holding the Fashion-MNIST idx files")
    p.add_argument("--targets", type=float, nargs="+", default=None,
                   help="Winograd-sparsity targets of the pruning schedule (default 0.5 0.7 0.8 0.85)")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env = environment(device)
    # The converted model uses measured dispatch (conv2d, dense or sparse Winograd per layer, never
    # slower than conv2d); the layer rows and the sweep time the sparse path itself.
    sparse_backend = "triton" if device.type == "cuda" else resolve_backend("auto", torch.empty(1, 1, 1, 1))
    quick = args.quick
    targets = args.targets or ([0.5, 0.8] if quick else [0.5, 0.7, 0.8, 0.85])
    m, block = 4, (16, 1)

    # 1. data + dense model ------------------------------------------------------------------
    train_set, test, info = load_dataset(args.dataset, root=args.data_root,
                                     train_limit=3000 if quick else 20000, test_limit=1000 if quick else 5000)
    print(f"[1/6] dataset {info['name']}: {len(train_set)} train / {len(test)} test images, "
          f"{info['image_size']}x{info['image_size']}", file=sys.stderr)
    model = SmallVGG(info["num_classes"], info["in_channels"], cfg=(32, "M", 64, 64, "M", 128, 128))
    batches = Batches(train_set, 64, seed=args.seed)
    train(model, batches, 150 if quick else 900, 0.05, desc="dense training")
    acc_dense = accuracy(model, test)
    print(f"      dense accuracy {acc_dense:.2%}", file=sys.stderr)

    # 2. spatial-Winograd pruning, step 1 ----------------------------------------------------
    pruner = SpatialPruner(model, m=m, block=block)
    prune_rows = [{"method": f"spatial-structured {block[0]}x{block[1]}", "stage": 0, "target": 0.0,
                   "winograd_sparsity": 0.0, "accuracy": acc_dense, "dataset": info["name"], **env}]
    for stage, target in enumerate(targets, 1):
        pruner.prune(target)
        train(model, batches, 60 if quick else 300, 0.01, step=pruner.step, desc=f"retrain stage {stage}")
        sp = pruner.sparsity()
        acc = accuracy(model, test)
        prune_rows.append({**prune_rows[0], "stage": stage, "target": target,
                           "winograd_sparsity": sp["overall"], "accuracy": acc, "timestamp": env["timestamp"]})
        print(f"[2/6] stage {stage}: target {target:.0%}, Winograd sparsity {sp['overall']:.1%}, "
              f"accuracy {acc:.2%}", file=sys.stderr)
    write_rows(prune_rows, out, "pruning")

    # 3. finalize + convert ------------------------------------------------------------------
    model.eval()
    finals = finalize(model, m=m)
    pruned = copy.deepcopy(model)
    converted = convert(copy.deepcopy(model), m=m, block=block, backend="auto",
                        filter_fn=lambda mod, name: name in finals)
    # The same conversion pinned to the sparse path, so verification exercises the sparse kernels
    # whatever dispatch picks.
    sparse_model = convert(copy.deepcopy(model), m=m, block=block, backend=sparse_backend,
                           filter_fn=lambda mod, name: name in finals)
    swapped = [n for n, s in converted.tritonwino_conversion if s == "swapped"]
    print(f"[3/6] converted {len(swapped)} layers: {', '.join(swapped)}", file=sys.stderr)

    # 4. verify --------------------------------------------------------------------------------
    x_test = test.tensors[0][:256].to(device)
    pruned, converted, sparse_model = pruned.to(device), converted.to(device), sparse_model.to(device)
    with torch.inference_mode():
        y_ref, y_sparse, y_auto = pruned(x_test), sparse_model(x_test), converted(x_test)
    max_err = max(float((y - y_ref).abs().max() / y_ref.abs().max()) for y in (y_sparse, y_auto))
    agree = min(float((y.argmax(1) == y_ref.argmax(1)).float().mean()) for y in (y_sparse, y_auto))
    acc_converted = accuracy(sparse_model, test, device)
    acc_pruned = accuracy(pruned, test, device)
    ok = max_err < 1e-4 and agree > 0.99
    print(f"[4/6] verify: max relative logit error {max_err:.2e}, top-1 agreement {agree:.1%}, "
          f"accuracy pruned {acc_pruned:.2%} / converted {acc_converted:.2%} -> {'OK' if ok else 'MISMATCH'}",
          file=sys.stderr)

    # 5. benchmark: per layer, whole model, and a sparsity sweep on the model's shapes -------------
    shapes = input_shapes(pruned, list(finals), x_test[:1])

    layer_rows, sweep_rows = [], []
    batches = [1, 32]
    conv_mods = dict(pruned.named_modules())
    new_mods = dict(sparse_model.named_modules())
    for name in tqdm(swapped, desc="[5/6] layer benchmarks", file=sys.stderr):
        conv, sparse = conv_mods[name], new_mods[name]
        assert isinstance(sparse, SparseWinogradConv2d)
        _, c, h, w = shapes[name]
        for nb in batches:
            x = torch.randn(nb, c, h, w, device=device)
            t_conv = time_ms(lambda conv=conv, x=x: conv(x), device)
            t_sparse = time_ms(lambda sp=sparse, x=x: sparse_winograd_conv2d(x, sp.packed, sp.bias, sp.padding,
                                                                           sparse_backend), device)
            layer_rows.append({"layer": name, "C": c, "K": conv.out_channels, "H": h, "W": w, "N": nb,
                               "tile": f"F({m},3)", "block": f"{block[0]}x{block[1]}",
                               "winograd_sparsity": float((finals[name].q == 0).float().mean()),
                               "kept_slots": sparse.packed.density, "path": sparse_backend,
                               "conv2d_ms": t_conv["ms"], "sparse_ms": t_sparse["ms"],
                               "speedup_vs_conv2d": t_conv["ms"] / t_sparse["ms"], **env})
    dispatch_tables = []
    for nb in batches:
        x = torch.randn(nb, *x_test.shape[1:], device=device)
        dispatch_tables.append((nb, tune_model(converted, x)))  # measure once per shape bucket, then run
        t_p = time_ms(lambda x=x: pruned(x), device)
        t_c = time_ms(lambda x=x: converted(x), device)
        layer_rows.append({"layer": "(whole model, dispatched)", "N": nb, "path": "auto", "conv2d_ms": t_p["ms"],
                           "sparse_ms": t_c["ms"], "speedup_vs_conv2d": t_p["ms"] / t_c["ms"], **env})
    write_rows(layer_rows, out, "model_layers")

    gen = torch.Generator().manual_seed(args.seed)
    sweep_shapes = sorted({(shapes[n][1], conv_mods[n].out_channels, shapes[n][2]) for n in swapped})
    for c, k, h in tqdm(sweep_shapes, desc="[5/6] sparsity sweep", file=sys.stderr):
        x = torch.randn(32, c, h, h, generator=gen).to(device)
        wt = torch.randn(k, c, 3, 3, generator=gen).to(device)
        t_conv = time_ms(lambda x=x, wt=wt: F.conv2d(x, wt, padding=1), device)
        for sparsity in (0.0, 0.5, 0.75, 0.9):
            q = random_pruned_q(k, c, m, 3, sparsity, block, generator=gen).float()
            packed = pack_winograd_weight(q, block).to(device)
            packed16 = pack_winograd_weight(q, block, dtype=torch.float16)
            t = time_ms(lambda x=x, packed=packed: sparse_winograd_conv2d(x, packed, None, 1, sparse_backend), device)
            sweep_rows.append(sparse_row(c, k, h, 32, m, block, sparsity, q, packed, packed16, sparse_backend,
                                         t_conv, t, env))
    write_rows(sweep_rows, out, "sparsity_sweep")

    # 6. plots + report -------------------------------------------------------------------------
    plots = [plot_accuracy(pd.DataFrame(prune_rows), out / "accuracy_vs_sparsity.png"),
             plot_speedup(pd.DataFrame(sweep_rows), out / "speedup_vs_sparsity.png", 32),
             plot_memory(pd.DataFrame(sweep_rows), out / "memory_vs_sparsity.png")]
    timing_note = ("GPU timings (triton.testing.do_bench)" if device.type == "cuda" else
                   f"CPU timings ({env['threads']} threads, time.perf_counter medians); the CPU runs the "
                   f"{'C++ CPU kernels' if sparse_backend == 'cpu' else 'torch paths'}, not the Triton kernels, "
                   "so these numbers say nothing about GPU speed")
    report = [
        "# tritonwino demo report\n",
        f"Device: {env['device']}; torch {env['torch']}, triton {env['triton']}, tritonwino {env['tritonwino']}; "
        f"{env['timestamp']}; {'--quick' if quick else 'full'} run, {time.time() - t_start:.0f} s.\n",
        f"## Pruning ({info['name']}, SmallVGG, F({m},3), block {block})\n",
        markdown_table(prune_rows, ["stage", "target", "winograd_sparsity", "accuracy"]),
        "\n## Verification\n",
        f"Converted {len(swapped)} layers ({', '.join(swapped)}). Against the pruned model, both the "
        f"converted model pinned to the sparse {sparse_backend} path and the dispatched one: max relative logit "
        f"error {max_err:.2e}, top-1 agreement {agree:.1%}; test accuracy pruned {acc_pruned:.2%}, sparse "
        f"{acc_converted:.2%}: **{'OK' if ok else 'MISMATCH'}**.\n",
        f"\n## Layer and model timings — {timing_note}\n",
        "Per layer: `conv2d_ms` is the pruned model's nn.Conv2d, `sparse_ms` the sparse Winograd path itself. "
        "Whole model: the pruned model vs the converted model with measured dispatch (each layer runs the "
        "fastest of conv2d, dense and sparse Winograd for its shape; a Winograd path must beat conv2d by 5%).\n",
        markdown_table(layer_rows, ["layer", "C", "K", "H", "N", "winograd_sparsity", "kept_slots",
                                    "conv2d_ms", "sparse_ms", "speedup_vs_conv2d"]),
        *[f"\n### What each layer runs at batch {nb} (`tritonwino.dispatch.explain`)\n\n{table}\n"
          for nb, table in dispatch_tables],
        "\n## Speedup vs sparsity on the model's layer shapes (batch 32)\n",
        markdown_table(sweep_rows, ["C", "K", "H", "target_sparsity", "kept_slots", "conv2d_ms", "sparse_ms",
                                    "speedup_vs_conv2d"]),
        "\n## Plots\n",
        *[f"![{p.stem}]({p.name})\n" for p in plots],
        "\nRows behind every table and plot: pruning.csv, model_layers.csv, sparsity_sweep.csv (and .json).\n",
    ]
    (out / "report.md").write_text("\n".join(report))
    print(f"[6/6] wrote {out / 'report.md'}, {len(plots)} plots and their CSV/JSON rows in {out}/ "
          f"({time.time() - t_start:.0f} s)")
    return 0 if ok else 1
