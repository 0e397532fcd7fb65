"""The AdderNet experiment: one small CNN trained as a CNN, an AdderNet and Winograd AdderNets.

Four layer kinds share one architecture (``make_model``): the first convolution and the
classifier stay multiplication-based, as in AdderNet; the two middle 3×3 layers are ``Conv2d``,
``AdderConv2d`` or ``WinogradAdderConv2d`` (standard or balanced matrices; the balanced one also
with Winograd-domain filters U as its parameter), each followed by
BatchNorm, ReLU and 2×2 max-pooling. ``count_ops`` counts additions and multiplications per image;
``run_experiment`` trains every variant (resumable from per-run checkpoints) and writes result
rows. Used by ``bench/adder_fashion_mnist.py``.

The loop is this module's own, not ``experiments.training.train``: a run checkpoints and resumes
per epoch (model, optimizer momentum and schedule position) and evaluates after every epoch,
and ``train`` builds its optimizer inside each call.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset
from tqdm import tqdm

from ..adder import AdderConv2d, WinogradAdderConv2d, l2_to_l1_p, set_adder_p, winograd_adder_matrices
from ..env import environment
from ..tables import markdown_table
from .data import load_dataset
from .rows import write_rows
from .training import accuracy, hooked_eval

__all__ = ["VARIANTS", "Settings", "Variant", "count_ops", "make_model", "plot_results", "run_experiment",
           "tile_imbalance", "write_outputs"]


@dataclass(frozen=True)
class Variant:
    name: str
    layer: str                 # "conv" | "adder" | "winograd"
    matrices: str = ""         # winograd only: "standard" | "balanced"
    l2_to_l1: bool = False
    filters: str = "spatial"   # winograd only: "spatial" (W is the parameter) | "winograd" (U is)


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("cnn", "conv"),
    Variant("addernet", "adder"),
    Variant("wino-standard", "winograd", "standard"),
    Variant("wino-standard-l2l1", "winograd", "standard", True),
    Variant("wino-balanced", "winograd", "balanced"),
    Variant("wino-balanced-l2l1", "winograd", "balanced", True),
    Variant("wino-balanced-u", "winograd", "balanced", filters="winograd"),
)}


def make_model(variant: Variant | str, widths: Sequence[int] = (16, 16, 32), in_channels: int = 1,
               num_classes: int = 10, image_size: int = 28, eta: float = 0.2) -> nn.Sequential:
    """conv(3×3) → BN → ReLU → pool, then two [layer(3×3) → BN → ReLU → pool] blocks, then Linear.

    ``layer`` is the variant's: Conv2d, AdderConv2d or WinogradAdderConv2d F(2,3).
    """
    v = VARIANTS[variant] if isinstance(variant, str) else variant
    w0, w1, w2 = widths
    layers: list[nn.Module] = [nn.Conv2d(in_channels, w0, 3, padding=1, bias=False), nn.BatchNorm2d(w0),
                               nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    side = image_size // 2
    for cin, cout in ((w0, w1), (w1, w2)):
        if v.layer == "conv":
            mid: nn.Module = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        elif v.layer == "adder":
            mid = AdderConv2d(cin, cout, 3, padding=1, eta=eta)
        else:
            mid = WinogradAdderConv2d(cin, cout, 3, padding=1, m=2, matrices=v.matrices, eta=eta,
                                      weight_domain=v.filters)
        layers += [mid, nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        side //= 2
    layers += [nn.Flatten(), nn.Linear(w2 * side * side, num_classes)]
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------------------------
# counting


def _transform_cost(mat: torch.Tensor) -> tuple[int, int]:
    """(additions, multiplications) of applying ``mat`` to one vector: a row with j nonzeros costs
    j − 1 additions; every entry other than 0 and ±1 costs one multiplication (powers of two
    included, although hardware would shift)."""
    nz = mat != 0
    adds = int((nz.sum(dim=1) - 1).clamp_min(0).sum())
    mults = int((nz & (mat.abs() != 1)).sum())
    return adds, mults


def count_ops(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Additions and multiplications per image of the conv-like layers, BatchNorm and Linear.

    Conventions [ours]: a convolution tap is 1 mult + 1 add; an ℓ1 term ``|x − w|`` accumulated
    is 2 adds; BatchNorm after a Conv2d folds into its weights (0), after an adder layer it is
    1 mult + 1 add per output (the scale does not commute with ``|·|``); Winograd transforms
    count their nonzeros (``_transform_cost``), applied to columns then rows; the filter
    transform is offline (0). ReLU and pooling are comparisons, not counted.
    """
    shapes: dict[nn.Module, tuple[int, ...]] = {}
    hooks = [mod.register_forward_hook(lambda mod, _i, out: shapes.__setitem__(mod, tuple(out.shape)))
             for mod in model.modules()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape[-3:]))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    adds = mults = 0
    prev: nn.Module | None = None
    for mod in model.modules():
        if mod not in shapes:
            continue
        out = shapes[mod]
        if isinstance(mod, nn.Conv2d):
            taps = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
            n_out = out[1] * out[2] * out[3]
            mults += n_out * taps
            adds += n_out * taps  # taps − 1 sums plus the (folded BN) bias
        elif isinstance(mod, WinogradAdderConv2d):
            at, _, bt = winograd_adder_matrices(mod.m, mod.kernel_size[0], mod.matrices)
            m, n = at.shape
            tiles = -(-out[2] // m) * -(-out[3] // m)
            ba, bm = _transform_cost(bt)
            aa, am = _transform_cost(at)
            c, k = mod.in_channels, mod.out_channels
            adds += tiles * (c * 2 * n * ba + 2 * k * c * n * n + k * (n + m) * aa)
            mults += tiles * (c * 2 * n * bm + k * (n + m) * am)
        elif isinstance(mod, AdderConv2d):
            taps = mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1]
            adds += out[1] * out[2] * out[3] * 2 * taps
        elif isinstance(mod, nn.BatchNorm2d) and isinstance(prev, AdderConv2d | WinogradAdderConv2d):
            n_out = out[1] * out[2] * out[3]
            adds += n_out
            mults += n_out
        elif isinstance(mod, nn.Linear):
            mults += mod.in_features * mod.out_features
            adds += mod.in_features * mod.out_features
        if not isinstance(mod, nn.Sequential):
            prev = mod
    return {"adds": adds, "mults": mults}


