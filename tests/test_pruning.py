"""Helpers and per-layer mask computations of tritonwino.pruning, checked against the paper's
numbers (algorithms.md §1–3) and brute-force re-computations."""

import itertools
import math

import pytest
import torch

from tritonwino.pruning import (
    importance_factor,
    li_importance,
    position_support,
    prune_spatial_magnitude,
    prune_spatial_structured,
    prune_winograd,
    spatial_group_importance,
    spatial_structured_mask,
    winograd_mask_from_spatial,
    winograd_sparsity,
    winograd_weight,
)
from tritonwino.pruning.helpers import bisect_threshold, group_expand, group_reduce
from tritonwino.transforms import ACCURATE_POINTS

# Published F(4x4,3x3) G (algorithms.md §0.1), typed in independently of the library.
G43 = torch.tensor(
    [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
     [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=torch.float64)
AT43 = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                    dtype=torch.float64)
BT43 = torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                     [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=torch.float64)


# ---------------------------------------------------------------- importance factor
def test_importance_factor_f43_matches_paper():
    v = torch.tensor([42, 136, 136, 850, 850, 42], dtype=torch.float64).sqrt()
    expected = torch.outer(v, v) / 42
    got = importance_factor(4, 3)
    assert got.dtype == torch.float64 and got.shape == (6, 6)
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=0)
    assert got.min() == 1.0
    assert abs(float(got[3, 3]) - 20.238) < 1e-3  # the table's 20.238
    assert abs(float(got[0, 1]) - 1.800) < 1e-3


def test_importance_factor_f23_matches_paper():
    v = torch.tensor([2, 4, 4, 2], dtype=torch.float64).sqrt()
    torch.testing.assert_close(importance_factor(2, 3), torch.outer(v, v) / 2, rtol=1e-13, atol=0)
    assert float(importance_factor(2, 3)[1, 1]) == pytest.approx(2.0)


def test_importance_factor_f45_depends_on_g_scaling_convention():
    # algorithms.md quotes v² = [57.125, 160.5, ...] (max F̂ 78.1) for the NNPACK/SkimCaffe F(4x4,5x5)
    # matrices, whose A^T carries factors 8 that wincnn's "fractions in G" puts into G. F̂ depends
    # on A and B only, so with the library's matrices it differs; check the published value from
    # the published matrices, and that ours is the same formula on our matrices.
    at_pub = torch.tensor([[1, 1, 1, 1, 1, 8, 8, 0], [0, 1, -1, 2, -2, 4, -4, 0], [0, 1, 1, 4, 4, 2, 2, 0],
                           [0, 1, -1, 8, -8, 1, -1, 1]], dtype=torch.float64)
    from tritonwino.transforms import winograd_matrices

    _, _, bt = winograd_matrices(6, 3)  # algorithms.md: F(4,5) B^T == F(6,3) B^T
    v2 = at_pub.pow(2).sum(0) * bt.pow(2).sum(1)
    torch.testing.assert_close(v2, torch.tensor([57.125, 160.5, 160.5, 1115.625, 1115.625, 4462.5, 4462.5,
                                                 57.125], dtype=torch.float64))
    assert float(v2.max() / v2.min()) == pytest.approx(78.1, abs=0.05)
    at, _, bt45 = winograd_matrices(4, 5)
    v = at.norm(dim=0) * bt45.norm(dim=1)
    torch.testing.assert_close(importance_factor(4, 5), torch.outer(v, v) / (v.min() ** 2))


def test_importance_factor_is_output_sensitivity_bruteforce():
    # F[x,y]^2 = Σ_{p,q,k,l} (AT[p,x] AT[q,y] BT[x,k] BT[y,l])^2, expanded with plain loops.
    at, bt = AT43, BT43
    n, m = 6, 4
    d = torch.zeros(n, n, dtype=torch.float64)
    for x, y in itertools.product(range(n), range(n)):
        s = 0.0
        for p, q, k, l in itertools.product(range(m), range(m), range(n), range(n)):
            s += (at[p, x] * at[q, y] * bt[x, k] * bt[y, l]).item() ** 2
        d[x, y] = s
    f = d.sqrt()
    torch.testing.assert_close(importance_factor(4, 3), f / f.min(), rtol=1e-12, atol=0)


