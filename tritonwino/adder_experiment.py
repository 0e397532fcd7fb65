"""The AdderNet experiment: one small CNN trained as a CNN, an AdderNet and Winograd AdderNets.

Four layer kinds share one architecture (``make_model``): the first convolution and the
classifier stay multiplication-based, as in AdderNet; the two middle 3×3 layers are ``Conv2d``,
``AdderConv2d`` or ``WinogradAdderConv2d`` (standard or balanced matrices), each followed by
BatchNorm, ReLU and 2×2 max-pooling. ``count_ops`` counts additions and multiplications per image;
``run_experiment`` trains every variant (resumable from per-run checkpoints) and writes result
rows. Used by ``bench/adder_fashion_mnist.py``.
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

from .adder import AdderConv2d, WinogradAdderConv2d, l2_to_l1_p, set_adder_p, winograd_adder_matrices

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover - tqdm is a dependency; keep the loop usable without it
    def tqdm(x, **_):
        return x

__all__ = ["VARIANTS", "Variant", "make_model", "count_ops", "tile_imbalance", "run_experiment"]


@dataclass(frozen=True)
class Variant:
    name: str
    layer: str                 # "conv" | "adder" | "winograd"
    matrices: str = ""         # winograd only: "standard" | "balanced"
    l2_to_l1: bool = False


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("cnn", "conv"),
    Variant("addernet", "adder"),
    Variant("wino-standard", "winograd", "standard"),
    Variant("wino-standard-l2l1", "winograd", "standard", True),
    Variant("wino-balanced", "winograd", "balanced"),
    Variant("wino-balanced-l2l1", "winograd", "balanced", True),
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
            mid = WinogradAdderConv2d(cin, cout, 3, padding=1, m=2, matrices=v.matrices, eta=eta)
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
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
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
    widths: tuple[int, int, int] = (16, 16, 32)
    seed: int = 0
    train_limit: int | None = None
    test_limit: int | None = None
    threads: int = 1
    extra: dict = field(default_factory=dict)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> tuple[float, float]:
    """(accuracy in %, mean cross-entropy) of ``model`` on (x, y)."""
    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out = model(x[i:i + batch_size])
            loss += float(F.cross_entropy(out, y[i:i + batch_size], reduction="sum"))
            correct += int((out.argmax(1) == y[i:i + batch_size]).sum())
    return 100.0 * correct / max(1, len(x)), loss / max(1, len(x))


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
    if ckpt.exists():
        saved = torch.load(ckpt, weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        state = saved["state"]
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
                set_adder_p(model, l2_to_l1_p(step / total, 0.0, settings.l2_to_l1_end))
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
            set_adder_p(model, l2_to_l1_p((epoch + 1) / settings.epochs, 0.0, settings.l2_to_l1_end))
        acc, test_loss = evaluate(model, xte, yte)
        state["cpu_seconds"] += time.process_time() - t0
        state["epoch"] = epoch + 1
        state["history"].append({"epoch": epoch + 1, "train_loss": run_loss / steps_per_epoch,
                                 "test_acc": acc, "test_loss": test_loss})
        print(f"{variant.name}: epoch {epoch + 1} train loss {run_loss / steps_per_epoch:.4f} "
              f"test acc {acc:.2f}% ({state['cpu_seconds']:.0f} CPU s so far)", file=sys.stderr, flush=True)
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state}, tmp)
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
    from .data import load_dataset
    from .info import collect

    torch.set_num_threads(settings.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    done = {}
    if rows_path.exists():
        for line in rows_path.read_text().splitlines():
            r = json.loads(line)
            if r.get("settings") == _settings_key(settings):
                done[r["variant"]] = r
    tr, te, _info = load_dataset("fashion-mnist", train_limit=settings.train_limit, test_limit=settings.test_limit)
    data = (*tr.tensors, *te.tensors)
    env = collect()
    for name in variants:
        if name in done:
            print(f"{name}: done before ({done[name]['test_acc']:.2f}%), skipped", file=sys.stderr)
            continue
        row = train_variant(VARIANTS[name], data, settings, out / f"{name}.pt", progress)
        row.update({
            "settings": _settings_key(settings), "threads": settings.threads, "device": "cpu",
            "cpu_model": env["device"]["cpu_model"], "torch": env["versions"]["torch"],
            "triton": env["versions"]["triton"], "tritonwino": env["versions"]["tritonwino"],
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "train_size": len(data[0]), "test_size": len(data[2]),
        })
        with rows_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        done[name] = row
    return [done[n] for n in variants if n in done]


def _settings_key(settings: Settings) -> dict:
    d = asdict(settings)
    d["widths"] = list(d["widths"])
    return d


# ------------------------------------------------------------------------------------------------
# output files

COLUMNS = ("variant", "layer", "matrices", "l2_to_l1", "test_acc", "best_acc", "train_loss", "adds_per_image",
           "mults_per_image", "tile_imbalance", "cpu_seconds", "threads", "device", "cpu_model", "torch", "triton",
           "tritonwino", "timestamp", "train_size", "test_size")


def write_outputs(rows: list[dict], stem: str | Path, settings: Settings) -> list[Path]:
    """``stem``.csv (one row per variant), .md (table + settings) and .png (curves + op counts)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    with stem.with_suffix(".csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*COLUMNS, "epochs", "batch_size", "lr", "eta", "widths", "seed"])
        w.writeheader()
        for r in rows:
            w.writerow({**{c: r.get(c) for c in COLUMNS}, "epochs": settings.epochs, "batch_size": settings.batch_size,
                        "lr": settings.lr, "eta": settings.eta, "widths": "-".join(map(str, settings.widths)),
                        "seed": settings.seed})
    cnn = next((r for r in rows if r["layer"] == "conv"), None)
    lines = [
        "# AdderNet and Winograd AdderNet on Fashion-MNIST (CPU)",
        "",
        f"Written by `bench/adder_fashion_mnist.py`. Model: conv3x3({settings.widths[0]}) → 2 × "
        f"[layer3x3 → BN → ReLU → pool] ({settings.widths[1]}, {settings.widths[2]} channels) → Linear; "
        "only the two middle layers differ. "
        f"{settings.epochs} epochs, batch {settings.batch_size}, SGD momentum {settings.momentum}, weight decay "
        f"{settings.weight_decay}, cosine lr from {settings.lr}, adaptive-lr eta {settings.eta} on adder layers; "
        f"ℓ2→ℓ1: p from 2 to 1 linearly over the first {settings.l2_to_l1_end:.0%} of the steps. Seed "
        f"{settings.seed}, torch threads {settings.threads}. "
        f"Ops per image: the conv-like layers, BatchNorm where it cannot be folded, and the classifier "
        f"(conventions in `tritonwino.adder_experiment.count_ops`).",
        "",
        "| variant | matrices | ℓ2→ℓ1 | test acc % | Δ vs CNN | best % | adds/image | mults/image "
        "| tile imbalance | CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        delta = f"{r['test_acc'] - cnn['test_acc']:+.2f}" if cnn else "-"
        imb = "-" if r["tile_imbalance"] is None else f"{r['tile_imbalance']:.3f}"
        lines.append(f"| {r['variant']} | {r['matrices']} | {'yes' if r['l2_to_l1'] else 'no'} | {r['test_acc']:.2f} | "
                     f"{delta} | {r['best_acc']:.2f} | {r['adds_per_image']:,} | {r['mults_per_image']:,} | {imb} | "
                     f"{r['cpu_seconds']:.0f} |")
    if rows:
        r0 = rows[0]
        lines += ["", f"Device: {r0['cpu_model']} (CPU, {r0['threads']} thread); torch {r0['torch']}, "
                      f"triton {r0['triton']}, tritonwino {r0['tritonwino']}; train/test {r0['train_size']}/"
                      f"{r0['test_size']} images; finished {max(r['timestamp'] for r in rows)}."]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return [stem.with_suffix(".csv"), stem.with_suffix(".md"), plot_rows(rows, stem.with_suffix(".png"))]


def plot_rows(rows: list[dict], png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in rows:
        h = r["history"]
        ax1.plot([e["epoch"] for e in h], [e["test_acc"] for e in h], marker="o", label=r["variant"])
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("test accuracy (%)")
    ax1.set_title("Fashion-MNIST test accuracy")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    names = [r["variant"] for r in rows]
    xs = range(len(rows))
    ax2.bar([x - 0.2 for x in xs], [r["adds_per_image"] for r in rows], 0.4, label="additions")
    ax2.bar([x + 0.2 for x in xs], [max(r["mults_per_image"], 1) for r in rows], 0.4, label="multiplications")
    ax2.set_yscale("log")
    ax2.set_xticks(list(xs), names, rotation=30, ha="right", fontsize=8)
    ax2.set_ylabel("operations per image (counted)")
    ax2.set_title("counted work per image")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png