def tile_imbalance(model: nn.Module, x: torch.Tensor) -> float | None:
    """How much a Winograd adder layer's output depends on the position inside its m×m tile.

    For each WinogradAdderConv2d, per output channel: the spread (max − min) of the channel's
    mean over the m² tile positions, divided by the channel's standard deviation; averaged over
    channels and layers. 0 means no fixed tile pattern; None if the model has no such layer.
    """
    outs: list[tuple[torch.Tensor, int]] = []
    hooks = [mod.register_forward_hook(lambda mod, _i, out: outs.append((out.detach(), mod.m)))
             for mod in model.modules() if isinstance(mod, WinogradAdderConv2d)]
    if not hooks:
        return None
    with hooked_eval(model, hooks):
        model(x)
    ratios = []
    for y, m in outs:
        nb, k, h, w = y.shape
        h2, w2 = h // m * m, w // m * m
        t = y[:, :, :h2, :w2].reshape(nb, k, h2 // m, m, w2 // m, m).double()
        pos_mean = t.mean(dim=(0, 2, 4)).reshape(k, m * m)
        spread = pos_mean.max(dim=1).values - pos_mean.min(dim=1).values
        ratios.append((spread / y.double().transpose(0, 1).reshape(k, -1).std(dim=1).clamp_min(1e-12)).mean())
    return float(torch.stack(ratios).mean())


# ------------------------------------------------------------------------------------------------
# training


@dataclass
class Settings:
    epochs: int = 4
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    eta: float = 0.2
    l2_to_l1_end: float = 0.5       # p reaches 1 at this fraction of training
    # "linear": p from 2 to 1 over [0, l2_to_l1_end]; "step": p = 2 until l2_to_l1_end, then 1.
    # Step runs only p = 2 and p = 1, whose distances are fast (torch.cdist); 1 < p < 2 takes a
    # vectorised pow per term, ~40x slower on a CPU (about 4 CPU-hours per variant here).
    l2_to_l1_schedule: str = "linear"
    widths: tuple[int, int, int] = (16, 16, 32)
    seed: int = 0
    train_limit: int | None = None
    test_limit: int | None = None
    threads: int = 1
    extra: dict = field(default_factory=dict)


L2_TO_L1_SCHEDULES = ("linear", "step")


def schedule_p(progress: float, settings: Settings) -> float:
    """The distance exponent at ``progress`` ∈ [0, 1] of training under ``settings``' ℓ2→ℓ1 schedule."""
    if settings.l2_to_l1_schedule not in L2_TO_L1_SCHEDULES:
        raise ValueError(f"l2_to_l1_schedule must be one of {L2_TO_L1_SCHEDULES}, got {settings.l2_to_l1_schedule!r}")
    start = settings.l2_to_l1_end if settings.l2_to_l1_schedule == "step" else 0.0
    return l2_to_l1_p(progress, start, settings.l2_to_l1_end)


def _lr_at(step: int, total: int, base: float) -> float:
    # AdderNet's schedule ([code] huawei-noah/AdderNet main.py): cosine from base to 0.
    return 0.5 * base * (1 + math.cos(math.pi * step / total))


def train_variant(variant: Variant, data: tuple, settings: Settings, ckpt: Path, progress: bool = True) -> dict:
    """Train one variant to the end, resuming from ``ckpt`` if it exists; returns its result row."""
    xtr, ytr, xte, yte = data
    torch.manual_seed(settings.seed)
    model = make_model(variant, settings.widths, eta=settings.eta)
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                          weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(xtr) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    state = {"epoch": 0, "history": [], "cpu_seconds": 0.0}
    key = _settings_key(settings, variant)
    if ckpt.exists():
        saved = torch.load(ckpt, weights_only=False)
        # only a checkpoint of these settings is resumed: one of another run (other epochs, eta,
        # schedule...) in the same work directory is trained over, never reported as this one
        if saved.get("settings") == key:
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])
            state = saved["state"]
        else:
            print(f"{variant.name}: {ckpt} holds a run with other settings; training from scratch", file=sys.stderr)
    gen = torch.Generator().manual_seed(settings.seed)
    for _ in range(state["epoch"]):  # the same batch order as an uninterrupted run
        torch.randperm(len(xtr), generator=gen)
    for epoch in range(state["epoch"], settings.epochs):
        t0 = time.process_time()
        model.train()
        order = torch.randperm(len(xtr), generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"{variant.name} epoch {epoch + 1}/{settings.epochs}",
                   disable=not progress, file=sys.stderr, mininterval=10)
        run_loss = 0.0
        for i in bar:
            step = epoch * steps_per_epoch + i
            if variant.l2_to_l1:
                set_adder_p(model, schedule_p(step / total, settings))
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total, settings.lr)
            idx = order[i * settings.batch_size:(i + 1) * settings.batch_size]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run_loss += loss.item()
            if i % 50 == 49 and hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{run_loss / (i + 1):.3f}")
        if variant.l2_to_l1:
            set_adder_p(model, schedule_p((epoch + 1) / settings.epochs, settings))
        acc = round(100.0 * accuracy(model, TensorDataset(xte, yte)), 4)
        state["cpu_seconds"] += time.process_time() - t0
        state["epoch"] = epoch + 1
        state["history"].append({"epoch": epoch + 1, "train_loss": run_loss / steps_per_epoch, "test_acc": acc})
        print(f"{variant.name}: epoch {epoch + 1} train loss {run_loss / steps_per_epoch:.4f} "
              f"test acc {acc:.2f}% ({state['cpu_seconds']:.0f} CPU s so far)", file=sys.stderr, flush=True)
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state, "settings": key}, tmp)
        os.replace(tmp, ckpt)
    ops = count_ops(model, tuple(xtr.shape[1:]))
    return {
        "variant": variant.name, "layer": variant.layer, "matrices": variant.matrices or "-",
        "l2_to_l1": variant.l2_to_l1, "test_acc": state["history"][-1]["test_acc"],
        "best_acc": max(h["test_acc"] for h in state["history"]),
        "train_loss": state["history"][-1]["train_loss"],
        "adds_per_image": ops["adds"], "mults_per_image": ops["mults"],
        "tile_imbalance": tile_imbalance(model, xte[:500]),
        "cpu_seconds": round(state["cpu_seconds"], 1), "history": state["history"],
    }


