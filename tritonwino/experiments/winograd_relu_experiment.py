"""Winograd-ReLU networks (Liu et al. 2018) against spatial-Winograd pruning (Yu et al. 2019) and
Li et al.'s native Winograd pruning on Fashion-MNIST: accuracy versus Winograd-domain sparsity and
multiplications per image, on the same model family, data, seed and step budget as the pruning
experiment (``tritonwino.experiments.pruning_experiment``).

Arms (SmallVGG(16,M,32,32,M,64) with BatchNorm; the first conv stays dense and spatial everywhere):

* ``yu``: the dense spatial model (``--dense-steps`` SGD steps, lr 0.05), step 1 (spatial structured
  pruning) through ``--spatial-targets`` at lr 0.01, then step 2 (Winograd-direct, |Q|·F̂,
  grad / F̂^1.5) through ``--winograd-targets`` at ``--winograd-lr``.
* ``li``: the same dense model converted to Winograd-domain layers, Li's A-scaled threshold through
  all targets at ``--winograd-lr``.
* ``wrelu``: the Winograd-ReLU network — every ReLU→(MaxPool)→3×3 conv pair rewritten by
  ``convert_to_winograd_relu`` (ReLU after the input transform, weights in the Winograd domain),
  trained from scratch for the same ``--dense-steps`` at ``--wrelu-lr`` (Liu et al. train their
  network from scratch), then Liu's schedule: per-layer magnitude pruning of Q to each target, the
  new mask computed on Q ⊙ previous mask, retraining with the mask fixed (``WinogradPruner("liu")``),
  at ``--winograd-lr``.
* ``liu`` (optional): the same magnitude schedule on plain Winograd layers (no ReLU move).

Every pruning stage retrains ``--stage-steps`` SGD steps (momentum 0.9, wd 5e-4, bs 128, cosine).
The from-scratch lr of the Winograd-ReLU network (0.01) was picked by a 200-step probe on 2000
held-out *training* examples (20000-22000, not the test set) over {0.05, 0.01, 0.002}: validation
top-1 79.4 / 80.9 / 81.1 % (final loss 0.67 / 0.67 / 0.82), against 82.2 % for the spatial model at
its lr 0.05 [ours].
Every arm sees the same targets (``--spatial-targets`` + ``--winograd-targets``), i.e. the same
number of stages and steps.

Multiplications per image (the Winograd-domain elementwise stage of the three pruned layers, which
is what sparsity removes; transforms and the dense first layer are not counted):

* ``mults_direct``: a dense direct convolution, Σ H·W·K·C·9;
* ``mults_winograd_dense``: dense F(m, 3), Σ tiles·n²·C·K;
* ``mults_weight_sparse``: skipping pruned weights, Σ tiles·nnz(Q);
* ``mults_weight_act_sparse``: skipping pruned weights and zero transformed activations (Liu et
  al.'s count): Σ over positions p and channels c of nnz_k(Q[:, c, p]) · #{tiles t: V[p, c, t] ≠ 0},
  measured on ``--act-images`` test images. Winograd-ReLU zeroes about half of V; a spatial ReLU
  leaves V = Bᵀ X B mostly nonzero.

Resumable: every finished stage is checkpointed under ``OUT.state/`` (model, masks, batch stream)
and its row appended to ``OUT.csv``; rerunning the same command continues where it stopped.
Writes ``OUT.csv``, ``OUT.md`` and ``OUT.png``. Times are CPU (process) and wall times on 1 thread.

Example:
    python bench/winograd_relu_fashion_mnist.py --stage-steps 5 --dense-steps 10 --out /tmp/wr
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .. import reference
from ..env import environment
from ..pruning import (
    SpatialPruner,
    WinogradConv2d,
    WinogradPruner,
    conv_winograd_weight,
    convert_to_winograd,
    convert_to_winograd_relu,
    model_winograd_sparsity,
)
from ..tables import markdown_table
from .data import load_dataset
from .models import SmallVGG
from .training import Batches, accuracy, hooked_eval, train

__all__ = ["count_multiplications", "main", "parse_args", "plot", "pruned_layer_names", "run", "write_table"]

METHODS = ("yu", "li", "wrelu", "liu")
LABELS = {"yu": "spatial-Winograd (Yu)", "li": "native (Li)", "wrelu": "Winograd-ReLU + Liu pruning",
          "liu": "magnitude (Liu), no ReLU move"}
FIRST = "features.0"  # the first conv: no ReLU before it, kept dense and spatial in every arm
BATCH = 128


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Winograd-ReLU vs spatial-Winograd vs Li pruning on Fashion-MNIST "
                                             "(accuracy vs Winograd-domain sparsity and multiplications per image)")
    ap.add_argument("--out", required=True, help="path stem: writes OUT.csv, OUT.md, OUT.png and OUT.state/")
    ap.add_argument("--methods", default="yu,li,wrelu", help=f"comma-separated, of {','.join(METHODS)}")
    ap.add_argument("--m", type=int, default=4, help="output tile of F(m, 3) for every arm (default 4)")
    ap.add_argument("--train-limit", type=int, default=20000)
    ap.add_argument("--test-limit", type=int, default=2000)
    ap.add_argument("--dense-steps", type=int, default=625, help="SGD steps of each dense model (default 625 = "
                                                                   "4 epochs of 20000, as the pruning experiment)")
    ap.add_argument("--stage-steps", type=int, default=300)
    ap.add_argument("--spatial-targets", default="0.3,0.5,0.6,0.7")
    ap.add_argument("--winograd-targets", default="0.75,0.8,0.85")
    ap.add_argument("--winograd-lr", type=float, default=3e-4, help="lr of every Winograd-domain fine-tuning stage")
    ap.add_argument("--wrelu-lr", type=float, default=0.01, help="lr of the from-scratch Winograd-ReLU training")
    ap.add_argument("--act-images", type=int, default=500, help="test images the activation count runs on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dataset", default="auto")
    ap.add_argument("--plot-only", action="store_true", help="only rebuild OUT.md / OUT.png from OUT.csv")
    args = ap.parse_args(argv)
    bad = [mth for mth in args.methods.split(",") if mth and mth not in METHODS]
    if bad:
        ap.error(f"unknown methods {bad}; choose from {METHODS}")
    return args


# ------------------------------------------------------------------------------------------------
# counting
# ------------------------------------------------------------------------------------------------
def _layer_q(mod: nn.Module, m: int) -> torch.Tensor:
    return mod.q.detach() if isinstance(mod, WinogradConv2d) else conv_winograd_weight(mod, m)


def count_multiplications(model: nn.Module, names: list[str], x: torch.Tensor, m: int) -> dict[str, float]:
    """Per-image multiplications of the Winograd-domain stage of layers ``names`` on inputs ``x``
    (module docstring), and the density of the transformed activations V.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        >>> c = count_multiplications(net, ["2"], torch.randn(2, 1, 8, 8), 2)
        >>> c["mults_direct"], c["mults_winograd_dense"]
        (9216.0, 4096.0)
    """
    mods = dict(model.named_modules())
    inputs: dict[str, torch.Tensor] = {}
    hooks = [mods[n].register_forward_pre_hook(lambda mod, args, n=n: inputs.__setitem__(n, args[0].detach()))
             for n in names]
    with hooked_eval(model, hooks):
        model(x)
    nb = x.shape[0]
    tot = {"mults_direct": 0.0, "mults_winograd_dense": 0.0, "mults_weight_sparse": 0.0,
           "mults_weight_act_sparse": 0.0}
    v_nonzero = v_total = 0
    for n in names:
        mod, xin = mods[n], inputs[n]
        q = _layer_q(mod, m)
        k, c, nn_, _ = q.shape
        r = nn_ - m + 1
        pad = tuple(mod.padding)
        wrelu = bool(getattr(mod, "winograd_relu", False))
        with torch.no_grad():
            v = reference.input_transform(xin, m, r, pad, getattr(mod, "points", None), winograd_relu=wrelu)
        ho, wo = xin.shape[2] + 2 * pad[0] - r + 1, xin.shape[3] + 2 * pad[1] - r + 1
        tiles = v.shape[2]  # N · th · tw
        nnz_q = (q != 0).sum(dim=0).permute(1, 2, 0).reshape(nn_ * nn_, c).double()  # (P, C)
        nz_v = (v != 0).sum(dim=2).double()  # (P, C): tiles with a nonzero V
        tot["mults_direct"] += nb * ho * wo * k * c * r * r
        tot["mults_winograd_dense"] += tiles * nn_ * nn_ * c * k
        tot["mults_weight_sparse"] += tiles * float(nnz_q.sum())
        tot["mults_weight_act_sparse"] += float((nnz_q * nz_v).sum())
        v_nonzero += int((v != 0).sum())
        v_total += v.numel()
    out = {key: val / nb for key, val in tot.items()}
    out["act_density"] = v_nonzero / max(v_total, 1)
    return out


# ------------------------------------------------------------------------------------------------
# the arms
# ------------------------------------------------------------------------------------------------
def _dense_model(info: dict, wrelu: bool, m: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = SmallVGG(num_classes=info["num_classes"], in_channels=info["in_channels"])
    if wrelu:
        convert_to_winograd_relu(model, m=m)
    return model


def pruned_layer_names(model: nn.Module) -> list[str]:
    """Every conv but the first (which has no ReLU before it and stays dense in every arm)."""
    return [n for n, mod in model.named_modules() if isinstance(mod, nn.Conv2d | WinogradConv2d) and n != FIRST]


class _Arm:
    """One method's model and pruner at a given stage, rebuilt identically on resume."""

    def __init__(self, method: str, args, info: dict, dense_state: dict, s_targets, w_targets):
        self.method, self.args = method, args
        self.targets = list(s_targets) + list(w_targets)
        self.n_spatial = len(s_targets) if method == "yu" else 0
        self.model = _dense_model(info, method == "wrelu", args.m, args.seed)
        self.model.load_state_dict(dense_state)
        self.pruner = None
        self.phase = None

    def enter(self, stage: int) -> None:
        """Build the structure (layers, pruner, mask buffers) that stage ``stage`` prunes."""
        m, method = self.args.m, self.method
        if method == "yu" and stage < self.n_spatial:
            want = "spatial"
        else:
            want = "winograd"
        if want == self.phase:
            return
        if want == "spatial":
            self.pruner = SpatialPruner(self.model, m=m, block=(1, 1))
        else:
            if method != "wrelu":
                convert_to_winograd(self.model, m=m, filter_fn=lambda conv, name: name != FIRST)
            rule = {"yu": "yu", "li": "li", "liu": "liu", "wrelu": "liu"}[method]
            self.pruner = WinogradPruner(self.model, method=rule, block=(1, 1), keep_dense=None)
        self.phase = want

    def lr(self, stage: int) -> float:
        return 0.01 if self.phase == "spatial" else self.args.winograd_lr