def test_importance_factor_other_points():
    pts = ACCURATE_POINTS[6]
    f = importance_factor(4, 3, pts)
    assert f.min() == 1.0 and torch.equal(f, f.T)
    assert not torch.allclose(f, importance_factor(4, 3))
    with pytest.raises(ValueError):
        importance_factor(4, 3, points=[0, 1, 2])
    with pytest.raises(ValueError):
        importance_factor(0, 3)


def test_li_importance_f43():
    a = torch.tensor([1, 2, 2, math.sqrt(85), math.sqrt(85), 1], dtype=torch.float64)
    torch.testing.assert_close(li_importance(4, 3), torch.outer(a, a), rtol=1e-13, atol=0)
    assert float(li_importance(4, 3)[3, 0]) == pytest.approx(9.22, abs=0.005)


# ---------------------------------------------------------------- Q, support, sparsity
def test_winograd_weight_float64_matches_published_g():
    w = torch.randn(3, 2, 3, 3)
    q = winograd_weight(w, 4)
    assert q.dtype == torch.float64 and q.shape == (3, 2, 6, 6)
    ref = G43 @ w.double() @ G43.T
    torch.testing.assert_close(q, ref, rtol=1e-14, atol=1e-15)


def test_position_support_group_sizes():
    sizes = position_support(4, 3).sum(1).reshape(6, 6)
    expected = torch.tensor([[1, 3, 3, 3, 3, 1]] + [[3, 9, 9, 9, 9, 3]] * 4 + [[1, 3, 3, 3, 3, 1]])
    assert torch.equal(sizes, expected)
    s2 = position_support(2, 3).sum(1).reshape(4, 4)
    assert int((s2 == 1).sum()) == 4 and int((s2 == 3).sum()) == 8 and int((s2 == 9).sum()) == 4
    # corners: Q[0,0] <- w[0,0], Q[0,5] <- w[0,2]
    sup = position_support(4, 3)
    assert sup[0].nonzero().flatten().tolist() == [0]
    assert sup[5].nonzero().flatten().tolist() == [2]


def test_winograd_sparsity_inputs_and_errors():
    w = torch.randn(4, 3, 3, 3)
    w[0, 0] = 0  # one whole kernel zero -> 36 zeros of Q
    w[1, 1, 0, 0] = 0  # a corner weight -> Q[0,0] zero
    expect = (36 + 1) / (4 * 3 * 36)
    assert winograd_sparsity(w, 4) == pytest.approx(expect)
    q = winograd_weight(w, 4)
    assert winograd_sparsity(q, 4) == pytest.approx(expect)
    conv = torch.nn.Conv2d(3, 4, 3)
    with torch.no_grad():
        conv.weight.copy_(w)
    assert winograd_sparsity(conv, 4) == pytest.approx(expect)
    with pytest.raises(ValueError, match="match neither"):
        winograd_sparsity(torch.randn(2, 2, 5, 5), 4)
    with pytest.raises(TypeError):
        winograd_sparsity([1, 2, 3], 4)
    with pytest.raises(ValueError):
        winograd_sparsity(w, 0)


# ---------------------------------------------------------------- group helpers / bisection
def test_group_reduce_expand_ragged():
    x = torch.arange(5 * 3, dtype=torch.float64).reshape(5, 3, 1, 1)
    g = group_reduce(x, (2, 2), "max")
    assert g.shape == (3, 2, 1, 1)
    assert g[2, 1, 0, 0] == x[4, 2, 0, 0] and g[0, 0, 0, 0] == x[1, 1, 0, 0]
    mean = group_reduce(x, (2, 2), "mean")
    assert mean[2, 1, 0, 0] == x[4, 2, 0, 0]  # ragged corner: one real member
    assert mean[0, 0, 0, 0] == x[:2, :2].mean()
    e = group_expand(g, (2, 2), 5, 3)
    assert e.shape == x.shape and e[3, 1, 0, 0] == g[1, 0, 0, 0]


def test_bisect_threshold_hits_monotone_target():
    vals = torch.rand(100000, dtype=torch.float64)
    tau, s = bisect_threshold(lambda t: float((vals < t).double().mean()), 1.0, 0.37, tol=1e-4)
    assert abs(s - 0.37) <= 1e-4 and abs(tau - 0.37) < 0.01
    with pytest.raises(ValueError):
        bisect_threshold(lambda t: 0.0, 1.0, 1.0)


