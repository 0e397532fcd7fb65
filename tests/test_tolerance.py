"""The accuracy rule itself (tests/_tolerance.py): it passes correct implementations across many
seeds and still fails the bugs it exists for (a wrong mask, a missed channel, a wrong matrix
entry, an off-by-one tile), catching at least everything the previous rule caught.

"Correct" and "buggy" implementations here are an independent Winograd written with separable
transforms (Aᵀ·M·A per tile, not the kron form of the torch path and the kernels), so its rounding
order differs from the reference path's as a kernel's does. Pure torch: no kernels marker.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from tritonwino import _checks, reference
from tritonwino.sparse_conv import winograd_conv2d

from ._tolerance import REL_BOUND, assert_close_rule, old_rule_fails, rule_violations

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def separable_winograd(x, w, bias, pad, m, mats=None, *, q_edit=None, channels=None, tiles_w=None, shift=0):
    """Y = Aᵀ[(G W Gᵀ) ⊙ (Bᵀ X B)]A tile by tile, with the library's numerics (fp32 transforms and
    accumulation, V and Q rounded to x's half type). The keyword arguments inject bugs:
    ``q_edit(q)`` edits the Winograd-domain weight (a wrong mask), ``channels`` sums only the first
    input channels (a missed channel), ``mats`` replaces (AT, G, BT) (a wrong matrix entry),
    ``tiles_w`` computes fewer tile columns / ``shift`` writes tiles one pixel off (off-by-one tile)."""
    k, c, r, _ = w.shape
    at, g, bt = mats if mats is not None else reference.matrices(m, r)
    n = m + r - 1
    nb, _, h, wd = x.shape
    ho, wo = h + 2 * pad - r + 1, wd + 2 * pad - r + 1
    th, tw = -(-ho // m), -(-wo // m)
    opd = _checks.operand_dtype(x.dtype)
    xp = F.pad(x.float(), (pad, pad + tw * m + r - 1 - (wd + 2 * pad), pad, pad + th * m + r - 1 - (h + 2 * pad)))
    tiles = xp.unfold(2, n, m).unfold(3, n, m)  # N, C, th, tw, n, n
    btf = bt.float()
    v = (btf @ tiles @ btf.t()).to(opd).float()
    q = g @ w.double() @ g.t()
    if q_edit is not None:
        q = q_edit(q.clone())
    q = q.to(opd).float()
    if channels is not None:
        v, q = v[:, :channels], q[:, :channels]
    mm = torch.einsum("bcyxij,kcij->bkyxij", v, q)
    atf = at.float()
    yt = atf @ mm @ atf.t()  # N, K, th, tw, m, m
    if tiles_w is not None:
        yt[:, :, :, tiles_w:] = 0
    y = yt.permute(0, 1, 2, 4, 3, 5).reshape(nb, k, th * m, tw * m)
    if shift:
        y = torch.roll(y, shifts=shift, dims=3)
        y[..., :shift] = 0
    y = y[:, :, :ho, :wo]
    if bias is not None:
        y = y + bias.float().view(1, -1, 1, 1)
    return y.to(x.dtype)


def _case(seed: int, dtype: torch.dtype, m: int | None = None):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    m = m or rng.choice([2, 4, 6])
    nb, c, k = rng.randint(1, 2), rng.randint(1, 12), rng.randint(1, 12)
    h, w, pad = rng.randint(3, 13), rng.randint(3, 13), rng.randint(0, 2)
    x = torch.randn(nb, c, h, w, generator=gen).to(dtype)
    wt = (torch.randn(k, c, 3, 3, generator=gen) / math.sqrt(9 * c)).to(dtype)
    bias = torch.randn(k, generator=gen).to(dtype) if rng.random() < 0.5 else None
    oracle = F.conv2d(x.double(), wt.double(), None if bias is None else bias.double(), padding=pad)
    y_torch = winograd_conv2d(x, wt, bias, pad, m, "torch")
    return x, wt, bias, pad, m, oracle, y_torch


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_correct_implementations_pass_across_many_seeds(dtype):
    old_failures = 0
    for seed in range(150):
        x, wt, bias, pad, m, oracle, y_torch = _case(seed, dtype)
        y = separable_winograd(x, wt, bias, pad, m)
        # either implementation judged against the other as the reference
        for got, ref in ((y, y_torch), (y_torch, y)):
            assert not rule_violations(got, ref, oracle), (seed, rule_violations(got, ref, oracle))
            old_failures += old_rule_fails(got, ref, oracle)
        assert_close_rule(y, y_torch, oracle, m)  # and the algorithm's bound holds on every seed
    if dtype == torch.float32:
        # what the new rule fixes: the old one failed correct fp32 results (12 of these 300 pairs)
        assert old_failures > 0


def _bugs(wt, m, wo):
    k, c = wt.shape[:2]
    at, g, bt = (t.clone() for t in reference.matrices(m, 3))
    bt_sign = bt.clone()
    i, j = 1, int(bt[1].abs().argmax())
    bt_sign[i, j] = -bt_sign[i, j]
    at_scaled = at.clone()
    at_scaled[-1, -1] *= 1.25  # e.g. a 5 typed where a 4 belongs
    g_wrong = g.clone()
    g_wrong[1, 0] *= 1.25
    tw = -(-wo // m)
    bugs = {
        "wrong mask: one position pruned everywhere": dict(q_edit=lambda q: q.index_fill_(2, torch.tensor([1]), 0)),
        "wrong mask: output-channel groups swapped": dict(q_edit=lambda q: torch.roll(q, 1, dims=0)),
        "missed channel": dict(channels=c - 1),
        "wrong matrix entry: sign of a Bᵀ entry": dict(mats=(at, g, bt_sign)),
        "wrong matrix entry: Aᵀ corner x1.25": dict(mats=(at_scaled, g, bt)),
        "wrong matrix entry: G entry x1.25": dict(mats=(at, g_wrong, bt)),
        "off-by-one tile: last tile column not computed": dict(tiles_w=tw - 1),
        "off-by-one tile: tiles written one pixel right": dict(shift=1),
    }
    if k < 2:
        del bugs["wrong mask: output-channel groups swapped"]
    if c < 2:
        del bugs["missed channel"]
    if tw < 2:
        del bugs["off-by-one tile: last tile column not computed"]
    return bugs


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rule_still_catches_real_bugs(dtype):
    caught = missed = 0
    misses = []
    for seed in range(40):
        x, wt, bias, pad, m, oracle, y_torch = _case(1000 + seed, dtype)
        if x.shape[1] < 4 or wt.shape[0] < 4:  # a bug must have something to break
            continue
        y_good = separable_winograd(x, wt, bias, pad, m)
        for name, kw in _bugs(wt, m, oracle.shape[3]).items():
            y = separable_winograd(x, wt, bias, pad, m, **kw)
            if torch.equal(y, y_good):
                continue  # the bug does not reach this output (e.g. a tile corner cropped away)
            fails_now = bool(rule_violations(y, y_torch, oracle))
            if old_rule_fails(y, y_torch, oracle):
                assert fails_now, f"the old rule caught {name} (seed {seed}) but the new one does not"
            if fails_now:
                caught += 1
            else:
                missed += 1
                misses.append((name, seed))
    assert caught >= 100
    assert missed == 0, f"{missed} bugs passed the rule: {misses[:10]}"


def test_rule_catches_a_single_wrong_element_in_fp32_and_fp16():
    for dtype in (torch.float32, torch.float16):
        for seed in range(20):
            x, wt, bias, pad, m, oracle, y_torch = _case(2000 + seed, dtype, m=4)
            y = separable_winograd(x, wt, bias, pad, m)
            idx = tuple(int(i) for i in torch.unravel_index(oracle.abs().argmax(), oracle.shape))
            y[idx] = -y[idx]  # one element of the largest magnitude with the wrong sign
            assert rule_violations(y, y_torch, oracle), (dtype, seed)


def test_rel_bound_keys_cover_the_tested_tiles():
    assert {m for m, _ in REL_BOUND} == {2, 4, 6}


@pytest.mark.kernels
def test_interpreter_casts_to_bf16_like_a_gpu():
    """conftest makes the interpreter round fp32 -> bf16 to nearest even (it truncates by itself),
    so bf16 kernel results verified here are those a GPU computes."""
    import triton
    import triton.language as tl
    from tritonwino.kernels._common import interpreting

    if not interpreting():
        pytest.skip("compiled kernels round to nearest even by themselves")

    @triton.jit
    def cast(x_ptr, y_ptr, N: tl.constexpr):
        o = tl.arange(0, N)
        tl.store(y_ptr + o, tl.load(x_ptr + o).to(tl.bfloat16))

    x = torch.randn(1024, generator=torch.Generator().manual_seed(0))
    x[:6] = torch.tensor([float("nan"), float("inf"), -float("inf"), 3.4e38, -1.998, 1.00390625])  # carry, tie
    y = torch.empty(1024, dtype=torch.bfloat16)
    cast[(1,)](x, y, N=1024)
    ref = x.to(torch.bfloat16)
    assert torch.isnan(y[0]) and torch.equal(y[1:], ref[1:])
