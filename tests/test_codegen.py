"""Generated transforms against the exact matrices (symbolically, in Fraction arithmetic), their
flop counts, and the printable source."""

from fractions import Fraction

import pytest
from tritonwino.kernels.codegen import (
    Lin,
    TileSpec,
    emit_rows,
    evaluate,
    input_transform_program,
    kernel_source,
    lin_flops,
    output_transform_program,
    position_v_program,
    separable_terms,
)

from tritonwino import _triton_path
from tritonwino.transforms import ACCURATE_POINTS, normalize_points, winograd_matrices_exact

# Every tile with n <= 8 the library ships (r = 3 and 5) and every shipped point set, plus custom points.
CASES = [(m, 3, None) for m in (1, 2, 3, 4, 5, 6)] + [(m, 5, None) for m in (1, 2, 3, 4)] + [
    (4, 3, ACCURATE_POINTS[6]), (4, 3, ("0", "-1/2", "-1", "1", "2")), (2, 3, ("0", "1/2", "-3")),
]
IDS = [f"F{m},{r}{'-' + '_'.join(map(str, p)) if p else ''}" for m, r, p in CASES]


def _spec(m, r, pts, order="natural"):
    return _triton_path.tile_spec(m, r, normalize_points(m, r, pts)) if order == "natural" else TileSpec.from_lists(
        m, r, *[winograd_matrices_exact(m, r, pts)[i] for i in (0, 2)], order=order)


def _matmul(a, b):
    return [[sum((a[i][k] * b[k][j] for k in range(len(b))), Fraction(0)) for j in range(len(b[0]))]
            for i in range(len(a))]


def _t(a):
    return [list(r) for r in zip(*a, strict=True)]


def _random_block(rows, cols, seed):
    import random

    rnd = random.Random(seed)
    return [[Fraction(rnd.randint(-50, 50), rnd.randint(1, 9)) for _ in range(cols)] for _ in range(rows)]


@pytest.mark.parametrize("order", ["natural", "magnitude"])
@pytest.mark.parametrize("m,r,pts", CASES, ids=IDS)
def test_input_transform_program_is_exact(m, r, pts, order):
    spec = _spec(m, r, pts, order)
    n = spec.n
    x = _random_block(n, n, m * 10 + r)
    want = _matmul(_matmul(spec.bt, x), _t(spec.bt))
    env = evaluate(input_transform_program(spec), {f"x_{a}_{b}": x[a][b] for a in range(n) for b in range(n)})
    assert [[env[f"v_{i}_{j}"] for j in range(n)] for i in range(n)] == want
    # every position alone (the one-kernel path), reading only the elements it declares
    for i in range(n):
        for j in range(n):
            prog, reads = position_v_program(spec, i, j)
            env = evaluate(prog, {f"x_{a}_{b}": x[a][b] for a, b in reads})
            assert env["v"] == want[i][j]


@pytest.mark.parametrize("pair_rows", [False, True])
@pytest.mark.parametrize("m,r,pts", CASES, ids=IDS)
def test_output_transform_program_is_exact(m, r, pts, pair_rows):
    spec = _spec(m, r, pts)
    n = spec.n
    mm = _random_block(n, n, m + 7 * r)
    want = _matmul(_matmul(spec.at, mm), _t(spec.at))
    env = evaluate(output_transform_program(spec, pair_rows),
                   {f"m_{i}_{j}": mm[i][j] for i in range(n) for j in range(n)})
    assert [[env[f"y_{o}_{q}"] for q in range(m)] for o in range(m)] == want


# The point sets the library ships as defaults or options, for the tiles it ships (n = 4, 6, 8).
SHIPPED = [(2, 3, None), (4, 3, None), (6, 3, None), (4, 5, None), (4, 3, ACCURATE_POINTS[6])]


@pytest.mark.parametrize("m,r,pts", CASES, ids=IDS)
def test_flops_within_1_3x_of_separable_terms(m, r, pts):
    """Zeros vanish, ±1 are adds, equal magnitudes share a multiply, mirrored rows / columns
    share their halves: each transform of a shipped point set costs at most 1.3x the nonzero terms
    of its separable form (2·n·nnz(Bᵀ) in, (n+m)·nnz(Aᵀ) out; the one-kernel path's per-position
    input transform summed over all positions). Any other set stays within 2x (each term at most a
    multiply and an add)."""
    spec = _spec(m, r, pts)
    n = spec.n
    fin = sum(lin_flops(s) for s in input_transform_program(spec))
    fout = sum(lin_flops(s) for s in output_transform_program(spec))
    fpos = tpos = 0
    for i in range(n):
        for j in range(n):
            prog, reads = position_v_program(spec, i, j)
            fpos += sum(lin_flops(s) for s in prog)
            tpos += len(reads) + sum(1 for c in spec.bt[i] if c)
    bound = 1.3 if (m, r, pts) in SHIPPED else 2.0
    assert fin <= bound * separable_terms(spec.bt, n)
    assert fout <= bound * separable_terms(spec.at, n)
    # The accurate F(4,3) set {0, ±5/8, ±3/2} (issue 14) has 3 non-unit magnitudes per row of Bᵀ
    # (225/256, 169/64, 45/32, 9/4, ...) where the standard set has one: its per-position program
    # needs a multiply for most terms, 896 flops = 1.45x its 616 terms (the standard set: <= 1.3x).
    # The separable programs above stay within 1.3x; this bound is about cost, not accuracy.
    pos_bound = 1.5 if pts == ACCURATE_POINTS[6] and (m, r) == (4, 3) else bound
    assert fpos <= pos_bound * tpos


