"""The counted-work model sweep behind ``bench/work_model.py``: rows, the summary table and the plot.

Every row and plot is titled "model, not a measurement". Rows come from two methods:

* ``counted``: the layer's kernels run under the Triton interpreter with GPU launch configs and
  every op, load and store is counted (``counter.count_work``); slow (minutes per large layer);
* ``closed-form``: ``estimate.sparse_launches`` / ``dense_launches``, which walk the same generated
  programs; tests/test_work_model.py checks it equals the counter (MACs, flops, compulsory bytes).
  Requested bytes and integer/conversion ops are only in counted rows.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..workmodel.counter import LaunchCount, total
from ..workmodel.layer_model import TITLE, LayerCase, count_path, ideal_bytes, layer_inputs
from ..workmodel.roofline import GPUS, direct_conv_bound_us, launch_time_us

__all__ = ["ACCEPTANCE", "DONE_WHEN", "LAYERS", "closed_form_launches", "rows_for", "summary_markdown", "plot_speedup"]

LAYERS = [(64, 56), (128, 28), (256, 14), (512, 7)]
SPARSITIES = [0.0, 0.5, 0.75, 0.9, 0.95]
BATCHES = [1, 8, 32]
# The acceptance cases: F(4,3), fp16, (32,1), N=32 on 512x7x7 and 256x14x14 at 75 and 90 %.
ACCEPTANCE = [LayerCase(32, c, c, h, h, s) for c, h in ((512, 7), (256, 14)) for s in (0.75, 0.9)]
# Counted under the interpreter (minutes each on one core): 512x7x7 at N=32 itself; 256x14x14 at N=8
# (T=128 tiles, the same size; N=32 would take four times as long), where the closed form that
# gives its N=32 rows is checked against the count.
DONE_WHEN = [(LayerCase(32, 512, 512, 7, 7, s), s) for s in (0.75, 0.9)] + \
            [(LayerCase(8, 256, 256, 14, 14, s), s) for s in (0.75, 0.9)]


def closed_form_launches(case: LayerCase, path: str, packed) -> list[LaunchCount]:
    from tritonwino import _triton_path
    from tritonwino.kernels._common import TL_NAME
    from tritonwino.kernels.fused_multiply import dense_block_k, gpu_configs
    from tritonwino.kernels.input_transform import gpu_config

    from ..workmodel.estimate import dense_launches, pack_stats, sparse_launches

    dt = case.torch_dtype
    spec = _triton_path.tile_spec(case.m, case.r, packed.points_fractions())
    es = torch.finfo(dt).bits // 8
    pad = (case.pad, case.pad)
    common = dict(in_es=es, operand=TL_NAME[dt], precision="ieee")
    if path == "dense":
        bk = dense_block_k(case.k)
        return dense_launches(spec, case.n, case.c, case.k, case.h, case.w, pad, bk,
                              gpu_configs(case.m, bk, dt, "ieee", "v")[0], gpu_config(spec.n), **common)
    src = "v" if path == "two-kernel" else "x"
    return sparse_launches(spec, case.n, case.c, case.k, case.h, case.w, pad, pack_stats(packed), packed.group_k,
                           path, gpu_configs(case.m, packed.group_k, dt, "ieee", src)[0], gpu_config(spec.n),
                           idx_es=packed.indices.element_size(), **common)


def _row(case: LayerCase, path: str, launches: list[LaunchCount], packed, gpu_key: str, method: str,
         env: dict) -> dict:
    gpu = GPUS[gpu_key]
    tot = total(launches)
    es = torch.finfo(case.torch_dtype).bits // 8
    per = [launch_time_us(lc, gpu) for lc in launches]
    t = sum(p["time_us"] for p in per)
    direct = direct_conv_bound_us(case.n, case.c, case.k, case.h, case.w, case.r, case.pad, es, gpu)
    ideal = ideal_bytes(case, packed)
    return {
        "title": TITLE, "method": method, "gpu": gpu_key, "gpu_name": gpu.name,
        "C": case.c, "K": case.k, "H": case.h, "W": case.w, "N": case.n, "tile": f"F({case.m},{case.r})",
        "block": f"{case.block[0]}x{case.block[1]}", "dtype": case.dtype, "sparsity": case.sparsity,
        "kept_slots": 1.0 if path == "dense" else packed.density, "path": path,
        "launches": len(launches), "kernels": " + ".join(lc.kernel for lc in launches),
        "tc_macs": tot.tensor_core_macs, "simt_flops": tot.simt_flops,
        "compulsory_bytes": tot.compulsory_bytes, "ideal_bytes": ideal,
        "dram_vs_ideal": tot.compulsory_bytes / ideal,
        "requested_bytes": tot.requested_bytes if method == "counted" else None,
        "int_ops": tot.int_ops if method == "counted" else None,
        "cvt_ops": tot.cvt_ops if method == "counted" else None,
        "dram_us": sum(p["dram_us"] for p in per), "tc_us": sum(p["tc_us"] for p in per),
        "simt_us": sum(p["simt_us"] for p in per), "bounds": " + ".join(p["bound"] for p in per),
        "modeled_us": t, "direct_conv_us": direct["time_us"], "speedup_vs_direct": direct["time_us"] / t,
        **gpu.as_row(), **env,
    }


def rows_for(case: LayerCase, paths: Iterable[str], gpus: Iterable[str], env: dict, counted: bool,
             seed: int = 0) -> list[dict]:
    """Rows of every path on ``case`` for every GPU; with ``counted`` the interpreter's counts (and
    a check that the closed form agrees), else the closed form."""
    x, packed, q_pck = layer_inputs(case, seed)
    rows = []
    for path in paths:
        closed = closed_form_launches(case, path, packed)
        launches = closed
        extra = {}
        if counted:
            launches = count_path(case, path, x, packed, q_pck)
            same = all(a.tc_macs == b.tc_macs and a.simt_flops == b.simt_flops
                       and a.compulsory_bytes == b.compulsory_bytes for a, b in zip(closed, launches, strict=True))
            extra = {"closed_form_agrees": same, "oob_accesses": total(launches).oob_accesses}
        for g in gpus:
            rows.append({**_row(case, path, launches, packed, g, "counted" if counted else "closed-form", env),
                         **extra})
    return rows


def _is_acceptance(r: dict) -> bool:
    return any((r["C"], r["H"], r["N"], r["sparsity"]) == (c.c, c.h, c.n, c.sparsity) and r["block"] == "32x1"
               and r["tile"] == "F(4,3)" and r["dtype"] == "float16" for c in ACCEPTANCE)


def summary_markdown(rows: list[dict], gpu: str = "H100") -> str:
    """The acceptance table (F(4,3) fp16 (32,1), N=32, 512x7x7 and 256x14x14, closed form) and the
    rows counted under the interpreter."""
    lines = [f"Modeled on {GPUS[gpu].name} peaks ({TITLE}): F(4,3), fp16, (32,1) vector sparsity, GPU launch "
             "configs. `closed-form` rows equal the interpreter's counts (tests/test_work_model.py; `counted` rows "
             "below re-check it on these layers).", "",
             "| method | layer | N | sparsity | path | launches | DRAM vs ideal | modeled µs | direct-conv bound µs | "
             "vs direct conv | requested / compulsory bytes |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["gpu"] != gpu or r["path"] == "dense":
            continue
        if not (r["method"] == "counted" or (r["method"] == "closed-form" and _is_acceptance(r))):
            continue
        ratio = f"{r['requested_bytes'] / r['compulsory_bytes']:.1f}" if r["requested_bytes"] else "-"
        lines.append(f"| {r['method']} | {r['C']}×{r['K']}×{r['H']}×{r['W']} | {r['N']} | {r['sparsity']:.0%} | "
                     f"{r['path']} | {r['launches']} | {r['dram_vs_ideal']:.2f}× | {r['modeled_us']:.2f} | "
                     f"{r['direct_conv_us']:.2f} | {r['speedup_vs_direct']:.2f}× | {ratio} |")
    return "\n".join(lines) + "\n"


def plot_speedup(rows: list[dict], path, gpu: str = "H100", batch: int = 32) -> None:
    """Modeled speedup over the direct-convolution bound vs sparsity, one panel per layer shape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in rows if r["gpu"] == gpu and r["N"] == batch and r["method"] == "closed-form"]
    shapes = sorted({(r["C"], r["H"]) for r in sel}, key=lambda s: -s[1])
    fig, axes = plt.subplots(1, len(shapes), figsize=(4 * len(shapes), 3.6), sharey=True, squeeze=False)
    styles = {"one-kernel": ("C0", "o"), "two-kernel": ("C1", "s"), "dense": ("C7", "")}
    for ax, (c, h) in zip(axes[0], shapes, strict=True):
        for kind, (color, marker) in styles.items():
            pts = sorted((r["sparsity"], r["speedup_vs_direct"]) for r in sel
                         if (r["C"], r["H"]) == (c, h) and r["path"] == kind)
            if not pts:
                continue
            if kind == "dense":
                ax.axhline(pts[0][1], color=color, ls=":", label="dense Winograd (two-kernel)")
            else:
                ax.plot([p[0] * 100 for p in pts], [p[1] for p in pts], color=color, marker=marker, label=kind)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_title(f"{c}×{c}×{h}×{h}, N={batch}", fontsize=10)
        ax.set_xlabel("Winograd-domain sparsity (%), (32,1) vectors")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("modeled speedup vs direct-conv bound")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{TITLE}: F(4,3) fp16, roofline with {GPUS[gpu].name} published peaks, "
                 f"{GPUS[gpu].launch_us} µs per launch", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sweep_cases(layers=LAYERS, batches=BATCHES, sparsities=SPARSITIES) -> list[LayerCase]:
    return [LayerCase(nb, c, c, h, h, s) for c, h in layers for nb in batches for s in sparsities]


def dense_cases(layers=LAYERS, batches=BATCHES) -> list[LayerCase]:
    return [LayerCase(nb, c, c, h, h, 0.0) for c, h in layers for nb in batches]


