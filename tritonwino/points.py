"""Interpolation-point search: how accurate is F(m, r) with a given point set, and which small
rational point set is most accurate.

The measure (issue 14; README "Accuracy"): the ratio of the mean absolute error of the Winograd
convolution to the mean absolute error of a direct convolution (``F.conv2d`` run in the same dtype)
with the same input rounding. Inputs and weights are fp32 uniform on [−1, 1]; both convolutions get
them rounded to the dtype; the reference is float64 ``F.conv2d`` of the fp32 data (the exact answer),
so for fp16/bf16 both errors include the input rounding (``ratio``). ``ratio_arith`` takes the
reference from the rounded inputs instead: the arithmetic error alone, a stricter ratio for half
types (the same number for fp32). A ratio of 1 means the Winograd path is as accurate as a direct
convolution.

Everything is seeded: the same arguments give the same numbers on the same machine and versions.

Example:
    >>> r = error_ratio(2, 3, "standard", shape=(1, 4, 4, 8, 8))
    >>> 0.5 < r["ratio"] < 4
    True
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from fractions import Fraction

import torch
import torch.nn.functional as F

from .transforms import accurate_points, default_points, normalize_points, tile_size

__all__ = ["DEFAULT_SHAPE", "SEARCH_SHAPE", "error_ratio", "candidate_magnitudes", "candidate_sets", "search_points"]

# (N, C, K, H, W) of the measurement layer: the shape of the reference notes (numerics.md).
DEFAULT_SHAPE = (1, 64, 64, 24, 24)
# A smaller layer for ranking many candidates quickly; the winners are re-measured on DEFAULT_SHAPE.
SEARCH_SHAPE = (1, 16, 16, 24, 24)


def _data(shape: Sequence[int], r: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    nb, c, k, h, w = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(nb, c, h, w, generator=gen) * 2 - 1  # fp32, exact in float64
    wt = torch.rand(k, c, r, r, generator=gen) * 2 - 1
    return x, wt


def error_ratio(m: int, r: int = 3, points: Sequence[object] | str | None = None,
                dtype: torch.dtype = torch.float32, *, backend: str = "torch", seed: int = 0,
                shape: Sequence[int] = DEFAULT_SHAPE, trials: int = 1, split_operands: bool = False) -> dict:
    """Mean absolute error of ``winograd_conv2d(..., m, points=points, backend=backend)`` over that of
    ``F.conv2d`` in ``dtype``, both on the same dtype-rounded fp32 uniform[−1, 1] data (module doc).

    ``shape`` is (N, C, K, H, W); padding r // 2; ``trials`` layers drawn from ``seed``;
    ``split_operands`` is :func:`tritonwino.functional.winograd_conv2d`'s. Returns
    ``{"ratio", "ratio_arith", "winograd_mae", "direct_mae"}`` (on a CUDA machine the Triton backend
    runs on the GPU, the rest on the CPU).
    """
    from .functional import winograd_conv2d

    device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
    pad = r // 2
    wino = direct = wino_a = direct_a = 0.0
    for t in range(trials):
        x32, w32 = _data(shape, r, seed * 1000 + t)
        x, w = x32.to(dtype), w32.to(dtype)
        ref = F.conv2d(x32.double(), w32.double(), padding=pad)
        ref_a = F.conv2d(x.double(), w.double(), padding=pad)
        y = winograd_conv2d(x.to(device), w.to(device), None, pad, m, backend=backend, points=points,
                            split_operands=split_operands)
        y = y.double().cpu()
        d = F.conv2d(x, w, padding=pad).double()
        wino += float((y - ref).abs().mean())
        direct += float((d - ref).abs().mean())
        wino_a += float((y - ref_a).abs().mean())
        direct_a += float((d - ref_a).abs().mean())
    return {"ratio": wino / direct, "ratio_arith": wino_a / direct_a,
            "winograd_mae": wino / trials, "direct_mae": direct / trials}


def candidate_magnitudes(max_num: int = 8, max_den: int = 8, lo: Fraction = Fraction(1, 8),
                         hi: Fraction = Fraction(4)) -> list[Fraction]:
    """Positive rationals p/q (p ≤ max_num, q ≤ max_den) in [lo, hi], ascending, no duplicates."""
    mags = {Fraction(p, q) for p in range(1, max_num + 1) for q in range(1, max_den + 1)}
    return sorted(v for v in mags if lo <= v <= hi)


def candidate_sets(n: int, magnitudes: Sequence[Fraction]) -> list[tuple[Fraction, ...]]:
    """Point sets of n − 1 finite points of the symmetric shape the good sets have: 0, pairs ±a and,
    when n is odd, one more signed point b (|b| not among the pairs)."""
    k = n - 2  # points besides 0
    if k < 0:
        raise ValueError(f"tile size n must be >= 2, got {n}")
    pairs, single = divmod(k, 2)
    out = []
    for combo in itertools.combinations(magnitudes, pairs):
        base = (Fraction(0),) + tuple(v for a in combo for v in (a, -a))
        if not single:
            out.append(base)
            continue
        for b in magnitudes:
            if b not in combo:
                out.extend([base + (b,), base + (-b,)])
    return out


def search_points(m: int, r: int = 3, *, dtype: torch.dtype = torch.float32,
                  magnitudes: Sequence[Fraction] | None = None, limit: int | None = 200, seed: int = 0,
                  shape: Sequence[int] = SEARCH_SHAPE, top: int = 5,
                  confirm_shape: Sequence[int] | None = None) -> list[dict]:
    """Rank candidate point sets of F(m, r) by :func:`error_ratio` (torch path, ``dtype``).

    Candidates: :func:`candidate_sets` over ``magnitudes`` (default :func:`candidate_magnitudes`),
    plus the standard and the current accurate set; when there are more than ``limit``, a sample of
    ``limit`` drawn with ``seed`` (the standard and accurate sets are always kept). Each is measured
    on ``shape`` with data seed ``seed``; the best ``top`` are re-measured on ``confirm_shape`` when
    given. Returns ``top`` dicts ``{"points", "ratio", "rank_ratio"}`` best first (``ratio`` from the
    confirming measurement, else the ranking one), points as strings.
    """
    n = tile_size(m, r)
    normalize_points(m, r, None)  # validates m, r
    mags = list(magnitudes) if magnitudes is not None else candidate_magnitudes()
    cands = candidate_sets(n, mags)
    must = [default_points(n), accurate_points(n)]
    if limit is not None and len(cands) > limit:
        cands = random.Random(seed).sample(cands, limit)
    seen, ordered = set(), []
    for pts in must + cands:
        key = frozenset(pts)
        if key not in seen:
            seen.add(key)
            ordered.append(tuple(pts))
    scored = []
    for pts in ordered:
        try:
            rr = error_ratio(m, r, pts, dtype, seed=seed, shape=shape)["ratio"]
        except (ValueError, RuntimeError):
            continue
        if rr == rr:  # drop NaN (overflow)
            scored.append((rr, pts))
    scored.sort(key=lambda t: t[0])
    out = []
    for rr, pts in scored[:top]:
        ratio = error_ratio(m, r, pts, dtype, seed=seed, shape=confirm_shape)["ratio"] if confirm_shape else rr
        out.append({"points": [str(p) for p in pts], "ratio": ratio, "rank_ratio": rr})
    out.sort(key=lambda d: d["ratio"])
    return out
