"""Per-layer mask computations (pure functions on tensors): step 1, step 2 and the baselines.

Masks are bool tensors, **True = kept**. Granularity ``block=(bk, bc)``: in the Winograd domain, for
every position p, a group of ``bk`` consecutive output channels × ``bc`` consecutive input channels
is kept or pruned together; (1, 1) is the paper's element granularity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..reference import matrices
from .helpers import (
    check_block,
    check_target,
    group_expand,
    group_reduce,
    position_support,
    spatial_weight_check,
    threshold_for_target,
    winograd_weight,
)

__all__ = [
    "spatial_group_importance",
    "spatial_structured_mask",
    "prune_spatial_structured",
    "winograd_mask_from_spatial",
    "prune_spatial_magnitude",
    "winograd_score",
    "prune_winograd",
]


def _q_sparsity(weight: torch.Tensor, mask: torch.Tensor, m: int, points) -> float:
    q = winograd_weight(weight * mask.to(weight.dtype), m, points)
    return float((q == 0).sum()) / q.numel()


def _separable(t: torch.Tensor, rows: list[torch.Tensor], op: str) -> torch.Tensor:
    """``out[..., i, j] = op over (a, b) in rows[i] × rows[j] of t[..., a, b]`` (op "amax" / "amin").

    The support of row (x, y) of G⊗G is supp(G[x]) × supp(G[y]), so a reduction over it splits
    into one over each axis: r·n + n² small reductions per kernel instead of n²·r²."""
    half = torch.stack([getattr(t[..., :, idx], op)(dim=-1) for idx in rows], dim=-1)  # (..., A, len)
    return torch.stack([getattr(half[..., idx, :], op)(dim=-2) for idx in rows], dim=-2)  # (..., len, len)


def _g_rows(m: int, r: int, points, device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per row x of G the spatial taps it reads, and per tap u the rows that read it."""
    _, g, _ = matrices(m, r, points)
    nz = (g != 0).to(device)
    return ([nz[x].nonzero().flatten() for x in range(nz.shape[0])],
            [nz[:, u].nonzero().flatten() for u in range(nz.shape[1])])


def spatial_group_importance(
    weight: torch.Tensor, m: int = 4, points: Sequence[object] | None = None, block=(1, 1)
) -> torch.Tensor:
    """L∞ group importance of step 1 [code, SpatialPruning/utils/mask.py]: (Kg, Cg, n, n).

    ``imp[o, c, x, y] = max |W[o, c, u, v]|`` over the support of row (x, y) of G⊗G; for a channel
    block (bk, bc) the max also runs over the block's kernels [ours: the natural L∞ extension].
    """
    r = spatial_weight_check(weight)
    block = check_block(block)
    a = group_reduce(weight.detach().abs().to(torch.float64), block, "max")  # (Kg, Cg, r, r)
    taps, _ = _g_rows(m, r, points, a.device)
    return _separable(a, taps, "amax")


def spatial_structured_mask(
    weight: torch.Tensor, tau: float, m: int = 4, points: Sequence[object] | None = None, block=(1, 1)
) -> torch.Tensor:
    """Spatial keep-mask (K, C, r, r) for threshold τ: every group with importance < τ has all of its
    support zeroed; the pruned set is the union over groups [code]."""
    r = spatial_weight_check(weight)
    block = check_block(block)
    imp = spatial_group_importance(weight, m, points, block)
    kg, cg, n, _ = imp.shape
    pruned = (imp < tau).reshape(kg, cg, n * n).to(torch.float64)
    supp = position_support(m, r, points).to(device=imp.device, dtype=torch.float64)
    zero = (pruned @ supp) > 0  # (Kg, Cg, r²): weight lies in the support of some pruned group
    zero = group_expand(zero.reshape(kg, cg, r, r), block, weight.shape[0], weight.shape[1])
    return ~zero


def prune_spatial_structured(
    weight: torch.Tensor,
    target: float,
    m: int = 4,
    points: Sequence[object] | None = None,
    block=(1, 1),
    prev_mask: torch.Tensor | None = None,
    tol: float = 1e-4,
    max_iter: int = 60,
) -> tuple[torch.Tensor, float, float]:
    """Step 1 for one layer: the layer threshold τ whose Winograd-domain sparsity of
    ``G (W ⊙ mask) Gᵀ`` is closest to ``target`` (the authors' percentage mode).

    The τ that zeroes each Winograd entry is known in closed form: weight w is pruned once τ
    exceeds the smallest importance of a group whose support holds it, and entry (x, y) is zero
    once every nonzero weight of its support is pruned. Sorting those per-entry thresholds once
    finds the closest achievable sparsity exactly (``threshold_for_target``) instead of
    re-evaluating the mask at every bisection step; the achieved sparsity is then measured on
    ``G (W ⊙ mask) Gᵀ`` itself. ``tol`` / ``max_iter`` are kept for compatibility (unused).

    ``prev_mask`` (from an earlier stage) stays pruned. Returns ``(mask, τ, achieved sparsity)``.
    """
    target = check_target(target)
    r = spatial_weight_check(weight)
    block = check_block(block)
    w = weight.detach().to(torch.float64)
    if prev_mask is not None:
        w = w * prev_mask.to(w.dtype)
    keep_prev = torch.ones_like(w, dtype=torch.bool) if prev_mask is None else prev_mask.bool()
    k, c = w.shape[:2]
    imp = spatial_group_importance(w, m, points, block)  # (Kg, Cg, n, n)
    taps, readers = _g_rows(m, r, points, imp.device)
    # τ that prunes each weight: the smallest importance of a group whose support holds it
    w_tau = group_expand(_separable(imp, readers, "amin"), block, k, c)  # (K, C, r, r)
    # τ that zeroes each Winograd entry: every nonzero weight of its support pruned
    e_tau = _separable(torch.where(w != 0, w_tau, -math.inf), taps, "amax")  # (K, C, n, n)
    tau, _ = threshold_for_target(e_tau, float(w.abs().max()) if w.numel() else 0.0, target)
    mask = (w_tau >= tau) & keep_prev  # == spatial_structured_mask(w, τ) & keep_prev, without recomputing it
    return mask, tau, _q_sparsity(w, mask, m, points)


