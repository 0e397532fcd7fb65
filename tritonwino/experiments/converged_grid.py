"""Pruning from converged dense models: every method × granularity × seed (× recipe) of the
pruning comparison in one resumable command, reported as mean ± std over seeds against the
converged dense model of the same seed.

Protocol (defaults; every number is an option, ``--help``):

* **Data**: full Fashion-MNIST (60000 train / 10000 test), normalised with the training split's
  statistics; or CIFAR-10 / CIFAR-100 from ``--data-dir`` (the python pickle batches, nothing is
  downloaded). ``--train-limit`` / ``--test-limit`` keep the first N examples (smoke runs).
* **Dense model** per seed: ``--dense-epochs`` epochs of SGD (momentum 0.9, wd 5e-4, batch 128)
  from lr ``--dense-lr``, cosine-annealed to 0, with light augmentation (random crop of the image
  zero-padded by ``--crop-pad`` pixels + horizontal flip). The test top-1 and the training loss are
  recorded every ``--eval-every`` steps (``OUT_curve.csv``), so the curve shows whether it has
  converged. The test set is only *looked at* for the curve; nothing is tuned on it here.
* **Pruning** starts from that converged model for every cell (method, granularity, recipe); every
  stage prunes to the next target and retrains ``--stage-epochs`` epochs in the spatial domain or
  ``--winograd-stage-epochs`` in the Winograd domain (cosine from the stage lr, same augmentation,
  one batch stream per seed shared by all cells):

  - ``yu``: spatial-Winograd pruning [Yu et al. 2019]: step 1 (spatial structured pruning, lr
    ``--spatial-lr``) through ``--spatial-targets``, then step 2 (Winograd-direct pruning with the
    importance factor, gradients / F̂^1.5, lr ``--winograd-lr``) through ``--winograd-targets``;
  - ``li``: Li et al.'s native Winograd-domain pruning (A-scaled threshold) through all targets;
  - ``liu``: Liu et al.'s Winograd-domain magnitude pruning through all targets;
  - ``wrelu``: Liu et al.'s Winograd-ReLU network, trained from scratch per seed exactly as the
    dense model (rows ``method == "dense-wrelu"``), then their magnitude pruning through all targets;
  - ``spatial``: spatial unstructured magnitude pruning (the target is a *spatial* sparsity) through
    all targets; element granularity only (a spatial magnitude mask has no (bk, 1) form).

  Granularity ``BKx1`` prunes whole groups of BK output channels per (input channel, Winograd
  position) — the GPU kernel's vector format; ``1x1`` is the paper's element granularity.
  The first 3×3 conv stays dense and spatial in every cell [ours; the authors prune it to a
  fixed 20 %]; Winograd sparsity is the fraction of exact zeros of Q = G W Gᵀ over the other
  3×3 convs.
* **Recipes** (beyond the paper): ``METHOD+distill`` retrains every stage with knowledge
  distillation from the converged dense model of the same seed (``--distill-temperature``,
  ``--distill-weight``): loss = (1 − w)·CE + w·T²·KL(teacher ‖ student). ``METHOD+reparam`` retrains
  every Winograd-domain stage through the spatial kernels, ``Q = (G W Gᵀ) ⊙ mask`` with W trainable
  (``tritonwino.pruning.spatial_kernels``), at the spatial lr ``--spatial-lr`` and without the F̂
  gradient scaling (methods yu, li, liu). Both: ``METHOD+distill+reparam``.

Rows (``OUT.csv``): one per finished stage of each cell, and ``method == "dense"`` rows for each
seed's converged dense model; columns ``method, recipe, granularity, seed, stage, phase, target,
winograd_sparsity, top1, top1_dense, top1_loss`` (top-1 in percent, ``top1_dense`` the dense model
of the same seed), the CPU time of that stage (``cpu_s``: process time) and the settings, device
and versions. ``OUT.md`` holds mean ± std over seeds and ``OUT.png`` the accuracy-vs-sparsity plot
with error bars and the dense training curves; both are rebuilt from the rows (``--plot-only``).

Resumable: the dense training is checkpointed every ``--eval-every`` steps and every finished stage
of every cell under ``OUT.state/``; rerunning the same command continues where it stopped and never
retrains a finished stage. Adding seeds, methods or granularities to a finished run only runs the
new cells; changing anything that changes results (model, data, schedule, targets, learning rates)
is refused. ``--dense-from OTHER_OUT`` starts a new OUT (another pruning schedule) from the dense
models another one converged, after checking that their dense settings are the same.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import itertools
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import torch
from torch import nn
from tqdm import tqdm

from ..env import environment
from ..pruning import (
    SpatialPruner,
    WinogradConv2d,
    WinogradPruner,
    convert_to_winograd,
    convert_to_winograd_relu,
    eligible_convs,
    model_winograd_sparsity,
    spatial_kernels,
)
from ..tables import markdown_table
from .data import load_dataset
from .models import MODEL_DESCRIPTIONS, MODELS, build_model
from .training import Batches, accuracy, distillation_loss, random_crop_flip, train

__all__ = ["METHODS", "RECIPES", "Cell", "cells", "main", "parse_args", "plot", "run", "summarize", "write_table"]

METHODS = ("yu", "li", "liu", "wrelu", "spatial")
RECIPE_PARTS = ("distill", "reparam")
# every recipe a cell can have: "plain", or parts joined by "+" in sorted order
RECIPES = ("plain", *("+".join(c) for k in range(1, len(RECIPE_PARTS) + 1)
                      for c in itertools.combinations(sorted(RECIPE_PARTS), k)))
REPARAM_METHODS = ("yu", "li", "liu")  # Winograd-domain stages of a model converted from a spatial one
LABELS = {"yu": "spatial-Winograd (Yu)", "li": "native (Li)", "liu": "magnitude (Liu)",
          "wrelu": "Winograd-ReLU (Liu)", "spatial": "spatial magnitude"}
DATASETS = ("fashion-mnist", "cifar10", "cifar100", "digits")
# options that do not change any result: a rerun may change them freely
NOT_CONFIG = ("out", "seeds", "methods", "granularities", "threads", "plot_only", "data_dir", "progress",
              "dense_from")
# the settings a converged dense model depends on: --dense-from carries one over only when they match
DENSE_KEYS = ("model", "dataset", "train_limit", "test_limit", "batch_size", "crop_pad", "no_flip", "m",
              "dense_epochs", "dense_lr", "wrelu_lr")


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str | None:
        # "(default: None)" / "(default: False)" say nothing a reader can use
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


EPILOG = """\
questions:
  how long?      About 6 CPU-hours per seed for the defaults on one thread (smallvgg-flat on the
                 full Fashion-MNIST: a spatial SGD step 0.06 s, a Winograd-domain one 0.16 s; dense
                 20 min, Winograd-ReLU dense 45 min, 28 cells x 5 two-epoch stages ~5.5 h). The rows'
                 cpu_s and OUT.md give the CPU time actually spent.
  more cores?    Start more processes on the same --out (the same command, or `--seeds 0 &`,
                 `--seeds 1,2 &`, ...): each cell and each dense model is locked while one process
                 trains it, another process skips a cell being run (naming its pid) and waits for a
                 dense model being trained; rows go into the shared files under a lock, and the
                 last to finish writes OUT.md / OUT.png from all of them.
  stopped?       Run the same command again: the dense training continues from its last
                 checkpoint (every --eval-every steps), the pruning from its last finished stage.
  other settings? Refused for an existing OUT.state/ (give another --out); adding seeds, methods
                 or granularities runs only the new cells. Another pruning schedule on the same
                 dense models: a new --out with --dense-from OLD_OUT (checked: same dense settings).
  smoke run?     --train-limit 512 --test-limit 256 --dense-epochs 1 --stage-epochs 0.25
                 --seeds 0 --methods yu --out /tmp/smoke  (seconds).
  paper models?  --dataset cifar10 --data-dir DIR --model vgg-nagadomi, or cifar100 with
                 convpool-cnn-c; resnet18-max for either. DIR holds the extracted python batches.
  converged?     OUT_curve.csv and the right panel of OUT.png: test top-1 every epoch.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="pruning_converged",
        description="Pruning from converged dense models: every method x granularity x seed (x recipe), "
                    "accuracy against\nthe dense model of the same seed, mean +- std over seeds. Resumable; "
                    "--plot-only rebuilds the table\nand the plot from the rows. Protocol: "
                    "tritonwino/experiments/converged_grid.py and docs/pruning.md.",
        epilog=EPILOG, formatter_class=_Help)
    ap.add_argument("--out", required=True,
                    help="path stem: writes OUT.csv (rows), OUT_curve.csv (dense training curves), OUT.md, OUT.png "
                         "and the checkpoints under OUT.state/ (delete it to start over)")
    g = ap.add_argument_group("grid (may grow between runs of the same OUT)")
    g.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; each gets its own dense model")
    g.add_argument("--methods",
                   default="yu,yu+distill,yu+distill+reparam,yu+reparam,li,liu,wrelu,spatial,li+reparam,liu+reparam",
                   help=f"comma-separated cells, each METHOD or METHOD+RECIPE[+RECIPE]; methods {','.join(METHODS)}, "
                        f"recipes {','.join(RECIPE_PARTS)} (plain when omitted; reparam with "
                        f"{','.join(REPARAM_METHODS)} only)")
    g.add_argument("--granularities", default="1x1,16x1,32x1",
                   help="comma-separated BKxBC pruning granularities; 'spatial' runs at 1x1 only")
    d = ap.add_argument_group("model and data")
    d.add_argument("--model", default="smallvgg-flat", choices=sorted(MODELS),
                   help="network; the paper's are vgg-nagadomi (CIFAR-10), convpool-cnn-c (CIFAR-100), "
                        "resnet18-max (3x3 stem, for 32x32) and resnet18-max-imagenet")
    d.add_argument("--dataset", default="fashion-mnist", choices=DATASETS)
    d.add_argument("--data-dir", default=None,
                   help="directory of the dataset files: Fashion-MNIST IDX files (default "
                        "/usr/share/datasets/fashion-mnist, `apt-get install dataset-fashion-mnist`), or the "
                        "extracted cifar-10-batches-py/ / cifar-100-python/ (or the directory holding it); "
                        "nothing is downloaded")
    d.add_argument("--train-limit", type=int, default=None, help="first N training examples (default: all; smoke runs)")
    d.add_argument("--test-limit", type=int, default=None, help="first N test examples (default: all)")
    t = ap.add_argument_group("dense training (to convergence)")
    t.add_argument("--dense-epochs", type=float, default=30.0, help="epochs of each dense model")
    t.add_argument("--dense-lr", type=float, default=0.05, help="initial lr, cosine-annealed to 0")
    t.add_argument("--wrelu-lr", type=float, default=0.01,
                   help="initial lr of the Winograd-ReLU network trained from scratch (the 200-step probe of "
                        "winograd_relu_experiment picked 0.01)")
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--crop-pad", type=int, default=2, help="random-crop padding in pixels (0: no crop)")
    t.add_argument("--no-flip", action="store_true", help="no random horizontal flip")
    t.add_argument("--dense-from", metavar="OTHER_OUT", default=None,
                   help="reuse the converged dense models (and their curves) of an earlier run's --out instead of "
                        "training them again; refused unless its dense settings (model, data, epochs, lrs, batch, "
                        "augmentation, tile) are this run's. For another pruning schedule on the same dense models")
    t.add_argument("--eval-every", type=int, default=0,
                   help="steps between curve points and dense checkpoints (0: one epoch)")
    p = ap.add_argument_group("pruning")
    p.add_argument("--m", type=int, default=4, help="output tile of F(m, 3)")
    p.add_argument("--spatial-targets", default="0.5,0.7",
                   help="Winograd-sparsity targets of yu's step 1 (the other methods go through these, then "
                        "the Winograd targets)")
    p.add_argument("--winograd-targets", default="0.8,0.85,0.9", help="targets of yu's step 2")
    p.add_argument("--stage-epochs", type=float, default=2.0,
                   help="retraining epochs after each spatial pruning stage (yu step 1, spatial)")
    p.add_argument("--winograd-stage-epochs", type=float, default=None,
                   help="retraining epochs after each Winograd-domain pruning stage (default: --stage-epochs)")
    p.add_argument("--spatial-lr", type=float, default=0.01, help="lr of spatial retraining (yu step 1, spatial)")
    p.add_argument("--winograd-lr", type=float, default=1e-4,
                   help="lr of Winograd-domain retraining (yu step 2, li, liu, wrelu); docs/pruning.md has the "
                        "probes that chose it (3e-4 loses 1.6 points even without pruning; 1e-5 cannot repair a large "
                        "pruning step)")
    p.add_argument("--distill-temperature", type=float, default=4.0, help="T of the distill recipe")
    p.add_argument("--distill-weight", type=float, default=0.5,
                   help="weight of the distillation term (1 - weight on cross-entropy)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    ap.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    ap.add_argument("--plot-only", action="store_true", help="only rebuild OUT.md / OUT.png from the rows")
    args = ap.parse_args(argv)
    try:
        if not cells(args):
            raise ValueError("--methods and --granularities leave no cell to run")
        if not _floats(args.spatial_targets) + _floats(args.winograd_targets):
            raise ValueError("give at least one pruning target")
        if not [int(s) for s in args.seeds.split(",") if s.strip()]:
            raise ValueError("give at least one seed")
    except ValueError as e:
        ap.error(str(e))
    if args.dataset.startswith("cifar") and args.data_dir is None and not args.plot_only:
        ap.error(f"--dataset {args.dataset} needs --data-dir (the extracted CIFAR python batches)")
    return args


def _blocks(text: str) -> list[tuple[int, int]]:
    out = []
    for g in text.split(","):
        g = g.strip().lower()
        if not g:
            continue
        parts = g.split("x")
        if len(parts) != 2 or not all(q.isdigit() and int(q) > 0 for q in parts):
            raise ValueError(f"granularity {g!r} is not BKxBC (e.g. 1x1, 16x1)")
        out.append((int(parts[0]), int(parts[1])))
    return out


class Cell:
    """One (method, recipe, granularity) of the grid: its stages and how to build each stage's pruner."""

    def __init__(self, method: str, recipe: str, block: tuple[int, int]):
        self.method, self.recipe, self.block = method, recipe, block
        self.granularity = f"{block[0]}x{block[1]}"
        self.distill = "distill" in recipe.split("+")
        self.reparam = "reparam" in recipe.split("+")

    @property
    def key(self) -> str:
        return f"{self.method}-{self.recipe}-{self.granularity}"

    def stages(self, args: argparse.Namespace) -> list[tuple[str, float, float]]:
        """(phase, target, lr) per stage; every method goes through the same number of stages."""
        s, w = _floats(args.spatial_targets), _floats(args.winograd_targets)
        wlr = args.spatial_lr if self.reparam else args.winograd_lr  # reparam trains spatial kernels
        if self.method == "yu":
            return [("spatial", t, args.spatial_lr) for t in s] + [("winograd", t, wlr) for t in w]
        if self.method == "spatial":
            return [("spatial", t, args.spatial_lr) for t in s + w]
        return [("winograd", t, wlr) for t in s + w]


def cells(args: argparse.Namespace) -> list[Cell]:
    """The grid's cells (seeds aside), in run order."""
    out = []
    for spec in args.methods.split(","):
        spec = spec.strip()
        if not spec:
            continue
        method, *parts = spec.split("+")
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r} in --methods; choose from {METHODS}")
        bad = [p for p in parts if p not in RECIPE_PARTS]
        if bad:
            raise ValueError(f"unknown recipe {bad[0]!r} in {spec!r} of --methods; choose from {RECIPE_PARTS}")
        if len(set(parts)) != len(parts):
            raise ValueError(f"{spec!r} in --methods names a recipe twice")
        recipe = "+".join(sorted(parts)) or "plain"
        if "reparam" in parts and method not in REPARAM_METHODS:
            raise ValueError(f"{spec!r} in --methods: reparam retrains the Winograd-domain stages of a model converted "
                             f"from a spatial one, methods {REPARAM_METHODS} (a Winograd-ReLU network's Q is no "
                             "spatial kernel; spatial has no Winograd-domain stage)")
        for block in _blocks(args.granularities):
            if method == "spatial" and block != (1, 1):
                continue
            out.append(Cell(method, recipe, block))
    return out


