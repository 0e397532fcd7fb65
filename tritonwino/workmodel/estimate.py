"""The counted-work model in closed form, for choosing a kernel path without a GPU and for
sweeps too large to interpret.

``sparse_launches`` / ``dense_launches`` return the same :class:`LaunchCount` records the
interpreter counter produces, computed from the shape, the packed weight's kept lists
(:func:`pack_stats`) and the launch configs, by walking the same generated programs the kernels
run: tensor-core MACs, SIMT flops and compulsory bytes. tests/test_work_model.py checks them
against the interpreter's counts. Requested bytes, integer and conversion ops are not computed
(zero): the counter reports those.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .counter import LaunchCount

__all__ = ["PackStats", "dense_launches", "pack_stats", "sparse_launches", "touched_extent"]


class PackStats:
    """What the work of a packed weight depends on: kept channels per (position, group) in the
    packing's order, and per channel the positions at which some group keeps it."""

    def __init__(self, counts: Sequence[int], positions_of_channel: Sequence[frozenset[int]]):
        self.counts = list(counts)
        self.positions_of_channel = list(positions_of_channel)

    @property
    def kept_rows(self) -> int:
        """Distinct (position, channel) pairs kept by any group: the V rows the multiply reads."""
        return sum(len(ps) for ps in self.positions_of_channel)


def pack_stats(packed) -> PackStats:
    """:class:`PackStats` of a ``PackedWinogradWeight`` (one host copy of its index arrays)."""
    import torch

    counts = (packed.offsets[1:] - packed.offsets[:-1]).long().cpu()
    g = packed.G
    pos = torch.repeat_interleave(torch.arange(packed.P * g), counts) // g
    kept = torch.zeros(packed.P, packed.C, dtype=torch.bool)
    if packed.nnz_channels:
        kept[pos, packed.indices.long().cpu()] = True
    per_channel = [frozenset(torch.nonzero(kept[:, c]).flatten().tolist()) for c in range(packed.C)]
    return PackStats(counts.tolist(), per_channel)


def dense_stats(c: int, positions: int, groups: int) -> PackStats:
    every = frozenset(range(positions))
    return PackStats([c] * (positions * groups), [every] * c)


def _x_pixels(spec, h: int, w: int, tiles: tuple[int, int], pad: tuple[int, int], reads: frozenset) -> int:
    """Pixels of one channel's image read when each tile reads the window elements ``reads``."""
    import numpy as np

    hit = np.zeros((h, w), dtype=bool)
    for a, b in reads:
        rows = np.arange(tiles[0]) * spec.m + a - pad[0]
        cols = np.arange(tiles[1]) * spec.m + b - pad[1]
        rows, cols = rows[(rows >= 0) & (rows < h)], cols[(cols >= 0) & (cols < w)]
        hit[np.ix_(rows, cols)] = True
    return int(hit.sum())


def touched_extent(size: int, tiles: int, m: int, n: int, pad: int) -> int:
    """Pixels of one spatial axis that some tile window reads: [-pad, (tiles-1)·m - pad + n) ∩ [0, size)."""
    lo, hi = -pad, (tiles - 1) * m - pad + n
    return max(0, min(hi, size) - max(lo, 0))


def _programs(t_total: int, block: int) -> int:
    return math.ceil(t_total / block)


def _input_launch(spec, nb, c, h, w, pad, tiles, in_es, v_es, wrelu, cfg) -> LaunchCount:
    from tritonwino.kernels.codegen import input_transform_program, lin_flops

    n = spec.n
    t_total = nb * tiles[0] * tiles[1]
    grid = (_programs(t_total, cfg.block_t), _programs(c, cfg.block_c), 1)
    lanes = grid[0] * grid[1] * cfg.block_t * cfg.block_c
    flops = sum(lin_flops(s, spec.order) for s in input_transform_program(spec)) + (n * n if wrelu else 0)
    lc = LaunchCount("input_transform", grid, programs=grid[0] * grid[1])
    lc.simt_flops = lanes * flops
    xh = touched_extent(h, tiles[0], spec.m, n, pad[0])
    xw = touched_extent(w, tiles[1], spec.m, n, pad[1])
    lc.unique_load_bytes = nb * c * xh * xw * in_es
    lc.unique_store_bytes = lc.store_bytes = n * n * c * t_total * v_es
    return lc


def _epilogue_flops(spec, has_bias: bool, relu: bool) -> int:
    from tritonwino.kernels.codegen import lin_flops, output_transform_program

    mm = spec.m * spec.m
    return (sum(lin_flops(s, spec.order) for s in output_transform_program(spec))
            + (mm if has_bias else 0) + (mm if relu else 0))