def test_f43_counts_by_hand():
    """F(4,3), standard points. Input: 19 flops per application of Bᵀ (rows 0 and 5: 4 each;
    rows 1,2 as (x4 - 4x2) ± (x3 - 4x1): 6; rows 3,4 as (x4 - x2) ± 2(x3 - x1): 5), 12 applications.
    Output, row pass over 6 positions: s12, d12, s34, d34 (4), z0 = m0 + s12 + s34 (2),
    z1 = d12 + 2 d34 (2), z2 = s12 + 4 s34 (2), z3 = d12 + 8 d34 + m5 (3) = 13, six times; column pass
    y[o][q] += Aᵀ[o,i]·z_i[q] row by row, per q: column 0 first writes (0), column 1 (1 1 1 1) one add
    and three first writes (1), column 2 (1 -1 1 -1) 4, columns 3 and 4 (1 ±2 4 ±8) 7 each, column 5 1:
    20 per q, 80 in all. 78 + 80 = 158 for 180 separable terms."""
    spec = _spec(4, 3, None)
    assert sum(lin_flops(s) for s in input_transform_program(spec)) == 12 * 19
    assert separable_terms(spec.bt, 6) == 264
    assert separable_terms(spec.at, 6) == 180
    assert sum(lin_flops(s) for s in output_transform_program(spec)) == 6 * 13 + 80
    assert sum(lin_flops(s) for s in output_transform_program(spec, pair_rows=True)) == 10 * 13


def test_render_folds_constants():
    one, two = Fraction(1), Fraction(2)
    stmt = Lin("y", ((one, "a"), (-one, "b"), (two, "c"), (-two, "d"), (Fraction(3), "e")))
    # (a - b) + (c - d) * 2.0 + e * 3.0: two subtracts, two multiplies, two adds
    assert lin_flops(stmt) == 6
    assert evaluate([stmt], {v: Fraction(i + 1) for i, v in enumerate("abcde")})["y"] == 1 - 2 + 6 - 8 + 15
    assert lin_flops(Lin("y", ((-one, "a"),))) == 1      # a negation
    assert lin_flops(Lin("y", ((-two, "a"),))) == 1      # the sign folds into the multiply
    assert lin_flops(Lin("y", ((one, "a"),))) == 0
    prog = emit_rows(((one, one), (one, -one)), ["p", "q"], ["s", "d"], "t")
    env = evaluate(prog, {"p": Fraction(3), "q": Fraction(5)})
    assert (env["s"], env["d"]) == (8, -2)


def test_generated_source_is_printable_and_constant_folded():
    spec = _spec(4, 3, None)
    src = kernel_source(spec, "input")
    assert "@triton.jit" in src and "Bᵀ = [4 0 -5 0 1 0;" in src
    assert "* 0.0" not in src and "* 1.0" not in src and "tl.dot" not in src  # no matrix, no zero/unit terms
    assert "* 5.0" in src and "* 4.0" in src
    fused = kernel_source(spec, "fused", source="x", weight="sparse")
    assert fused.count("tl.dot(") == 36 and "* 8.0" in fused
    with pytest.raises(ValueError, match="kind"):
        kernel_source(spec, "nope")


def test_decomposed_input_transform_source_is_the_same_transform():
    """The DWM variant (per-piece offsets, stride, expanded extent) differs only in addressing and
    masks: the same constant-folded statements, and the plain kernel knows nothing of pieces."""
    spec = _spec(4, 2, None)
    plain, dec = kernel_source(spec, "input"), kernel_source(spec, "input", decomposed=True)
    assert "off_ptr" not in plain and "STRIDE" not in plain and "HX" not in plain
    assert "off_ptr, C, C_IN, H, W, HX, WX" in dec and "c_in = c % C_IN" in dec
    body = [ln for ln in plain.splitlines() if ln.startswith(("    u_", "    v_", "    r", "    c"))
            and " = " in ln and "tl." not in ln]
    assert body and all(ln in dec.splitlines() for ln in body)
