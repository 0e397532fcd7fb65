from fractions import Fraction

import pytest
import torch

from tritonwino.transforms import (
    ACCURATE_POINTS,
    default_points,
    winograd_kron,
    winograd_matrices,
    winograd_matrices_exact,
)

F = Fraction
# Published tables: the wincnn README (github.com/andravin/wincnn) and Lavin & Gray 2016
PUBLISHED = {
    (4, 3): (
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
        [[F(1, 4), 0, 0], [F(-1, 6)] * 3, [F(-1, 6), F(1, 6), F(-1, 6)], [F(1, 24), F(1, 12), F(1, 6)],
         [F(1, 24), F(-1, 12), F(1, 6)], [0, 0, 1]],
        [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
         [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
    ),
    (6, 3): (
        [[1, 1, 1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, F(1, 2), F(-1, 2), 0],
         [0, 1, 1, 4, 4, F(1, 4), F(1, 4), 0], [0, 1, -1, 8, -8, F(1, 8), F(-1, 8), 0],
         [0, 1, 1, 16, 16, F(1, 16), F(1, 16), 0], [0, 1, -1, 32, -32, F(1, 32), F(-1, 32), 1]],
        [[1, 0, 0], [F(-2, 9)] * 3, [F(-2, 9), F(2, 9), F(-2, 9)], [F(1, 90), F(1, 45), F(2, 45)],
         [F(1, 90), F(-1, 45), F(2, 45)], [F(32, 45), F(16, 45), F(8, 45)],
         [F(32, 45), F(-16, 45), F(8, 45)], [0, 0, 1]],
        [[1, 0, F(-21, 4), 0, F(21, 4), 0, -1, 0], [0, 1, 1, F(-17, 4), F(-17, 4), 1, 1, 0],
         [0, -1, 1, F(17, 4), F(-17, 4), -1, 1, 0], [0, F(1, 2), F(1, 4), F(-5, 2), F(-5, 4), 2, 1, 0],
         [0, F(-1, 2), F(1, 4), F(5, 2), F(-5, 4), -2, 1, 0], [0, 2, 4, F(-5, 2), -5, F(1, 2), 1, 0],
         [0, -2, 4, F(5, 2), -5, F(-1, 2), 1, 0], [0, -1, 0, F(21, 4), 0, F(-21, 4), 0, 1]],
    ),
}
# F(2,3): wincnn prints the sign variant (B^T row 4 = [0,-1,0,1], A^T row 2 = [0,1,-1,1]).
F23_VARIANT = (
    [[1, 1, 1, 0], [0, 1, -1, 1]],
    [[1, 0, 0], [F(1, 2), F(1, 2), F(1, 2)], [F(1, 2), F(-1, 2), F(1, 2)], [0, 0, 1]],
    [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, -1, 0, 1]],
)
# F(4,5) as SkimCaffe/NNPACK print it: G rows 5,6 are ours / 8 and A^T columns 5,6 are ours * 8.
F45_G = [[1, 0, 0, 0, 0], [F(-2, 9)] * 5, [F(-2, 9), F(2, 9), F(-2, 9), F(2, 9), F(-2, 9)],
         [F(1, 90), F(1, 45), F(2, 45), F(4, 45), F(8, 45)], [F(1, 90), F(-1, 45), F(2, 45), F(-4, 45), F(8, 45)],
         [F(4, 45), F(2, 45), F(1, 45), F(1, 90), F(1, 180)], [F(4, 45), F(-2, 45), F(1, 45), F(-1, 90), F(1, 180)],
         [0, 0, 0, 0, 1]]
F45_AT = [[1, 1, 1, 1, 1, 8, 8, 0], [0, 1, -1, 2, -2, 4, -4, 0], [0, 1, 1, 4, 4, 2, 2, 0], [0, 1, -1, 8, -8, 1, -1, 1]]


def _frac(mat):
    return [[Fraction(v) for v in row] for row in mat]


@pytest.mark.parametrize("mr", [(4, 3), (6, 3)])
def test_published_tables_exact(mr):
    at, g, bt = winograd_matrices_exact(*mr)
    pat, pg, pbt = PUBLISHED[mr]
    assert at == _frac(pat) and g == _frac(pg) and bt == _frac(pbt)


def test_f23_matches_documented_sign_variant():
    assert winograd_matrices_exact(2, 3) == tuple(_frac(x) for x in F23_VARIANT)


def test_f45_matches_published_up_to_position_scaling():
    at, g, bt = winograd_matrices_exact(4, 5)
    assert bt == _frac(PUBLISHED[(6, 3)][2])
    scale = [1, 1, 1, 1, 1, 8, 8, 1]  # G row i divided by s_i, A^T column i multiplied by s_i
    assert [[v / scale[i] for v in row] for i, row in enumerate(g)] == _frac(F45_G)
    assert [[v * scale[j] for j, v in enumerate(row)] for row in at] == _frac(F45_AT)


def _corr1d(d, g):
    r = g.numel()
    return torch.stack([(d[i:i + r] * g).sum() for i in range(d.numel() - r + 1)])


CASES = [(1, 1), (1, 3), (2, 3), (3, 3), (4, 3), (6, 3), (2, 5), (4, 5), (3, 2), (5, 1)]


POINT_CASES = [(m, r, kind) for m, r in CASES for kind in ("default", "custom")] + [
    (m, r, "accurate") for m, r in CASES if m + r - 1 in ACCURATE_POINTS
]


@pytest.mark.parametrize("m,r,points", POINT_CASES)
def test_reproduces_correlation_1d_and_2d(m, r, points):
    n = m + r - 1
    if points == "default":
        pts = None
    elif points == "accurate":
        pts = ACCURATE_POINTS[n]
    else:
        pts = [Fraction(i, 3) - Fraction(1, 2) for i in range(n - 1)]  # any distinct points
    at, g, bt = winograd_matrices(m, r, pts)
    gen = torch.Generator().manual_seed(m * 10 + r)
    for _ in range(3):
        d = torch.randn(n, dtype=torch.float64, generator=gen)
        w = torch.randn(r, dtype=torch.float64, generator=gen)
        y = at @ ((g @ w) * (bt @ d))
        assert torch.allclose(y, _corr1d(d, w), rtol=0, atol=1e-12 * max(1.0, float(y.abs().max())))
        d2 = torch.randn(n, n, dtype=torch.float64, generator=gen)
        w2 = torch.randn(r, r, dtype=torch.float64, generator=gen)
        y2 = at @ ((g @ w2 @ g.T) * (bt @ d2 @ bt.T)) @ at.T
        ref = torch.nn.functional.conv2d(d2[None, None], w2[None, None])[0, 0]
        assert (y2 - ref).abs().max() <= 1e-12 * max(1.0, float(ref.abs().max()))


def test_kron_matches_matrices():
    at, _, bt = winograd_matrices(4, 3)
    kb, ka = winograd_kron(4, 3)
    x = torch.randn(6, 6, dtype=torch.float64)
    mmat = torch.randn(6, 6, dtype=torch.float64)
    assert torch.allclose(x.reshape(-1) @ kb, (bt @ x @ bt.T).reshape(-1))
    assert torch.allclose(mmat.reshape(-1) @ ka, (at @ mmat @ at.T).reshape(-1))


def test_points_accept_several_spellings():
    a = winograd_matrices(4, 3, [0, 1, -1, 2, -2])
    b = winograd_matrices(4, 3, ["0", 1.0, Fraction(-1), "2", -2])
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    "args,match",
    [
        ((0, 3), "m must be >= 1"),
        ((2, 0), "r must be >= 1"),
        ((2.0, 3), "m must be an int"),
        ((2, 3, [0, 1, 1]), "distinct"),
        ((2, 3, [0, 1]), "needs n - 1 = 3"),
        ((2, 3, [0, 1, float("inf")]), "finite"),
        ((2, 3, [0, 1, "x"]), "cannot parse"),
    ],
)
def test_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        winograd_matrices(*args)


def test_default_points_are_standard():
    assert default_points(4) == (0, 1, -1)
    assert default_points(6) == (0, 1, -1, 2, -2)
    assert default_points(8) == (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2))
    assert len(set(default_points(12))) == 11