class _Arm:
    """A cell's model and pruner at a stage; rebuilt identically from a checkpoint on resume."""

    def __init__(self, cell: Cell, model: nn.Module, m: int, first: str):
        self.cell, self.model, self.m, self.first = cell, model, m, first
        self.phase: str | None = None
        self.pruner: SpatialPruner | WinogradPruner | None = None

    def enter(self, phase: str) -> None:
        if phase == self.phase:
            return
        method = self.cell.method
        if phase == "spatial":
            kind = "magnitude" if method == "spatial" else "structured"
            self.pruner = SpatialPruner(self.model, m=self.m, method=kind, block=self.cell.block,
                                        keep_dense=[self.first])
        else:
            # wrelu: the convs its rewrite did not reach (no ReLU before them) become plain Winograd
            # layers, so every method prunes the same layers
            convert_to_winograd(self.model, m=self.m, filter_fn=lambda conv, name: name != self.first)
            rule = {"yu": "yu", "li": "li", "liu": "liu", "wrelu": "liu"}[method]
            self.pruner = WinogradPruner(self.model, method=rule, block=self.cell.block, keep_dense=None)
        self.phase = phase


def _first_conv(model: nn.Module) -> str:
    convs = eligible_convs(model, 3)
    if not convs:
        raise ValueError("the model has no 3x3 conv that Winograd can run")
    return next(iter(convs))