def _ordered(rows: list[dict]) -> list[dict]:
    # a resumed or re-run arm appends its rows at the end: keep files in (method, stage) order
    rank = {m: i for i, m in enumerate(METHODS)}
    return sorted(rows, key=lambda r: (rank.get(r["method"], len(rank)), int(r["stage"])))


def _write_csv(path: Path, rows: list[dict]) -> None:
    rows = _ordered(rows)
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def _read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> int:
    out = Path(args.out)
    # appended to the stem: one with a dot (run0.5) keeps its name, and two such runs never share
    # (and overwrite) one file
    csv_path, md_path, png_path, state_dir = (Path(f"{out}{ext}") for ext in (".csv", ".md", ".png", ".state"))
    if args.plot_only:
        rows = _read_csv(csv_path)
        if not rows:
            raise SystemExit(f"{csv_path} has no rows")
        write_table(rows, md_path)
        plot(rows, png_path)
        return 0
    torch.set_num_threads(args.threads)
    state_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = state_dir / "config.json"
    cfg = {k: v for k, v in vars(args).items() if k not in ("out", "methods", "plot_only", "act_images")}
    if cfg_path.exists() and json.loads(cfg_path.read_text()) != cfg:
        raise SystemExit(f"{state_dir} holds a run with other settings ({cfg_path}); use another --out or delete it")
    cfg_path.write_text(json.dumps(cfg, indent=1))

    tr, te, info = load_dataset(args.dataset, train_limit=args.train_limit, test_limit=args.test_limit)
    s_targets = [float(v) for v in args.spatial_targets.split(",") if v]
    w_targets = [float(v) for v in args.winograd_targets.split(",") if v]
    x_act = te.tensors[0][: args.act_images]
    env = environment("cpu")
    common = {"dataset": info["name"], "train_examples": len(tr), "test_examples": len(te),
              "model": "SmallVGG(16,M,32,32,M,64)+BN", "tile": f"F({args.m},3)", "dense_steps": args.dense_steps,
              "stage_steps": args.stage_steps, "batch_size": BATCH, "winograd_lr": args.winograd_lr,
              "wrelu_lr": args.wrelu_lr, "act_images": len(x_act), "seed": args.seed, "device": env["device"],
              "threads": torch.get_num_threads(), "torch": env["torch"], "triton": env["triton"],
              "tritonwino": env["tritonwino"]}
    rows = _read_csv(csv_path)
    done = {(r["method"], int(r["stage"])) for r in rows}

    def timed_train(model, batches, steps, lr, step, desc) -> tuple[float, float]:
        c0, w0 = time.process_time(), time.perf_counter()
        train(model, batches, steps, lr, step=step, cosine=True, desc=desc)
        return time.process_time() - c0, time.perf_counter() - w0

    # the two dense models (spatial for yu / li / liu, Winograd-ReLU for wrelu)
    dense: dict[bool, tuple[dict, float]] = {}
    methods = [mth for mth in args.methods.split(",") if mth]
    for wrelu in sorted({mth == "wrelu" for mth in methods}):
        path = state_dir / f"dense_{'wrelu' if wrelu else 'spatial'}.pt"
        if path.exists():
            ck = torch.load(path, weights_only=False)
        else:
            model = _dense_model(info, wrelu, args.m, args.seed)
            lr = args.wrelu_lr if wrelu else 0.05
            cpu, wall = timed_train(model, Batches(tr, BATCH, seed=args.seed), args.dense_steps, lr, None,
                                    "dense wrelu" if wrelu else "dense")
            ck = {"model": model.state_dict(), "top1": 100.0 * accuracy(model, te), "cpu_s": cpu, "wall_s": wall}
            torch.save(ck, path)
        dense[wrelu] = (ck["model"], ck["top1"])
        log(f"dense {'Winograd-ReLU' if wrelu else 'spatial'} top-1 {ck['top1']:.2f}%")

    for method in methods:
        state, top1_dense = dense[method == "wrelu"]
        arm = _Arm(method, args, info, state, s_targets, w_targets)
        batches = Batches(tr, BATCH, seed=args.seed + 1)
        pruned = pruned_layer_names(arm.model)
        if (method, -1) not in done:  # the arm's dense starting point, as a row
            counts = count_multiplications(arm.model, pruned, x_act, args.m)
            sp = model_winograd_sparsity(arm.model, m=args.m, layers=pruned)["overall"]
            rows.append(_row(method, -1, 0.0, sp, top1_dense, top1_dense, counts, 0.0, 0.0, common))
            _write_csv(csv_path, rows)
        start = 0
        ck_path = state_dir / f"{method}.pt"
        if ck_path.exists():
            ck = torch.load(ck_path, weights_only=False)
            start = ck["stage"] + 1
            arm.enter(ck["stage"])
            arm.model.load_state_dict(ck["model"])
            batches.set_state(ck["batches"])
            log(f"{method}: resuming after stage {ck['stage']}")
        for stage in range(start, len(arm.targets)):
            target = arm.targets[stage]
            arm.enter(stage)
            arm.pruner.prune(target)
            cpu, wall = timed_train(arm.model, batches, args.stage_steps, arm.lr(stage), arm.pruner.step,
                                    f"{method} {target}")
            sp = model_winograd_sparsity(arm.model, m=args.m, layers=pruned)["overall"]
            top1 = 100.0 * accuracy(arm.model, te)
            counts = count_multiplications(arm.model, pruned, x_act, args.m)
            rows = [r for r in rows if (r["method"], int(r["stage"])) != (method, stage)]
            rows.append(_row(method, stage, target, sp, top1, top1_dense, counts, cpu, wall, common,
                             phase=arm.phase))
            _write_csv(csv_path, rows)
            torch.save({"stage": stage, "model": arm.model.state_dict(), "batches": batches.state()},
                       ck_path)
            log(f"{method:6s} stage {stage} target {target:.2f}: Winograd sparsity {sp:.4f}, top-1 {top1:.2f}%, "
                f"mults/image {counts['mults_weight_act_sparse']:.3g} (weights+activations)")
    write_table(rows, md_path)
    plot(rows, png_path)
    log(f"wrote {csv_path}, {md_path}, {png_path}")
    return 0