def sparse_launches(spec, nb: int, c: int, k: int, h: int, w: int, pad: tuple[int, int],
                    stats: PackStats, group_k: int, path: str, fused_cfg, input_cfg=None, *,
                    in_es: int = 2, idx_es: int = 2, operand: str = "fp16", precision: str = "ieee",
                    has_bias: bool = False, relu: bool = False, winograd_relu: bool = False) -> list[LaunchCount]:
    """Launch counts of the sparse path ``"two-kernel"`` or ``"one-kernel"`` for a weight with
    ``stats`` (:func:`pack_stats`). ``in_es``: element size of x, V, the values and y; ``operand``:
    the dot operand type as the counter names it (fp16, bf16, fp32)."""
    from tritonwino.kernels.codegen import lin_flops, position_v_program

    counts = stats.counts
    n = spec.n
    ho, wo = h + 2 * pad[0] - spec.r + 1, w + 2 * pad[1] - spec.r + 1
    tiles = (math.ceil(ho / spec.m), math.ceil(wo / spec.m))
    t_total = nb * tiles[0] * tiles[1]
    g = math.ceil(k / group_k)
    tb = _programs(t_total, fused_cfg.block_t)
    bt, bc = fused_cfg.block_t, fused_cfg.block_c
    launches = []
    if path == "two-kernel":
        launches.append(_input_launch(spec, nb, c, h, w, pad, tiles, in_es, in_es, winograd_relu, input_cfg))
    lc = LaunchCount(f"fused_{'v' if path == 'two-kernel' else 'x'}_sparse", (tb, g, 1), programs=tb * g)
    chunks = [math.ceil(cnt / bc) for cnt in counts]
    macs = tb * bt * group_k * bc * sum(chunks)
    if operand == "fp32" and precision == "ieee":
        lc.simt_flops += 2 * macs
        lc.dot_simt_flops = 2 * macs
    else:
        lc.tc_macs["fp32/" + precision if operand == "fp32" else operand] = macs
    lc.simt_flops += tb * g * bt * group_k * _epilogue_flops(spec, has_bias, relu)
    nnz = sum(counts)
    w_bytes = nnz * group_k * in_es + nnz * idx_es + (n * n * g + 1) * 4 + (k * in_es if has_bias else 0)
    if path == "two-kernel":
        lc.unique_load_bytes = stats.kept_rows * t_total * in_es + w_bytes
    else:
        pos_flops = []
        for p in range(n * n):
            prog, _ = position_v_program(spec, p // n, p % n)
            pos_flops.append(sum(lin_flops(s, spec.order) for s in prog) + (1 if winograd_relu else 0))
        lc.simt_flops += tb * bt * bc * sum(chunks[p * g + gg] * pos_flops[p] for p in range(n * n) for gg in range(g))
        reads = [frozenset(position_v_program(spec, p // n, p % n)[1]) for p in range(n * n)]
        pixels: dict[frozenset, int] = {}
        x_elems = 0
        for ps in stats.positions_of_channel:
            if ps not in pixels:
                pixels[ps] = _x_pixels(spec, h, w, tiles, pad, frozenset().union(*(reads[p] for p in ps)))
            x_elems += pixels[ps]
        lc.unique_load_bytes = nb * x_elems * in_es + w_bytes
    lc.unique_store_bytes = lc.store_bytes = nb * k * ho * wo * in_es
    launches.append(lc)
    return launches


def dense_launches(spec, nb: int, c: int, k: int, h: int, w: int, pad: tuple[int, int], block_k: int,
                   fused_cfg, input_cfg, *, in_es: int = 2, operand: str = "fp16", precision: str = "ieee",
                   has_bias: bool = False, relu: bool = False) -> list[LaunchCount]:
    """Launch counts of the dense two-kernel path (every channel of every position kept)."""
    n = spec.n
    g = math.ceil(k / block_k)
    out = sparse_launches(spec, nb, c, k, h, w, pad, dense_stats(c, n * n, g), block_k, "two-kernel", fused_cfg,
                          input_cfg, in_es=in_es, idx_es=0, operand=operand, precision=precision,
                          has_bias=has_bias, relu=relu)
    fused = out[-1]
    fused.kernel = "fused_v_dense"
    # the dense weight is Q (P, C, K): no indices or offsets, K columns instead of G·block_k
    fused.unique_load_bytes -= (n * n * g * c * block_k * in_es + (n * n * g + 1) * 4)
    fused.unique_load_bytes += n * n * c * k * in_es
    return out
