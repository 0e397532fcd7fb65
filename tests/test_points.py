"""Issue 14 part A: the accurate point sets (exact, and more accurate than the standard ones on both
paths), the point search (tritonwino.points) and its subcommand (tritonwino points)."""

from __future__ import annotations

import json
import random
from fractions import Fraction

import pytest
import torch

from tritonwino import cli
from tritonwino.points import candidate_magnitudes, candidate_sets, error_ratio, search_points
from tritonwino.transforms import ACCURATE_POINTS, accurate_points, default_points, winograd_matrices_exact

SMALL = (1, 16, 16, 12, 12)  # (N, C, K, H, W) of the accuracy checks: fast, same ordering as C = K = 64


def _mm(a, b):
    return [[sum((a[i][k] * b[k][j] for k in range(len(b))), Fraction(0)) for j in range(len(b[0]))]
            for i in range(len(a))]


def _t(a):
    return [list(c) for c in zip(*a, strict=True)]


# every (m, r) with an odd r whose tile size has an accurate set
EXACT_CASES = [(n - r + 1, r) for n in sorted(ACCURATE_POINTS) for r in (3, 5, 7) if n - r + 1 >= 1]


@pytest.mark.parametrize("m,r", EXACT_CASES)
def test_accurate_sets_are_exact_2d(m, r):
    """Aᵀ[(G W Gᵀ) ⊙ (Bᵀ X B)]A equals the 2-D correlation of X and W, in exact Fractions."""
    n = m + r - 1
    at, g, bt = winograd_matrices_exact(m, r, "accurate")
    rng = random.Random(n * 100 + r)
    for _ in range(2):
        x = [[Fraction(rng.randint(-9, 9), rng.choice((1, 2, 3, 7))) for _ in range(n)] for _ in range(n)]
        w = [[Fraction(rng.randint(-9, 9), rng.choice((1, 4, 5))) for _ in range(r)] for _ in range(r)]
        u = _mm(_mm(g, w), _t(g))
        v = _mm(_mm(bt, x), _t(bt))
        prod = [[u[i][j] * v[i][j] for j in range(n)] for i in range(n)]
        y = _mm(_mm(at, prod), _t(at))
        want = [[sum((x[p + a][q + b] * w[a][b] for a in range(r) for b in range(r)), Fraction(0))
                 for q in range(m)] for p in range(m)]
        assert y == want


def test_accurate_table():
    assert accurate_points(6) == tuple(Fraction(v) for v in ("0", "5/8", "-5/8", "3/2", "-3/2"))
    assert accurate_points(8) == default_points(8)  # no set beat the standard F(6,3) one
    assert accurate_points(4) == default_points(4)
    assert len(accurate_points(10)) == 9 and all(p.denominator & (p.denominator - 1) == 0 for p in accurate_points(10))


@pytest.mark.parametrize("m,dtype", [(4, torch.float32), (4, torch.float16), (4, torch.bfloat16), (8, torch.float32)])
def test_accurate_beats_standard_torch_path(m, dtype):
    acc = error_ratio(m, 3, "accurate", dtype, shape=SMALL)
    std = error_ratio(m, 3, "standard", dtype, shape=SMALL)
    assert acc["ratio"] < 0.8 * std["ratio"], (acc, std)
    assert acc["ratio_arith"] < 0.8 * std["ratio_arith"]


def test_accurate_f43_on_the_triton_path():
    """The Triton kernels (interpreter here) on the test data: accurate F(4,3) beats standard and
    meets the fp32 target of issue 14 (<= 3.0x a direct convolution's error; measured 2.6x)."""
    acc = error_ratio(4, 3, "accurate", torch.float32, backend="triton", shape=SMALL)["ratio"]
    std = error_ratio(4, 3, "standard", torch.float32, backend="triton", shape=SMALL)["ratio"]
    assert acc <= 3.0 and acc < 0.8 * std, (acc, std)
    half = error_ratio(4, 3, "accurate", torch.float16, backend="triton", shape=SMALL)["ratio"]
    half_std = error_ratio(4, 3, "standard", torch.float16, backend="triton", shape=SMALL)["ratio"]
    assert half < 0.8 * half_std, (half, half_std)