def _row(method, stage, target, sparsity, top1, top1_dense, counts, cpu, wall, common, phase="dense") -> dict:
    return {"method": method, "label": LABELS[method], "stage": stage, "phase": phase if stage >= 0 else "dense",
            "target": round(target, 4), "winograd_sparsity": round(sparsity, 4), "top1": round(top1, 2),
            "top1_dense": round(top1_dense, 2), "top1_loss": round(top1_dense - top1, 2),
            **{k: round(v, 1) for k, v in counts.items() if k.startswith("mults")},
            "act_density": round(counts["act_density"], 4),
            "reduction_weight_sparse": round(counts["mults_direct"] / max(counts["mults_weight_sparse"], 1), 2),
            "reduction_weight_act_sparse": round(counts["mults_direct"] / max(counts["mults_weight_act_sparse"], 1),
                                                 2),
            "cpu_s": round(cpu, 1), "wall_s": round(wall, 1), **common,
            "timestamp": environment("cpu")["timestamp"]}


# ------------------------------------------------------------------------------------------------
# table and plot (from the rows only)
# ------------------------------------------------------------------------------------------------
TABLE_COLUMNS = ("method", "stage", "phase", "target", "winograd_sparsity", "top1", "top1_loss", "act_density",
                 "mults_weight_sparse", "mults_weight_act_sparse", "reduction_weight_sparse",
                 "reduction_weight_act_sparse")


