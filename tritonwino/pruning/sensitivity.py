"""Per-layer sensitivity scan: prune one layer at a time to each sparsity, evaluate, tabulate.

Mirrors the authors' ``sensitivity_per_layer.py`` (one layer at 10 %, 15 %, …, 95 %, no
retraining) [code]; the default sparsity grid and the CSV/markdown output are [ours].
"""

from __future__ import annotations

import copy
import csv
import os
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..tables import markdown_table
from .layers import WinogradConv2d, eligible_convs
from .pruners import SpatialPruner, WinogradPruner

__all__ = ["sensitivity_scan", "format_table"]


def sensitivity_scan(
    model: nn.Module,
    evaluate: Callable[[nn.Module], float],
    sparsities: Sequence[float] = (0.2, 0.4, 0.6, 0.8, 0.9),
    m: int = 4,
    points=None,
    block=(1, 1),
    layers: Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = print,
) -> list[dict]:
    """For each layer and sparsity, prune a copy of ``model`` at that layer only and call
    ``evaluate(copy)`` (e.g. top-1 accuracy). ``nn.Conv2d`` layers use step 1 (spatial structured
    pruning), ``WinogradConv2d`` layers step 2 (``|Q|·F̂``). The model is left unchanged.

    Returns rows ``{"layer", "sparsity_target", "winograd_sparsity", "metric"}`` (plus a
    ``"dense"`` row with the unpruned metric); prints the table and writes a CSV if ``path``.
    """
    if not callable(evaluate):
        raise TypeError("evaluate must be a callable model -> float")
    sparsities = [float(s) for s in sparsities]
    has_wino = any(isinstance(mod, WinogradConv2d) for mod in model.modules())
    kinds = (WinogradConv2d,) if has_wino else (nn.Conv2d,)
    names = list(eligible_convs(model, None if has_wino else 3, kinds)) if layers is None else list(layers)
    if not names:
        raise ValueError("model has no eligible layers to scan")

    def run_eval(mdl):
        with torch.no_grad():
            return float(evaluate(mdl))

    rows = [{"layer": "dense", "sparsity_target": 0.0, "winograd_sparsity": 0.0, "metric": run_eval(model)}]
    for name in names:
        for s in sparsities:
            mc = copy.deepcopy(model)
            if has_wino:
                p = WinogradPruner(mc, block=block, layers=[name], keep_dense=None, sync=False)
            else:
                p = SpatialPruner(mc, m=m, points=points, block=block, layers=[name], keep_dense=None, sync=False)
            achieved = p.prune(s)[name]
            rows.append({"layer": name, "sparsity_target": s, "winograd_sparsity": achieved,
                         "metric": run_eval(mc)})
    if log is not None:
        log(format_table(rows))
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of sensitivity rows."""
    def cell(v: object) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    return markdown_table(rows, ["layer", "sparsity_target", "winograd_sparsity", "metric"], cell)