def test_error_ratio_is_seeded_and_sane():
    a = error_ratio(2, 3, None, torch.float32, shape=SMALL, seed=3)
    assert a == error_ratio(2, 3, None, torch.float32, shape=SMALL, seed=3)
    assert a != error_ratio(2, 3, None, torch.float32, shape=SMALL, seed=4)
    assert 0.3 < a["ratio"] < 3 and a["ratio"] == pytest.approx(a["winograd_mae"] / a["direct_mae"])


def test_candidate_sets_shape():
    mags = [Fraction(1, 2), Fraction(1), Fraction(2)]
    six = candidate_sets(6, mags)
    assert len(six) == 3 and all(len(s) == 5 and s[0] == 0 and sum(s) == 0 for s in six)
    five = candidate_sets(5, mags)  # 0, one pair, one signed single
    assert len(five) == 3 * 2 * 2 and all(len(set(s)) == 4 for s in five)
    assert candidate_magnitudes(2, 2) == [Fraction(1, 2), Fraction(1), Fraction(2)]


def test_search_points_small_and_reproducible():
    mags = [Fraction(1, 2), Fraction(1), Fraction(3, 2), Fraction(2)]
    kw = dict(magnitudes=mags, limit=None, shape=SMALL, top=3, seed=1)
    res = search_points(2, 3, **kw)
    assert res == search_points(2, 3, **kw)
    assert len(res) == 3 and [r["ratio"] for r in res] == sorted(r["ratio"] for r in res)
    assert res[0]["points"] == ["0", "1", "-1"]  # the standard F(2,3) set wins this small search
    sampled = search_points(4, 3, magnitudes=candidate_magnitudes(4, 4), limit=4, shape=SMALL, top=10, seed=2)
    assert len(sampled) == 6  # 4 drawn + standard + accurate, all reported
    assert sampled[0]["points"] == [str(p) for p in accurate_points(6)]


def test_cli_points_json(capsys):
    assert cli.main(["points", "--m", "2", "--limit", "3", "--top", "2", "--quick", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tile"] == "F(2,3)" and len(out["results"]) == 2
    assert all(r["ratio"] > 0 for r in out["results"])


def test_cli_points_measure(capsys):
    assert cli.main(["points", "--m", "4", "--measure", "0", "1/2", "-1", "1", "-3"]) == 0
    out = capsys.readouterr().out
    assert "given" in out and "standard" in out and "accurate" in out and "{0, 5/8, -5/8, 3/2, -3/2}" in out


@pytest.mark.parametrize("args,message", [
    (["--m", "4", "--measure", "0", "1"], "needs n - 1 = 5"),
    (["--m", "4", "--measure", "0", "1", "1", "2", "x"], "cannot parse"),
    (["--m", "0"], "m must be >= 1"),
    (["--m", "4", "--r", "2"], "odd"),
    (["--m", "4", "--top", "0"], "--top"),
])
def test_cli_points_bad_input(args, message):
    with pytest.raises(SystemExit, match=message):
        cli.main(["points", *args])


def test_torch_path_channel_blocks():
    """The torch path sums C in blocks (reference.CHANNEL_BLOCK): the same M in float64 for any C
    (a partial last block included), and the fp32 target for F(4,3) accurate on the reference layer
    C = K = 64, 24x24 (issue 14: <= 3.0x a direct convolution's error; measured 2.83-2.89x over 5
    seeds, one sequential sum over C 3.5x). The ratio depends on the layer: on 12x12 (more border
    tiles) it is 3.2-3.3x."""
    from tritonwino import reference

    gen = torch.Generator().manual_seed(5)
    for c in (7, reference.CHANNEL_BLOCK, 2 * reference.CHANNEL_BLOCK + 3):
        v = torch.randn(4, c, 10, generator=gen, dtype=torch.float64)
        q = torch.randn(4, c, 6, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(reference.winograd_gemm(v, q), torch.matmul(q.transpose(1, 2), v))
    shape = (1, 64, 64, 24, 24)
    blocked = error_ratio(4, 3, "accurate", torch.float32, shape=shape)["ratio"]
    assert blocked <= 3.0, blocked
    old = reference.CHANNEL_BLOCK
    try:
        reference.CHANNEL_BLOCK = 1 << 30
        one_sum = error_ratio(4, 3, "accurate", torch.float32, shape=shape)["ratio"]
    finally:
        reference.CHANNEL_BLOCK = old
    assert blocked < one_sum, (blocked, one_sum)