def winograd_mask_from_spatial(
    spatial_mask: torch.Tensor, m: int = 4, points: Sequence[object] | None = None
) -> torch.Tensor:
    """Winograd-domain form of a spatial mask (K, C, n, n): entry (x, y) is structurally zero
    (False) iff every spatial weight in the support of row (x, y) of G⊗G is pruned."""
    k, c, r, r2 = spatial_mask.shape
    if r != r2:
        raise ValueError(f"spatial mask must be (K, C, r, r), got {tuple(spatial_mask.shape)}")
    supp = position_support(m, r, points).to(device=spatial_mask.device, dtype=torch.float64)
    kept = spatial_mask.reshape(k, c, r * r).to(torch.float64) @ supp.T  # (K, C, P)
    n = m + r - 1
    return (kept > 0).reshape(k, c, n, n)


def prune_spatial_magnitude(
    weight: torch.Tensor, target: float, prev_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, float, float]:
    """Baseline: unstructured magnitude pruning of the spatial weight to a **spatial** sparsity
    ``target`` (exactly: the smallest-|w| fraction). Returns ``(mask, τ, spatial sparsity)``."""
    target = check_target(target)
    spatial_weight_check(weight)
    a = weight.detach().abs().to(torch.float64)
    if prev_mask is not None:
        a = a * prev_mask.to(a.dtype)
    flat = a.flatten()
    kprune = int(round(target * flat.numel()))
    mask = torch.ones_like(flat, dtype=torch.bool)
    tau = 0.0
    if kprune > 0:
        idx = torch.argsort(flat, stable=True)[:kprune]
        mask[idx] = False
        tau = float(flat[idx[-1]])
    mask = mask.reshape(weight.shape)
    if prev_mask is not None:
        mask &= prev_mask.bool()
    return mask, tau, 1.0 - float(mask.sum()) / mask.numel()


def winograd_score(q: torch.Tensor, importance: torch.Tensor | None, block=(1, 1)) -> torch.Tensor:
    """Group score ``mean(|Q| · F̂)`` over each (bk, bc) group at each position: (Kg, Cg, n, n).

    For (1, 1) this is the authors' ``|Q| · F̂`` [code]; averaging over channel groups is [ours].
    ``importance=None`` means plain magnitude (Liu et al.).
    """
    s = q.detach().abs().to(torch.float64)
    if importance is not None:
        s = s * importance.to(device=s.device, dtype=torch.float64)
    return group_reduce(s, check_block(block), "mean")


def prune_winograd(
    q: torch.Tensor,
    target: float,
    importance: torch.Tensor | None = None,
    block=(1, 1),
    prev_mask: torch.Tensor | None = None,
    tol: float = 1e-4,
    max_iter: int = 60,
) -> tuple[torch.Tensor, float, float]:
    """Step 2 (and the Li / Liu baselines) for one layer: the τ on the group score whose fraction
    of zeros of ``Q ⊙ mask`` is closest to ``target`` (sorted per-entry thresholds, exact; the
    authors bisect); entries already zero count [code]. ``tol`` / ``max_iter`` are kept for
    compatibility (unused). Returns ``(mask (K, C, n, n), τ, achieved)``."""
    target = check_target(target)
    if q.dim() != 4 or q.shape[2] != q.shape[3]:
        raise ValueError(f"q must be (K, C, n, n), got {tuple(q.shape)}")
    block = check_block(block)
    k, c = q.shape[:2]
    qd = q.detach()
    keep_prev = torch.ones_like(qd, dtype=torch.bool) if prev_mask is None else prev_mask.bool()
    qd = qd * keep_prev.to(qd.dtype)
    score = winograd_score(qd, importance, block)
    # The τ that prunes each entry is its group's score (-inf for entries that are zero already):
    # one sort finds the closest achievable sparsity (threshold_for_target), no bisection.
    e_tau = torch.where((qd != 0) & keep_prev, group_expand(score, block, k, c), -math.inf)
    tau, _ = threshold_for_target(e_tau, float(score.max()) if score.numel() else 0.0, target)
    mask = group_expand(score >= tau, block, k, c) & keep_prev
    return mask, tau, 1.0 - float((mask & (qd != 0)).sum()) / qd.numel()