# ---------------------------------------------------------------- step 1
def _bruteforce_structured(w, tau):
    """Independent element-granularity step 1 with explicit loops over kernels and positions."""
    g = G43
    k, c = w.shape[:2]
    zero = torch.zeros_like(w, dtype=torch.bool)
    for o, i in itertools.product(range(k), range(c)):
        for x, y in itertools.product(range(6), range(6)):
            sup = [(u, v) for u in range(3) for v in range(3) if g[x, u] != 0 and g[y, v] != 0]
            imp = max(abs(float(w[o, i, u, v])) for u, v in sup)
            if imp < tau:
                for u, v in sup:
                    zero[o, i, u, v] = True
    return ~zero


def test_spatial_structured_mask_matches_bruteforce():
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    for tau in (0.3, 0.8, 1.5):
        assert torch.equal(spatial_structured_mask(w, tau), _bruteforce_structured(w, tau))


def test_step1_zeroes_exactly_the_claimed_winograd_entries():
    w = torch.randn(16, 8, 3, 3)
    mask, tau, achieved = prune_spatial_structured(w, 0.5)
    q = winograd_weight(w * mask, 4)
    claimed_kept = winograd_mask_from_spatial(mask, 4)
    assert torch.equal(q == 0, ~claimed_kept)  # exact zeros are exactly the structural ones
    imp = spatial_group_importance(w, 4)
    assert bool((q[imp < tau] == 0).all())  # every pruned group is zero in Q
    assert achieved == pytest.approx(float((q == 0).double().mean()))


@pytest.mark.parametrize("target", [0.2, 0.5, 0.8])
def test_step1_binary_search_hits_target(target):
    w = torch.randn(32, 16, 3, 3)
    mask, tau, achieved = prune_spatial_structured(w, target, tol=1e-4)
    q_entries = 32 * 16 * 36
    # sparsity moves in jumps of up to 36 entries (an interior group zeroes a whole kernel)
    assert abs(achieved - target) <= max(1e-4, 36 / q_entries)
    assert winograd_sparsity(w * mask, 4) == pytest.approx(achieved)


@pytest.mark.parametrize("block", [(1, 1), (4, 2)])
@pytest.mark.parametrize("target", [0.3, 0.7])
def test_step1_threshold_is_the_closest_achievable_sparsity_from_one_mask_evaluation(monkeypatch, block, target):
    """The sorted per-entry thresholds give the exact closest step of sparsity(τ) (checked against
    a sweep over every τ that can matter), with one mask and one Q computed instead of a bisection
    of up to 60 (26-30 s per ResNet-18 prune() at element granularity)."""
    from tritonwino.pruning import masks

    w = torch.randn(8, 6, 3, 3, dtype=torch.float64)
    w[0, 0] = 0  # zero weights count as pruned already
    calls = []
    real = masks.winograd_weight
    monkeypatch.setattr(masks, "winograd_weight", lambda *a, **k: calls.append(1) or real(*a, **k))
    mask, tau, achieved = prune_spatial_structured(w, target, block=block)
    assert len(calls) == 1
    imp = spatial_group_importance(w, 4, block=block).flatten().unique()
    sweep = torch.cat([imp.new_zeros(1), 0.5 * (imp[:-1] + imp[1:]), imp[-1:] * 1.01])
    reachable = [float((winograd_weight(w * spatial_structured_mask(w, float(t), block=block), 4) == 0)
                       .double().mean()) for t in sweep]
    best = min(reachable, key=lambda s: (abs(s - target), s))
    assert achieved == pytest.approx(best, abs=1e-12)
    assert torch.equal(mask, spatial_structured_mask(w, tau, block=block))


def test_step1_keeps_previous_mask_and_f23():
    w = torch.randn(8, 8, 3, 3)
    m1, _, s1 = prune_spatial_structured(w, 0.3, m=2)
    m2, _, s2 = prune_spatial_structured(w * m1, 0.6, m=2, prev_mask=m1)
    assert bool((m2 <= m1).all()) and s2 > s1
    assert winograd_sparsity(w * m2, 2) == pytest.approx(s2)