def write_table(rows: list[dict], path: Path) -> None:
    rows = _ordered(rows)
    first = rows[0]
    cpu = sum(float(r["cpu_s"]) for r in rows)
    text = [
        "# Winograd-ReLU vs spatial-Winograd vs native pruning (Fashion-MNIST, CPU, short schedule)", "",
        f"Settings: {first['dataset']} ({first['train_examples']} train / {first['test_examples']} test), "
        f"{first['model']}, {first['tile']} for every arm, dense models {first['dense_steps']} SGD steps, "
        f"{first['stage_steps']} steps per pruning stage (bs {first['batch_size']}), Winograd-domain lr "
        f"{first['winograd_lr']}, Winograd-ReLU from-scratch lr {first['wrelu_lr']}, seed {first['seed']}. "
        f"{first['device']}, {first['threads']} thread(s), torch {first['torch']}, triton {first['triton']}, "
        f"tritonwino {first['tritonwino']}. CPU time of the pruning stages {cpu:.0f} s (process time).", "",
        "Stage -1 is each arm's dense starting point: the spatial dense model for yu/li(/liu), the "
        "Winograd-ReLU network trained from scratch for wrelu. Winograd sparsity = exact zeros of Q over the "
        "three pruned layers (first conv dense in every arm). Multiplications per image: Winograd-domain "
        f"stage of those layers; direct dense conv = {float(first['mults_direct']):.4g}, dense "
        f"F(m,3) = {float(first['mults_winograd_dense']):.4g}. `act_density` = nonzero fraction of the "
        f"transformed activations V (measured on {first['act_images']} test images); "
        "`*_weight_act_sparse` skips zero weights and zero activations (Liu et al.'s count), "
        "`reduction_*` = direct / that count.", "",
    ]
    text.append(markdown_table(rows, TABLE_COLUMNS, lambda v: str(v)))
    path.write_text("\n".join(text) + "\n")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.3))
    for method in dict.fromkeys(r["method"] for r in rows):
        sub = sorted((r for r in rows if r["method"] == method), key=lambda r: int(r["stage"]))
        sp = [100 * float(r["winograd_sparsity"]) for r in sub]
        acc = [float(r["top1"]) for r in sub]
        mults = [float(r["mults_weight_act_sparse"]) / 1e6 for r in sub]
        line = axes[0].plot(sp, acc, marker="o", ms=3, label=LABELS[method])[0]
        axes[1].plot(mults, acc, marker="o", ms=3, color=line.get_color(), label=LABELS[method])
    first = rows[0]
    axes[0].set_xlabel("Winograd-domain sparsity of the pruned layers (%)")
    axes[1].set_xlabel("multiplications per image, zero weights and zero activations skipped (M)")
    axes[1].set_xscale("log")
    axes[1].invert_xaxis()
    for ax in axes:
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{first['dataset']} {first['model']} {first['tile']}: {first['stage_steps']} steps/stage, "
                 f"CPU, {first['threads']} thread(s), seed {first['seed']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