def _pruned_layers(model: nn.Module, first: str) -> list[str]:
    """Every 3×3 conv (spatial or Winograd-domain) but the first: where the sparsity is measured."""
    return [n for n in eligible_convs(model, 3, kinds=(nn.Conv2d, WinogradConv2d)) if n != first]


# ------------------------------------------------------------------------------------------------
# rows on disk
# ------------------------------------------------------------------------------------------------
def _replace(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` a private temporary (named by this process), then rename it onto ``path``: a stop
    mid-write never leaves half a file, and a process running another seed never reads one."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _write_csv(path: Path, rows: list[dict]) -> None:
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)

    _replace(path, write)


def _read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def _update_csv(path: Path, lock_path: Path, drop: Callable[[dict], bool], add: list[dict]) -> list[dict]:
    """Replace the rows ``drop`` selects by ``add``, re-reading the file under an exclusive lock:
    processes running other seeds of the same OUT (one per core) write their own rows into it."""
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = [r for r in _read_csv(path) if not drop(r)] + add
        _write_csv(path, rows)
    return rows


def _save(obj: dict, path: Path) -> None:
    _replace(path, lambda tmp: torch.save(obj, tmp))


def _paths(out: Path) -> dict[str, Path]:
    return {"csv": Path(f"{out}.csv"), "curve": Path(f"{out}_curve.csv"), "md": Path(f"{out}.md"),
            "png": Path(f"{out}.png"), "state": Path(f"{out}.state"),
            "lock": Path(f"{out}.state") / "rows.lock"}


def _config(args: argparse.Namespace) -> dict:
    return {k: v for k, v in sorted(vars(args).items()) if k not in NOT_CONFIG}


def _check_config(state: Path, cfg: dict) -> None:
    path = state / "config.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), cfg.get(k)) for k in sorted(set(old) | set(cfg)) if old.get(k) != cfg.get(k)}
        if diff:
            lines = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            raise SystemExit(f"{state} holds a run with other settings ({lines}). Rerun with the same settings to "
                             "continue it, or give another --out (or delete that directory) to start a new one.")
        return
    state.mkdir(parents=True, exist_ok=True)
    # two seeds started together (one process per core) both write it: never half-written for the other
    _replace(path, lambda tmp: tmp.write_text(json.dumps(cfg, indent=1, sort_keys=True)))


def _check_dense_source(src: Path, paths: dict[str, Path], cfg: dict) -> None:
    """``--dense-from``: refuse, before this run writes anything, an OUT that is this one, is no grid
    run, or trained its dense models with other settings."""
    theirs = _paths(src)
    if theirs["state"].resolve() == paths["state"].resolve():
        raise SystemExit(f"--dense-from {src} is this run's own --out")
    cfg_path = theirs["state"] / "config.json"
    if not cfg_path.exists():
        raise SystemExit(f"--dense-from {src}: no {cfg_path}; give the --out of an earlier run of the grid")
    old = json.loads(cfg_path.read_text())
    diff = [f"{k}: {old.get(k)!r} there, {cfg.get(k)!r} now" for k in DENSE_KEYS if old.get(k) != cfg.get(k)]
    if diff:
        raise SystemExit(f"--dense-from {src}: its dense models were trained with other settings "
                         f"({', '.join(diff)})")


def _carry_dense(src: Path, paths: dict[str, Path], seeds: list[int], networks: tuple[str, ...],
                 log: Callable[[str], None]) -> None:
    """``--dense-from``: copy each seed's finished dense models and their curve points from another
    OUT (checked by :func:`_check_dense_source`); their rows are rebuilt from the checkpoints later."""
    theirs = _paths(src)
    curve = _read_csv(theirs["curve"])
    for seed in seeds:
        for name in networks:
            mine, source = paths["state"] / f"seed{seed}" / f"{name}.pt", theirs["state"] / f"seed{seed}" / f"{name}.pt"
            if mine.exists():
                continue
            if not source.exists():
                log(f"seed {seed} {name}: not finished under {src}, trained here")
                continue
            mine.parent.mkdir(parents=True, exist_ok=True)
            _replace(mine, lambda tmp, source=source: shutil.copyfile(source, tmp))

            def same(c: dict, name: str = name, seed: int = seed) -> bool:
                return c["network"] == name and int(c["seed"]) == seed

            _update_csv(paths["curve"], paths["lock"], same, [c for c in curve if same(c)])
            log(f"seed {seed} {name}: carried over from {src}")


def _stage_key(row: dict) -> tuple[str, str, str, int, int]:
    """What identifies a row: one stage of one cell of one seed (dense models: stage -1)."""
    return row["method"], row["recipe"], row["granularity"], int(row["seed"]), int(row["stage"])


def _try_lock(path: Path, wait: bool = False) -> tuple[IO[str] | None, str]:
    """An exclusive lock on ``path`` for this process (the open file; closing it lets the lock go),
    or ``None`` and who holds it (``pid N``; ``wait``: block until it is free instead): every cell
    and every dense model of a seed is trained by one process at a time, so two processes never
    overwrite each other's checkpoints."""
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        f.seek(0)
        owner = f.read().strip() or "another process"
        f.close()
        return None, owner
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}\n")
    f.flush()
    return f, ""


@contextlib.contextmanager
def _lock_waiting(path: Path, log: Callable[[str], None], what: str) -> Iterator[None]:
    """Hold the lock on ``path``, waiting while another process holds it (it is training ``what``,
    which this run then loads instead of training it again)."""
    f, owner = _try_lock(path)
    if f is None:
        log(f"{what} is being trained by {owner}: waiting for it")
        f, _ = _try_lock(path, wait=True)
    assert f is not None
    with f:
        yield


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace, log: Callable[[str], None] = tqdm.write) -> int:
    paths = _paths(Path(args.out))
    if args.plot_only:
        rows = _read_csv(paths["csv"])
        if not rows:
            raise SystemExit(f"{paths['csv']} has no rows: run the grid first")
        write_table(rows, paths["md"])
        plot(rows, _read_csv(paths["curve"]), paths["png"])
        log(f"wrote {paths['md']}, {paths['png']}")
        return 0

    t_run = time.process_time()
    torch.set_num_threads(args.threads)
    if args.dense_from:
        _check_dense_source(Path(args.dense_from), paths, _config(args))
    _check_config(paths["state"], _config(args))
    tr, te, info = load_dataset(args.dataset, root=args.data_dir, train_limit=args.train_limit,
                                test_limit=args.test_limit)
    bs = args.batch_size
    if not 1 <= bs <= len(tr):
        raise SystemExit(f"--batch-size {bs} must be in [1, {len(tr)}] (the training examples)")
    epoch = max(1, len(tr) // bs)
    dense_steps = max(1, round(args.dense_epochs * epoch))
    stage_steps = max(1, round(args.stage_epochs * epoch))
    wstage_epochs = args.stage_epochs if args.winograd_stage_epochs is None else args.winograd_stage_epochs
    winograd_stage_steps = max(1, round(wstage_epochs * epoch))
    eval_every = args.eval_every or epoch
    augment = random_crop_flip(args.crop_pad, flip=not args.no_flip)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    grid = cells(args)
    env = environment("cpu")
    common = {
        "dataset": info["name"], "train_examples": len(tr), "test_examples": len(te), "model": args.model,
        "model_desc": MODEL_DESCRIPTIONS[args.model], "tile": f"F({args.m},3)", "batch_size": bs,
        "dense_epochs": args.dense_epochs, "dense_steps": dense_steps, "dense_lr": args.dense_lr,
        "stage_steps": stage_steps, "winograd_stage_steps": winograd_stage_steps, "spatial_lr": args.spatial_lr,
        "winograd_lr": args.winograd_lr,
        "wrelu_lr": args.wrelu_lr, "augment": f"crop(pad={args.crop_pad})" + ("" if args.no_flip else "+hflip"),
        "distill_temperature": args.distill_temperature, "distill_weight": args.distill_weight,
        "device": env["device"], "threads": torch.get_num_threads(), "torch": env["torch"],
        "triton": env["triton"], "tritonwino": env["tritonwino"],
    }
    rows = _read_csv(paths["csv"])
    done = {_stage_key(r) for r in rows}
    need_wrelu = any(c.method == "wrelu" for c in grid)
    if args.dense_from:
        _carry_dense(Path(args.dense_from), paths, seeds, ("dense", "dense-wrelu")[:1 + need_wrelu], log)
    planned = {(name, "plain", "-", s, -1) for s in seeds for name in ("dense", "dense-wrelu")[:1 + need_wrelu]}
    planned |= {(c.method, c.recipe, c.granularity, s, k)
                for s in seeds for c in grid for k in range(len(c.stages(args)))}
    bar = tqdm(total=len(planned), initial=len(planned & done), desc="grid (stages)", file=sys.stderr,
               disable=not args.progress, position=0)

    def new_model(seed: int, wrelu: bool) -> nn.Module:
        torch.manual_seed(seed)
        model = build_model(args.model, info["num_classes"], info["in_channels"])
        if wrelu:
            convert_to_winograd_relu(model, m=args.m)
        return model

    def dense(seed: int, wrelu: bool, top1_ref: float | None = None) -> tuple[dict, float]:
        """The converged dense model of ``seed`` (trained now, continued, or loaded); ``top1_ref`` is
        the spatial dense model's top-1 the Winograd-ReLU one is compared with."""
        name = "dense-wrelu" if wrelu else "dense"
        sd = paths["state"] / f"seed{seed}"
        sd.mkdir(parents=True, exist_ok=True)
        with _lock_waiting(sd / f"{name}.lock", log, f"seed {seed} {name}"):
            return dense_locked(seed, wrelu, top1_ref, name, sd)

    def dense_locked(seed: int, wrelu: bool, top1_ref: float | None, name: str, sd: Path) -> tuple[dict, float]:
        final, partial = sd / f"{name}.pt", sd / f"{name}.partial.pt"

        def write_row(model: nn.Module, top1: float, cpu: float) -> None:
            sp = model_winograd_sparsity(model, m=args.m, layers=_pruned_layers(model, _first_conv(model)))["overall"]
            row = _row(name, "plain", "-", seed, -1, "dense", 0.0, sp, top1, top1 if top1_ref is None else top1_ref,
                       top1, cpu, dense_steps, common)
            _update_csv(paths["csv"], paths["lock"], lambda r: (r["method"], int(r["seed"])) == (name, seed), [row])

        if final.exists():
            ck = torch.load(final, weights_only=False)
            if not any((r["method"], int(r["seed"])) == (name, seed) for r in _read_csv(paths["csv"])):
                # a finished model whose row is gone (rows file deleted, or the model carried over from
                # another OUT with the same dense settings): its row again, from the checkpoint
                model = new_model(seed, wrelu)
                model.load_state_dict(ck["model"])
                write_row(model, ck["top1"], ck["cpu_s"])
            return ck["model"], ck["top1"]
        model = new_model(seed, wrelu)
        batches = Batches(tr, bs, seed=seed, augment=augment)
        resume, cpu_before = None, 0.0
        if partial.exists():
            ck = torch.load(partial, weights_only=False)
            model.load_state_dict(ck["model"])
            batches.set_state(ck["batches"])
            resume, cpu_before = ck["train"], ck["cpu_s"]
            log(f"seed {seed} {name}: resuming at step {resume['step']} of {dense_steps}")
        start = 0 if resume is None else int(resume["step"])
        # points written after the checkpoint belong to the steps about to be redone
        _update_csv(paths["curve"], paths["lock"], lambda c: c["network"] == name and int(c["seed"]) == seed
                    and int(c["step"]) > start, [])
        c0, w0 = time.process_time(), time.perf_counter()
        last: dict = {}

        def checkpoint(state: dict) -> None:
            top1 = 100.0 * accuracy(model, te)
            cpu = cpu_before + time.process_time() - c0
            point = {"network": name, "seed": seed, "step": state["step"], "epoch": round(state["step"] / epoch, 3),
                     "lr": state["lr"], "train_loss": round(state["loss"], 4), "top1": round(top1, 2),
                     "cpu_s": round(cpu, 1)}
            _update_csv(paths["curve"], paths["lock"], lambda c: False, [point])
            _save({"model": model.state_dict(), "batches": batches.state(), "train": state, "cpu_s": cpu}, partial)
            last.update(top1=top1, cpu=cpu)

        train(model, batches, dense_steps, args.wrelu_lr if wrelu else args.dense_lr, cosine=True,
              desc=f"seed {seed} {name}", progress=args.progress, every=eval_every, on_checkpoint=checkpoint,
              resume=resume)
        if not last:  # resumed after the last step but before the final save
            last.update(top1=100.0 * accuracy(model, te), cpu=cpu_before)
        # the row first, then the final checkpoint: a stop in between redoes (and replaces) the row
        write_row(model, last["top1"], last["cpu"])
        _save({"model": model.state_dict(), "top1": last["top1"], "cpu_s": last["cpu"],
               "wall_s": time.perf_counter() - w0}, final)
        partial.unlink(missing_ok=True)
        bar.update(1)
        log(f"seed {seed} {name}: top-1 {last['top1']:.2f}% after {dense_steps} steps, CPU {last['cpu']:.0f} s")
        return model.state_dict(), last["top1"]

    def finished(seed: int, cell: Cell, have: set[tuple]) -> bool:
        return all((cell.method, cell.recipe, cell.granularity, seed, k) in have
                   for k in range(len(cell.stages(args))))

    def prune_cell(seed: int, cell: Cell, wrelu_state: tuple[dict, float] | None,
                   spatial_state: dict, top1_dense: float) -> None:
        stages = cell.stages(args)
        wrelu = cell.method == "wrelu"
        start_state, top1_start = wrelu_state if wrelu else (spatial_state, top1_dense)
        model = new_model(seed, wrelu)
        model.load_state_dict(start_state)
        first = _first_conv(model)
        arm = _Arm(cell, model, args.m, first)
        batches = Batches(tr, bs, seed=seed + 10_000, augment=augment)  # one stream per seed, every cell
        loss_fn = None
        if cell.distill:
            teacher = new_model(seed, wrelu)
            teacher.load_state_dict(start_state)
            loss_fn = distillation_loss(teacher, args.distill_temperature, args.distill_weight)
        ck_path = paths["state"] / f"seed{seed}" / f"{cell.key}.pt"
        begin = 0
        if ck_path.exists():
            ck = torch.load(ck_path, weights_only=False)
            begin = ck["stage"] + 1
            arm.enter(stages[ck["stage"]][0])
            model.load_state_dict(ck["model"])
            batches.set_state(ck["batches"])
            log(f"seed {seed} {cell.key}: resuming after stage {ck['stage']}")
        for k in range(begin, len(stages)):
            phase, target, lr = stages[k]
            c0 = time.process_time()
            arm.enter(phase)
            steps = stage_steps if phase == "spatial" else winograd_stage_steps
            # reparam: the stage prunes and retrains W behind Q; the checkpoint holds a plain Q again
            with (spatial_kernels(model, _pruned_layers(model, first)) if cell.reparam and phase == "winograd"
                  else contextlib.nullcontext()):
                arm.pruner.prune(target)
                train(model, batches, steps, lr, step=arm.pruner.step, cosine=True, loss_fn=loss_fn,
                      desc=f"seed {seed} {cell.key} {target}", progress=args.progress)
            sp = model_winograd_sparsity(model, m=args.m, layers=_pruned_layers(model, first))["overall"]
            top1 = 100.0 * accuracy(model, te)
            cpu = time.process_time() - c0
            # the row first, then the checkpoint: a stop in between redoes (and replaces) the stage
            key = (cell.method, cell.recipe, cell.granularity, seed, k)
            _update_csv(paths["csv"], paths["lock"], lambda r, key=key: _stage_key(r) == key,
                        [_row(cell.method, cell.recipe, cell.granularity, seed, k, phase, target, sp, top1,
                              top1_dense, top1_start, cpu, steps, common)])
            _save({"stage": k, "model": model.state_dict(), "batches": batches.state()}, ck_path)
            bar.update(1)
            log(f"seed {seed} {cell.key} stage {k} ({phase}) target {target:.2f}: Winograd sparsity "
                f"{sp:.4f}, top-1 {top1:.2f}% (dense {top1_dense:.2f}%), CPU {cpu:.0f} s")

    left: list[str] = []  # cells another process was running
    for seed in seeds:
        spatial_state, top1_dense = dense(seed, False)
        wrelu_state = dense(seed, True, top1_dense) if need_wrelu else None
        for cell in grid:
            if finished(seed, cell, done):
                continue
            lock, owner = _try_lock(paths["state"] / f"seed{seed}" / f"{cell.key}.lock")
            if lock is None:
                left.append(f"seed {seed} {cell.key} ({owner})")
                log(f"seed {seed} {cell.key}: being run by {owner}; left to it")
                continue
            with lock:
                # another process may have finished it since this run read the rows
                if not finished(seed, cell, {_stage_key(r) for r in _read_csv(paths["csv"])}):
                    prune_cell(seed, cell, wrelu_state, spatial_state, top1_dense)
    bar.close()
    rows = _update_csv(paths["csv"], paths["lock"], lambda r: False, [])  # every seed's rows, any process's
    write_table(rows, paths["md"])
    plot(rows, _read_csv(paths["curve"]), paths["png"])
    total = sum(float(r["cpu_s"]) for r in rows)
    # the curve file only exists where this OUT trained (or carried) dense models with curve points
    written = ", ".join(str(paths[k]) for k in ("csv", "curve", "md", "png") if paths[k].exists())
    log(f"wrote {written}; CPU time of the grid "
        f"{total / 3600:.2f} h (this invocation {(time.process_time() - t_run) / 3600:.2f} h)")
    if left:
        log(f"{len(left)} cell(s) left to the processes running them: {'; '.join(left)}; their rows land when "
            "they finish (the last process to finish rewrites OUT.md / OUT.png; --plot-only does it any time)")
    return 0


def _row(method: str, recipe: str, granularity: str, seed: int, stage: int, phase: str, target: float,
         sparsity: float, top1: float, top1_dense: float, top1_start: float, cpu: float, steps: int,
         common: dict) -> dict:
    return {"method": method, "recipe": recipe, "granularity": granularity, "seed": seed, "stage": stage,
            "phase": phase, "target": round(target, 4), "winograd_sparsity": round(sparsity, 4),
            "top1": round(top1, 2), "top1_dense": round(top1_dense, 2), "top1_loss": round(top1_dense - top1, 2),
            "top1_start": round(top1_start, 2), "steps": steps, "cpu_s": round(cpu, 1), **common,
            "timestamp": environment("cpu")["timestamp"]}


# ------------------------------------------------------------------------------------------------
# summary, table and plot (from the rows only)
# ------------------------------------------------------------------------------------------------
def _mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def summarize(rows: list[dict]) -> list[dict]:
    """Mean ± std (sample std, over seeds) per (method, recipe, granularity, stage), in row order.

    Example:
        >>> rows = [{"method": "yu", "recipe": "plain", "granularity": "1x1", "stage": "0", "seed": s,
        ...          "target": "0.5", "winograd_sparsity": "0.5", "top1": t, "top1_loss": 90 - t}
        ...         for s, t in ((0, 89.0), (1, 87.0))]
        >>> s = summarize(rows)[0]
        >>> s["n_seeds"], s["top1_mean"], round(s["top1_std"], 3)
        (2, 88.0, 1.414)
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["recipe"], r["granularity"], int(r["stage"])), []).append(r)
    out = []
    for (method, recipe, gran, stage), rs in groups.items():
        top1 = _mean_std([float(r["top1"]) for r in rs])
        loss = _mean_std([float(r["top1_loss"]) for r in rs])
        sp = _mean_std([float(r["winograd_sparsity"]) for r in rs])
        out.append({"method": method, "recipe": recipe, "granularity": gran, "stage": stage,
                    "target": float(rs[0]["target"]), "n_seeds": len({r["seed"] for r in rs}),
                    "winograd_sparsity_mean": sp[0], "winograd_sparsity_std": sp[1],
                    "top1_mean": top1[0], "top1_std": top1[1], "top1_loss_mean": loss[0], "top1_loss_std": loss[1]})
    return out


def _best_within(summary: list[dict], points: float) -> list[dict]:
    """Per series, the highest mean Winograd sparsity whose mean top-1 loss is within ``points``."""
    best: dict[tuple, dict] = {}
    for s in summary:
        if s["stage"] < 0 or s["top1_loss_mean"] > points:
            continue
        key = (s["method"], s["recipe"], s["granularity"])
        if key not in best or s["winograd_sparsity_mean"] > best[key]["winograd_sparsity_mean"]:
            best[key] = s
    return list(best.values())


def write_table(rows: list[dict], path: Path) -> None:
    """``OUT.md``: settings, the dense models, mean ± std per stage and the highest sparsity within
    0.5 / 1.0 points of the dense model, all from the rows."""
    first = rows[0]
    summary = summarize(rows)
    seeds = sorted({int(r["seed"]) for r in rows})
    cpu = sum(float(r["cpu_s"]) for r in rows)

    def pm(m: float, s: float, scale: float = 1.0, digits: int = 2) -> str:
        return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"

    text = [
        f"# Pruning from converged dense models ({first['dataset']}, {first['model_desc']})", "",
        f"Settings: {first['dataset']} ({first['train_examples']} train / {first['test_examples']} test), "
        f"{first['model_desc']}, {first['tile']}; dense: {first['dense_steps']} SGD steps ({first['dense_epochs']} "
        f"epochs, lr {first['dense_lr']} cosine to 0, bs {first['batch_size']}, augmentation {first['augment']}); "
        f"every pruning stage retrains (cosine from its lr): {first['stage_steps']} steps at lr "
        f"{first['spatial_lr']} in the spatial domain, {first.get('winograd_stage_steps') or first['stage_steps']} "
        f"steps at lr {first['winograd_lr']} in the Winograd domain (reparam recipe: through the spatial kernels, "
        f"at lr {first['spatial_lr']}); distill recipe T = "
        f"{first['distill_temperature']}, weight {first['distill_weight']}. Seeds {seeds}. {first['device']}, "
        f"{first['threads']} thread(s), torch "
        f"{first['torch']}, triton {first['triton']}, tritonwino {first['tritonwino']}.", "",
        f"Total CPU time of the rows: {cpu / 3600:.2f} CPU-hours (process time, training and evaluation).", "",
        "Winograd sparsity = exact zeros of Q = G W Gᵀ over the pruned layers (every 3×3 conv but the first). "
        "`top1_loss` = dense top-1 of the same seed − pruned top-1, in points; mean ± sample std over seeds. "
        "`spatial` targets are spatial sparsities; `wrelu` starts from its own dense network (`dense-wrelu`).", "",
        "## Dense models", "",
    ]
    dense = [s for s in summary if s["stage"] < 0]
    text.append(markdown_table(
        [{"network": s["method"], "seeds": s["n_seeds"], "top1 (%)": pm(s["top1_mean"], s["top1_std"])}
         for s in dense], ["network", "seeds", "top1 (%)"]))
    for points in (0.5, 1.0):
        text += ["", f"## Highest Winograd sparsity within {points} points of the dense model (means)", ""]
        best = _best_within(summary, points)
        text.append(markdown_table(
            [{"method": s["method"], "recipe": s["recipe"], "granularity": s["granularity"], "seeds": s["n_seeds"],
              "Winograd sparsity (%)": pm(s["winograd_sparsity_mean"], s["winograd_sparsity_std"], 100, 1),
              "top1 loss (points)": pm(s["top1_loss_mean"], s["top1_loss_std"])} for s in best],
            ["method", "recipe", "granularity", "seeds", "Winograd sparsity (%)", "top1 loss (points)"])
            if best else "(none)")
    text += ["", "## Every stage", ""]
    text.append(markdown_table(
        [{"method": s["method"], "recipe": s["recipe"], "granularity": s["granularity"], "stage": s["stage"],
          "target": s["target"], "seeds": s["n_seeds"],
          "Winograd sparsity (%)": pm(s["winograd_sparsity_mean"], s["winograd_sparsity_std"], 100, 1),
          "top1 (%)": pm(s["top1_mean"], s["top1_std"]),
          "top1 loss (points)": pm(s["top1_loss_mean"], s["top1_loss_std"])} for s in summary if s["stage"] >= 0],
        ["method", "recipe", "granularity", "stage", "target", "seeds", "Winograd sparsity (%)", "top1 (%)",
         "top1 loss (points)"]))
    path.write_text("\n".join(text) + "\n")


def plot(rows: list[dict], curve: list[dict], path: Path) -> None:
    """Left: top-1 vs Winograd sparsity, mean ± std over seeds (both axes), one line per (method, recipe,
    granularity), the dense mean ± std as a band. Right: the dense training curves (test top-1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(rows)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.6, 1]})
    ax = axes[0]
    colors = {m: f"C{i}" for i, m in enumerate(METHODS)}
    # a recipe gets its own colour (the methods use C0-C4) and marker, so yu's four lines part
    recipe_style = {"plain": (None, "o"), "distill": ("C5", "s"), "reparam": ("C6", "^"),
                    "distill+reparam": ("C9", "D")}
    styles = {"1x1": "-", "16x1": "--", "32x1": ":"}
    for key in dict.fromkeys((s["method"], s["recipe"], s["granularity"]) for s in summary if s["stage"] >= 0):
        sub = sorted((s for s in summary if (s["method"], s["recipe"], s["granularity"]) == key),
                     key=lambda s: s["stage"])
        method, recipe, gran = key
        recipe_color, marker = recipe_style.get(recipe, (None, "o"))
        ax.errorbar([100 * s["winograd_sparsity_mean"] for s in sub], [s["top1_mean"] for s in sub],
                    xerr=[100 * s["winograd_sparsity_std"] for s in sub], yerr=[s["top1_std"] for s in sub],
                    color=recipe_color or colors.get(method, "k"), ls=styles.get(gran, "-."),
                    marker=marker, ms=3, capsize=2, lw=1,
                    label=f"{LABELS.get(method, method)} {gran}" + ("" if recipe == "plain" else f" +{recipe}"))
    dense = next((s for s in summary if s["method"] == "dense"), None)
    if dense is not None:
        ax.axhline(dense["top1_mean"], color="k", lw=1, label=f"dense ({dense['n_seeds']} seeds)")
        ax.axhspan(dense["top1_mean"] - dense["top1_std"], dense["top1_mean"] + dense["top1_std"], color="k",
                   alpha=0.1)
        ax.set_ylim(bottom=max(ax.get_ylim()[0], dense["top1_mean"] - 10))
    ax.set_xlabel("Winograd-domain sparsity of the pruned layers (%)")
    ax.set_ylabel("test top-1 (%), mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    ax = axes[1]
    for key in dict.fromkeys((c["network"], c["seed"]) for c in curve):
        pts = sorted((c for c in curve if (c["network"], c["seed"]) == key), key=lambda c: int(c["step"]))
        ax.plot([float(c["epoch"]) for c in pts], [float(c["top1"]) for c in pts], marker=".", ms=3, lw=1,
                label=f"{key[0]} seed {key[1]}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("dense training curves", fontsize=9)
    ax.grid(alpha=0.3)
    if curve:
        ax.legend(fontsize=7)
    first = rows[0]
    fig.suptitle(f"{first['dataset']} {first['model_desc']} {first['tile']}: dense {first['dense_epochs']} epochs, "
                 f"{first['stage_steps']}/{first.get('winograd_stage_steps') or first['stage_steps']} steps per "
                 f"spatial/Winograd stage, CPU ({first['device']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