@pytest.mark.parametrize("block", [(4, 1), (4, 2)])
def test_step1_block_granularity_zeros_whole_groups(block):
    bk, bc = block
    w = torch.randn(8, 4, 3, 3)
    mask, _, achieved = prune_spatial_structured(w, 0.5, block=block)
    zero = winograd_weight(w * mask, 4) == 0  # (8, 4, 6, 6)
    g = zero.reshape(8 // bk, bk, 4 // bc, bc, 6, 6)
    allz, anyz = g.all(dim=(1, 3)), g.any(dim=(1, 3))
    assert torch.equal(allz, anyz)  # each (bk, bc) group at each position: all zero or none
    assert 0.3 < achieved < 0.7


def test_spatial_magnitude_baseline_gives_little_winograd_sparsity():
    w = torch.randn(16, 16, 3, 3)
    mask, tau, sp = prune_spatial_magnitude(w, 0.5)
    assert sp == pytest.approx(0.5, abs=1 / w.numel())
    assert bool((w.abs()[~mask] <= tau).all()) and bool((w.abs()[mask] >= tau).all())
    assert winograd_sparsity(w * mask, 4) < 0.25


# ---------------------------------------------------------------- step 2 and baselines
def test_step2_mask_is_importance_weighted_threshold():
    q = torch.randn(16, 8, 6, 6)
    f = importance_factor(4, 3)
    mask, tau, achieved = prune_winograd(q, 0.7, f)
    score = q.double().abs() * f
    assert torch.equal(mask, score >= tau)
    assert abs(achieved - 0.7) <= 1e-4
    # the paper's form |Q| < τ / F̂
    assert torch.equal(~mask, q.double().abs() < tau / f)


def test_li_and_liu_baselines():
    q = torch.randn(16, 8, 6, 6)
    a = li_importance(4, 3)
    mask, tau0, _ = prune_winograd(q, 0.6, a)
    assert torch.equal(~mask, q.double().abs() < tau0 / a)  # τ_i = τ_0 / (‖Aᵀ_x‖‖Aᵀ_y‖)
    mask_liu, _, s = prune_winograd(q, 0.6, None)  # plain magnitude to density 0.4
    kept = q.abs()[mask_liu]
    assert float(kept.min()) >= float(q.abs()[~mask_liu].max())
    assert s == pytest.approx(0.6, abs=1e-4)


def test_step2_counts_existing_zeros_and_keeps_prev():
    q = torch.randn(8, 8, 6, 6)
    q[:4] = 0  # half already zero
    mask, _, s = prune_winograd(q, 0.4, importance_factor(4, 3))
    assert s == pytest.approx(0.5)  # target below the existing zeros: nothing more pruned
    m1, _, s1 = prune_winograd(q, 0.7, importance_factor(4, 3))
    m2, _, s2 = prune_winograd(q, 0.8, importance_factor(4, 3), prev_mask=m1)
    assert bool((m2 <= m1).all()) and abs(s2 - 0.8) < 1e-3


def test_step2_block_granularity():
    q = torch.randn(32, 8, 6, 6)
    mask, _, s = prune_winograd(q, 0.75, importance_factor(4, 3), block=(16, 1))
    g = mask.reshape(2, 16, 8, 1, 6, 6)
    assert torch.equal(g.all(dim=(1, 3)), g.any(dim=(1, 3)))
    assert abs(s - 0.75) < 0.02  # groups of 16 entries: resolution 1/576


def test_mask_functions_reject_bad_input():
    w = torch.randn(2, 2, 3, 3)
    with pytest.raises(ValueError, match="target"):
        prune_spatial_structured(w, 1.5)
    with pytest.raises(TypeError):
        prune_spatial_structured(w, "half")
    with pytest.raises(ValueError, match="block"):
        prune_spatial_structured(w, 0.5, block=(0, 1))
    with pytest.raises(ValueError, match="block"):
        prune_winograd(torch.randn(2, 2, 6, 6), 0.5, block="16")
    with pytest.raises(ValueError, match="square"):
        prune_spatial_structured(torch.randn(2, 2, 3, 1), 0.5)
    with pytest.raises(ValueError):
        prune_winograd(torch.randn(2, 2, 6), 0.5)