def run_experiment(out_dir: str | Path, variants: Sequence[str], settings: Settings,
                   progress: bool = True) -> list[dict]:
    """Train each variant (skipping finished ones, resuming interrupted ones); return all rows.

    Finished rows are kept in ``out_dir/rows.jsonl``; checkpoints in ``out_dir/<variant>.pt``.
    """
    torch.set_num_threads(settings.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    done = {}
    if rows_path.exists():
        for line in rows_path.read_text().splitlines():
            r = json.loads(line)
            v = VARIANTS.get(r.get("variant"))
            if v is not None and _settings_key(r.get("settings", {}), v) == _settings_key(settings, v):
                done[r["variant"]] = r
    tr, te, _info = load_dataset("fashion-mnist", train_limit=settings.train_limit, test_limit=settings.test_limit)
    data = (*tr.tensors, *te.tensors)
    for name in variants:
        if name in done:
            print(f"{name}: done before ({done[name]['test_acc']:.2f}%), skipped", file=sys.stderr)
            continue
        row = train_variant(VARIANTS[name], data, settings, out / f"{name}.pt", progress)
        env = environment("cpu")
        row.update({"settings": _settings_key(settings, VARIANTS[name]), "train_size": len(data[0]),
                    "test_size": len(data[2]), **{key: env[key] for key in ENV_KEYS}})
        with rows_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        done[name] = row
    return [done[n] for n in variants if n in done]


# Settings that change only the ℓ2→ℓ1 variants: a finished run of another variant stays valid
# when they change.
_L2_TO_L1_FIELDS = ("l2_to_l1_end", "l2_to_l1_schedule")


def _settings_key(settings: Settings | dict, variant: Variant) -> dict:
    """The settings a finished run of ``variant`` depends on (older rows lack the schedule field:
    they ran the linear one)."""
    d = asdict(settings) if isinstance(settings, Settings) else dict(settings)
    d["widths"] = list(d.get("widths", ()))
    d.setdefault("l2_to_l1_schedule", "linear")
    if not variant.l2_to_l1:
        for f in _L2_TO_L1_FIELDS:
            d.pop(f, None)
    return d


# ------------------------------------------------------------------------------------------------
# output files

ENV_KEYS = ("device", "threads", "torch", "triton", "tritonwino", "timestamp")
COLUMNS = ("variant", "layer", "matrices", "l2_to_l1", "filters", "params", "test_acc", "best_acc", "train_loss",
           "adds_per_image", "mults_per_image", "tile_imbalance", "cpu_seconds", "epochs", "batch_size", "lr", "eta",
           "l2_to_l1_end", "l2_to_l1_schedule", "widths", "seed", "train_size", "test_size", *ENV_KEYS)


def write_outputs(rows: list[dict], stem: str | Path, settings: Settings) -> list[Path]:
    """``stem``.csv/.json (one row per variant), ``stem``_epochs.csv/.json (one row per variant and
    epoch), ``stem``.md (table + settings) and ``stem``.png (``plot_results`` of the two CSVs)."""
    stem = Path(stem)
    run = {"epochs": settings.epochs, "batch_size": settings.batch_size, "lr": settings.lr, "eta": settings.eta,
           "l2_to_l1_end": settings.l2_to_l1_end, "l2_to_l1_schedule": settings.l2_to_l1_schedule,
           "widths": "-".join(map(str, settings.widths)), "seed": settings.seed}
    # derived from the variant, not stored: rows written before these columns existed still get them
    rows = [{**r, "filters": _filters_label(VARIANTS[r["variant"]]),
             "params": _param_count(VARIANTS[r["variant"]], settings.widths)} for r in rows]
    summary = [{c: {**r, **run}.get(c) for c in COLUMNS} for r in rows]
    epochs = [{"variant": r["variant"], **h} for r in rows for h in r["history"]]
    paths = [*write_rows(summary, stem.parent, stem.name), *write_rows(epochs, stem.parent, stem.name + "_epochs")]
    cnn = next((r for r in rows if r["layer"] == "conv"), None)
    table = [{
        "variant": r["variant"], "matrices": r["matrices"], "ℓ2→ℓ1": "yes" if r["l2_to_l1"] else "no",
        "filters": r["filters"], "params": f"{r['params']:,}",
        "test acc %": f"{r['test_acc']:.2f}", "Δ vs CNN": f"{r['test_acc'] - cnn['test_acc']:+.2f}" if cnn else "",
        "best %": f"{r['best_acc']:.2f}", "adds/image": f"{r['adds_per_image']:,}",
        "mults/image": f"{r['mults_per_image']:,}",
        "tile imbalance": "" if r["tile_imbalance"] is None else f"{r['tile_imbalance']:.3f}",
        "CPU s": f"{r['cpu_seconds']:.0f}",
    } for r in rows]
    lines = [
        "# AdderNet and Winograd AdderNet on Fashion-MNIST (CPU)",
        "",
        f"Written by `bench/adder_fashion_mnist.py`. Model: conv3x3({settings.widths[0]}) → 2 × "
        f"[layer3x3 → BN → ReLU → pool] ({settings.widths[1]}, {settings.widths[2]} channels) → Linear; "
        "only the two middle layers differ. "
        f"{settings.epochs} epochs, batch {settings.batch_size}, SGD momentum {settings.momentum}, weight decay "
        f"{settings.weight_decay}, cosine lr from {settings.lr}, adaptive-lr eta {settings.eta} on adder layers; "
        + (f"ℓ2→ℓ1: p from 2 to 1 linearly over the first {settings.l2_to_l1_end:.0%} of the steps. "
           if settings.l2_to_l1_schedule == "linear" else
           f"ℓ2→ℓ1: p = 2 for the first {settings.l2_to_l1_end:.0%} of the steps, then p = 1 (a step: 1 < p < 2 "
           "costs ~40x more CPU time per step). ")
        + "Seed "
        f"{settings.seed}, torch threads {settings.threads}. Test accuracy after the last epoch (best: over "
        "epochs). Ops per image: the conv-like layers, BatchNorm where it cannot be folded, and the classifier "
        "(conventions in `tritonwino.experiments.adder.count_ops`). Tile imbalance: spread of a Winograd adder "
        "layer's per-tile-position channel means over the channel's std, on 500 test images "
        "(`tile_imbalance`). Filters: the adder layers' parameter, spatial W (r×r) or Winograd-domain U "
        "(n×n); params: the whole network's. CPU s: process CPU time of training and evaluation.",
        "",
        markdown_table(table, list(table[0]) if table else []),
    ]
    if rows:
        r0 = rows[0]
        lines += ["", f"Device: {r0['device']}, {r0['threads']} thread(s); torch {r0['torch']}, triton {r0['triton']}, "
                      f"tritonwino {r0['tritonwino']}; train/test {r0['train_size']}/{r0['test_size']} images; "
                      f"finished {max(r['timestamp'] for r in rows)}."]
    # names built by appending: a stem with a dot (adder_eta0.5) must not lose its tail to with_suffix
    md = stem.parent / f"{stem.name}.md"
    md.write_text("\n".join(lines) + "\n")
    png = plot_results(stem.parent / f"{stem.name}.csv", stem.parent / f"{stem.name}_epochs.csv",
                       stem.parent / f"{stem.name}.png")
    return [*paths, md, png]


def _filters_label(v: Variant) -> str:
    if v.layer != "winograd":
        return "-"
    return "U (winograd)" if v.filters == "winograd" else "W (spatial)"


def _param_count(v: Variant, widths: Sequence[int]) -> int:
    return sum(t.numel() for t in make_model(v, widths).parameters())


def plot_results(summary_csv: str | Path, epochs_csv: str | Path, png: str | Path) -> Path:
    """Test accuracy per epoch and counted operations per image, from the saved rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(summary_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(epochs_csv, newline="") as f:
        epochs = list(csv.DictReader(f))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in rows:
        h = [e for e in epochs if e["variant"] == r["variant"]]
        ax1.plot([int(e["epoch"]) for e in h], [float(e["test_acc"]) for e in h], marker="o", label=r["variant"])
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("test accuracy (%)")
    ax1.set_title("Fashion-MNIST test accuracy")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    xs = list(range(len(rows)))
    ax2.bar([x - 0.2 for x in xs], [int(r["adds_per_image"]) for r in rows], 0.4, label="additions")
    ax2.bar([x + 0.2 for x in xs], [max(int(r["mults_per_image"]), 1) for r in rows], 0.4, label="multiplications")
    ax2.set_yscale("log")
    ax2.set_xticks(xs, [r["variant"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax2.set_ylabel("operations per image (counted)")
    ax2.set_title("counted work per image")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    png = Path(png)
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png
