"""Shared helpers: Winograd-domain weight, the sparsity metric, the importance factor matrix,
supports of G⊗G rows, channel-group reductions and the per-layer threshold bisection.

Source tags (as in docs/pruning.md): **[code]** = the authors' code
(``jiecaoyu/winograd``), **[derived]** = recomputed from the matrices, **[ours]** = a choice made
in this library.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .. import _checks
from .._checks import check_block
from ..reference import matrices
from ..reference import winograd_weight as _winograd_weight_points
from ..transforms import normalize_points

__all__ = [
    "winograd_weight",
    "importance_factor",
    "li_importance",
    "position_support",
    "check_block",
    "group_reduce",
    "group_expand",
    "bisect_threshold",
    "threshold_for_target",
    "points_key",
]


def points_key(m: int, r: int, points: Sequence[object] | None) -> tuple[str, ...]:
    """Canonical, hashable, serialisable form of a point set (strings of Fractions)."""
    return tuple(str(p) for p in normalize_points(m, r, points))


def check_m(m: object) -> int:
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"m (output tile size) must be an int >= 1, got {m!r}")
    return m


def winograd_weight(weight: torch.Tensor, m: int, points: Sequence[object] | None = None) -> torch.Tensor:
    """``Q = G W Gᵀ`` of shape (K, C, n, n), computed in float64 (on ``weight``'s device).

    Cast the result yourself (``.float()``) after it has been computed in float64.
    """
    check_m(m)
    return _winograd_weight_points(weight, m, points)


def importance_factor(m: int, r: int, points: Sequence[object] | None = None) -> torch.Tensor:
    """The normalised importance factor matrix F̂ (n×n, float64, min entry 1) [code, para.mask_multi_*].

    ``F[x, y] = v_x · v_y`` with ``v_x = ‖Aᵀ[:, x]‖₂ · ‖Bᵀ[x, :]‖₂``: the RMS sensitivity of an output
    tile to a perturbation of ``Q[x, y]`` under i.i.d. unit-variance inputs [derived]. It depends
    only on A and B (not on G). ``F̂ = F / min F``.
    For F(4,3) with points 0, ±1, ±2: v² = [42, 136, 136, 850, 850, 42], F̂ = outer(v, v) / 42.

    Note [derived]: F̂ depends on how the per-point scale factors are split between G and (A, B).
    The library's matrices use wincnn's "fractions in G" convention, which reproduces the authors'
    F(2,3) and F(4,3) matrices; the authors' F(4×4,5×5) matrices (NNPACK) carry factors in Aᵀ, so
    their F̂ (max 78.1) differs from the one computed here for F(4,5) (max ≈ 19.5).
    """
    check_m(m)
    at, _, bt = matrices(m, r, points)
    v = at.norm(dim=0) * bt.norm(dim=1)
    f = torch.outer(v, v)
    return f / f.min()


def li_importance(m: int, r: int, points: Sequence[object] | None = None) -> torch.Tensor:
    """Li et al.'s A-only position scaling (n×n, float64, min 1) [code, SkimCaffe sgd_solver.cpp].

    Their per-position threshold is ``τ_i = τ_0 / (‖Aᵀ[:, x]‖·‖Aᵀ[:, y]‖)``; pruning ``|Q| < τ_i``
    is pruning ``|Q| · outer(a, a) < τ_0`` with ``a_x = ‖Aᵀ[:, x]‖₂``. Normalised to min 1 [ours;
    the scale is irrelevant because τ_0 is searched per layer].
    """
    check_m(m)
    at, _, _ = matrices(m, r, points)
    a = at.norm(dim=0)
    f = torch.outer(a, a)
    return f / f.min()


def position_support(m: int, r: int, points: Sequence[object] | None = None) -> torch.Tensor:
    """Bool (n², r²): row ``i = x·n + y`` marks the spatial weights ``(u, v)`` (index ``u·r + v``) that
    Winograd entry ``Q[x, y]`` depends on, i.e. the support of row i of G⊗G [code, mask.py]."""
    _, g, _ = matrices(m, r, points)
    s = torch.kron(g, g)
    return s != 0


def group_reduce(x: torch.Tensor, block: tuple[int, int], reduce: str = "max") -> torch.Tensor:
    """Reduce a (K, C, ...) tensor over groups of ``bk`` output and ``bc`` input channels.

    Returns (ceil(K/bk), ceil(C/bc), ...). A ragged last group is reduced over its real members
    only. ``reduce`` is ``"max"`` or ``"mean"``.
    """
    bk, bc = block
    k, c = x.shape[:2]
    rest = x.shape[2:]
    kg, cg = -(-k // bk), -(-c // bc)
    if (bk, bc) == (1, 1):
        return x.clone()
    pad_k, pad_c = kg * bk - k, cg * bc - c
    if reduce == "max":
        fill = -math.inf
    elif reduce == "mean":
        fill = 0.0
    else:
        raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")
    xp = x
    if pad_k or pad_c:
        xp = torch.full((kg * bk, cg * bc, *rest), fill, dtype=x.dtype, device=x.device)
        xp[:k, :c] = x
    xp = xp.reshape(kg, bk, cg, bc, *rest)
    if reduce == "max":
        return xp.amax(dim=(1, 3))
    ones = torch.zeros((kg * bk, cg * bc), dtype=x.dtype, device=x.device)
    ones[:k, :c] = 1
    cnt = ones.reshape(kg, bk, cg, bc).sum(dim=(1, 3)).reshape(kg, cg, *([1] * len(rest)))
    return xp.sum(dim=(1, 3)) / cnt


def group_expand(g: torch.Tensor, block: tuple[int, int], k: int, c: int) -> torch.Tensor:
    """Inverse of :func:`group_reduce` for masks: (Kg, Cg, ...) -> (K, C, ...)."""
    bk, bc = block
    out = g.repeat_interleave(bk, dim=0).repeat_interleave(bc, dim=1)
    return out[:k, :c]


def bisect_threshold(
    sparsity_at: Callable[[float], float],
    hi: float,
    target: float,
    tol: float = 1e-4,
    max_iter: int = 60,
) -> tuple[float, float]:
    """Binary-search τ in [0, hi] so that ``sparsity_at(τ)`` is within ``tol`` of ``target``.

    ``sparsity_at`` must be non-decreasing in τ. Stops when |achieved − target| ≤ tol (the
    authors' 1e-4 [code, mask_winograd_structured_percentage]) or after ``max_iter`` halvings
    [ours]; sparsity is discrete, so for small layers the target may not be reachable within tol,
    in which case the τ whose sparsity is closest to the target is returned (ties: the smaller
    sparsity) [ours]. Returns ``(τ, achieved)``.
    """
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {target!r}")
    lo = 0.0
    hi = float(hi) * 1.0000001 + 1e-30  # [ours] so that τ = hi prunes every group whose score == max
    best = (0.0, sparsity_at(0.0))
    if abs(best[1] - target) <= tol or best[1] > target:
        return best
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        s = sparsity_at(mid)
        d, db = abs(s - target), abs(best[1] - target)
        if d < db or (d == db and s < best[1]):
            best = (mid, s)
        if d <= tol:
            break
        if s < target:
            lo = mid
        else:
            hi = mid
    return best


def threshold_for_target(entry_tau: torch.Tensor, hi: float, target: float) -> tuple[float, float]:
    """τ in [0, hi] whose predicted sparsity ``mean(entry_tau < τ)`` is closest to ``target``
    (ties: the smaller sparsity), found on the sorted per-entry thresholds in one pass [ours].

    ``entry_tau[i]`` is the smallest τ that zeroes entry i (``-inf``: zero already). Sparsity is a
    step function of τ that only moves at these values, so searching the sorted values finds the
    exact closest step; a bisection on τ (``bisect_threshold``) needs up to 60 full mask
    evaluations for the same answer. Returns ``(τ, predicted sparsity)``.
    """
    target = check_target(target)
    hi = float(hi) * 1.0000001 + 1e-30  # as bisect_threshold: τ = hi prunes every score == max
    v = entry_tau.detach().flatten().to(torch.float64)
    n = v.numel()
    if n == 0:
        return 0.0, 0.0
    # The closest achievable count is one of the two around the k-th smallest value x: the
    # entries below x (τ just under x) or those up to x (τ just over x). O(n), no full sort.
    want = target * n
    x = float(v.kthvalue(min(int(want) + 1, n)).values)
    below, upto = int((v < x).sum()), int((v <= x).sum())
    # τ halfway to the neighbouring distinct value: no entry sits on the threshold, so the
    # paper's form |Q| < τ / F̂ gives the same mask as score < τ despite rounding
    if x == -math.inf or (upto - want < want - below):
        higher = v[v > x]
        nxt = float(higher.min()) if higher.numel() else hi
        tau = 0.0 if x == -math.inf else 0.5 * (x + min(nxt, hi))
    else:
        lower = v[(v < x) & torch.isfinite(v) & (v >= 0)]
        tau = 0.5 * (float(lower.max()) + x) if lower.numel() else 0.0
    tau = max(0.0, min(tau, hi))
    return tau, int((v < tau).sum()) / n


def check_target(target: object, name: str = "target") -> float:
    if isinstance(target, bool) or not isinstance(target, int | float):
        raise TypeError(f"{name} must be a float in [0, 1), got {type(target).__name__}")
    t = float(target)
    if not 0.0 <= t < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {target!r}")
    return t


def spatial_weight_check(weight: torch.Tensor) -> int:
    _, _, r = _checks.check_weight(weight)
    return r
