"""Exact Winograd transform matrices by the Cook–Toom / Lagrange construction.

The construction follows wincnn (Lavin): n − 1 finite interpolation points plus the point at
infinity, the "fractions in G" normalisation, all in exact rational arithmetic so that the float64
matrices handed out are the correctly rounded exact values.

``Y = Aᵀ[(G W Gᵀ) ⊙ (Bᵀ X B)]A`` for an n×n input tile X, r×r kernel W and m×m output tile Y,
with n = m + r − 1.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from fractions import Fraction

import torch

__all__ = [
    "STANDARD_POINTS",
    "ACCURATE_POINTS",
    "POINT_SET_NAMES",
    "accurate_points",
    "default_points",
    "MAX_TILE",
    "input_transform_gain",
    "normalize_points",
    "winograd_matrices",
    "winograd_matrices_exact",
    "tile_size",
    "winograd_kron",
    "spatial_from_winograd",
    "fit_spatial_kernel",
    "SPATIAL_REL_TOL",
]

Point = Fraction
Matrix = list[list[Fraction]]

# The interpolation points the literature (wincnn, Lavin & Gray, cuDNN-era code, the
# spatial-Winograd paper) uses; the published matrices in the reference notes are built from them.
# Keyed by n = m + r − 1; each tuple has n − 1 finite points (infinity is implied).
STANDARD_POINTS: dict[int, tuple[Fraction, ...]] = {
    2: (Fraction(0),),
    3: (Fraction(0), Fraction(1)),
    4: (Fraction(0), Fraction(1), Fraction(-1)),
    5: (Fraction(0), Fraction(1), Fraction(-1), Fraction(2)),
    6: (Fraction(0), Fraction(1), Fraction(-1), Fraction(2), Fraction(-2)),
    7: (Fraction(0), Fraction(1), Fraction(-1), Fraction(2), Fraction(-2), Fraction(1, 2)),
    8: (Fraction(0), Fraction(1), Fraction(-1), Fraction(2), Fraction(-2), Fraction(1, 2), Fraction(-1, 2)),
}

# The most accurate point sets known, keyed by n; ``points="accurate"`` selects them on every path
# (``accurate_points``). Chosen by measurement (``tritonwino points``, ``tritonwino.points``): the
# ratio of the mean absolute error to a direct convolution's, uniform[-1, 1] data, C = K = 64, 24x24
# (bench/results/accuracy.md). n = 6 (F(4,3), F(2,5)): oneDNN's / Nervana's {0, ±5/8, ±3/2} -- F(4,3)
# fp32 3.5x vs 6.7x standard and 5.3x for Barabasz's {0, -1/2, -1, 1, 2} (the previous entry);
# F(2,5) 2.7x vs 5.5x; an exhaustive search over 0 and two ± pairs of p/q (p, q <= 8) ranks it first
# in fp32 and within 3% of the best in fp16. n = 8 (F(6,3)): no set beat the standard one in the
# searches (an exhaustive one over 0 and three ± pairs from 23 magnitudes 1/4 .. 4), so it has no
# entry. n = 10 (F(8,3), F(6,5); fp32 only, half types refuse n > 8): {0, ±3/8, ±3/4, ±5/4, ±5/2},
# the best of a 1500-set sample -- F(8,3) 75x vs 356x standard, F(6,5) 45x vs 219x; all its points
# are dyadic, so the transforms are exact in binary.
ACCURATE_POINTS: dict[int, tuple[Fraction, ...]] = {
    6: (Fraction(0), Fraction(5, 8), Fraction(-5, 8), Fraction(3, 2), Fraction(-3, 2)),
    10: (Fraction(0), Fraction(3, 8), Fraction(-3, 8), Fraction(3, 4), Fraction(-3, 4), Fraction(5, 4),
         Fraction(-5, 4), Fraction(5, 2), Fraction(-5, 2)),
}


def _point_sequence() -> Iterable[Fraction]:
    # 0, 1, -1, 2, -2, 1/2, -1/2, 3, -3, 1/3, -1/3, ... : the usual small-magnitude order.
    yield Fraction(0)
    k = 1
    while True:
        yield Fraction(k)
        yield Fraction(-k)
        if k > 1:
            yield Fraction(1, k)
            yield Fraction(-1, k)
        k += 1


def tile_size(m: int, r: int) -> int:
    """Input tile size n = m + r − 1 of F(m, r)."""
    return m + r - 1


def default_points(n: int) -> tuple[Fraction, ...]:
    """The library's default n − 1 finite points for an n×n input tile (see ``STANDARD_POINTS``)."""
    if n < 1:
        raise ValueError(f"tile size n must be >= 1, got {n}")
    if n in STANDARD_POINTS:
        return STANDARD_POINTS[n]
    seq = _point_sequence()
    return tuple(next(seq) for _ in range(n - 1))


# Largest input tile n = m + r - 1 accepted anywhere. The transforms' conditioning grows
# exponentially with n: fp32 results are garbage from n = 14 (relative error ~1), float64 from n ~ 20,
# and the exact rational construction itself takes seconds beyond n ~ 32 (a "hang" for a typo'd m).
# Per-dtype limits below this one: tritonwino._checks.check_tile_dtype.
MAX_TILE = 16

# Names a caller may pass instead of a list of points (``points="accurate"``), on every path.
POINT_SET_NAMES = ("standard", "accurate")


def accurate_points(n: int) -> tuple[Fraction, ...]:
    """The point set ``points="accurate"`` means for an n×n input tile: ``ACCURATE_POINTS[n]`` where
    a better-conditioned set is known, else the standard set. The one place that mapping lives."""
    return ACCURATE_POINTS.get(n, default_points(n))


def _named_points(n: int, name: str) -> tuple[Fraction, ...]:
    if name == "standard":
        return default_points(n)
    if name == "accurate":
        return accurate_points(n)
    raise ValueError(
        f"points={name!r}: a point set is a sequence of n - 1 = {n - 1} numbers (e.g. [0, 1, -1, 2, -2] "
        f"or ['0', '1/2', ...]) or one of the names {', '.join(map(repr, POINT_SET_NAMES))}"
    )


def _to_fraction(p: object) -> Fraction:
    if isinstance(p, bool):
        raise ValueError(f"interpolation point {p!r} is a bool, not a number")
    if isinstance(p, Fraction):
        return p
    if isinstance(p, int):
        return Fraction(p)
    if isinstance(p, float):
        if p != p or p in (float("inf"), float("-inf")):
            raise ValueError(f"interpolation points must be finite (infinity is implied), got {p!r}")
        return Fraction(p)  # exact binary value of the float
    if isinstance(p, str):
        try:
            return Fraction(p)
        except ValueError as e:
            raise ValueError(f"cannot parse interpolation point {p!r} as a rational number") from e
    raise ValueError(f"interpolation point {p!r} has unsupported type {type(p).__name__}")


def normalize_points(m: int, r: int, points: Sequence[object] | str | None = None) -> tuple[Fraction, ...]:
    """Validate (m, r, points) and return the finite points as a tuple of Fractions.

    ``points``: None or ``"standard"`` (the library's set, :func:`default_points`), ``"accurate"``
    (:func:`accurate_points`), or a sequence of n − 1 distinct finite numbers (ints, floats,
    ``Fraction``, strings such as ``"1/2"``). Anything else raises ValueError.
    """
    for name, v in (("m", m), ("r", r)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{name} must be an int, got {v!r}")
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    n = tile_size(m, r)
    if n > MAX_TILE:
        raise ValueError(
            f"F({m},{r}) has input tile n = m + r - 1 = {n}; tiles beyond n = {MAX_TILE} are not supported "
            "(their rounding error grows exponentially with n: use a smaller m, e.g. F(4,3) or F(6,3))"
        )
    if points is None:
        return default_points(n)
    if isinstance(points, str):  # a name, never a string of digits parsed character by character
        return _named_points(n, points)
    try:
        items = tuple(points)
    except TypeError:
        raise ValueError(f"points must be a sequence of numbers or one of {POINT_SET_NAMES}, "
                         f"got {type(points).__name__}") from None
    pts = tuple(_to_fraction(p) for p in items)
    if len(pts) != n - 1:
        raise ValueError(
            f"F({m},{r}) needs n - 1 = {n - 1} finite interpolation points (infinity is implied), "
            f"got {len(pts)}"
        )
    if len(set(pts)) != len(pts):
        dup = sorted({str(p) for p in pts if pts.count(p) > 1})
        raise ValueError(f"interpolation points must be distinct; repeated: {', '.join(dup)}")
    return pts


def _poly_from_roots(roots: Sequence[Fraction]) -> list[Fraction]:
    """Coefficients (ascending powers) of prod (x − root)."""
    coeffs = [Fraction(1)]
    for a in roots:
        nxt = [Fraction(0)] * (len(coeffs) + 1)
        for j, c in enumerate(coeffs):
            nxt[j + 1] += c
            nxt[j] -= a * c
        coeffs = nxt
    return coeffs


def _vandermonde_inf(a: Sequence[Fraction], rows: int, cols: int) -> Matrix:
    """wincnn's A(a, rows, cols): a[i]**j for the finite points, then the infinity row."""
    out = [[a[i] ** j for j in range(cols)] for i in range(rows - 1)]
    out.append([Fraction(int(j == cols - 1)) for j in range(cols)])
    return out


def _matmul(x: Matrix, y: Matrix) -> Matrix:
    return [[sum((x[i][k] * y[k][j] for k in range(len(y))), Fraction(0)) for j in range(len(y[0]))]
            for i in range(len(x))]


def _transpose(x: Matrix) -> Matrix:
    return [list(col) for col in zip(*x, strict=True)]


@functools.cache
def _exact(m: int, r: int, pts: tuple[Fraction, ...]) -> tuple[Matrix, Matrix, Matrix]:
    n = tile_size(m, r)
    a = list(pts)
    # f_i = prod_{k != i} (a_i - a_k) over the finite points, with 1 for the infinity point.
    f = []
    for i in range(n - 1):
        prod = Fraction(1)
        for k in range(n - 1):
            if k != i:
                prod *= a[i] - a[k]
        f.append(prod)
    f.append(Fraction(1))
    if f[0] < 0:  # wincnn's sign convention: keep the first row of B^T positive
        f[0] = -f[0]

    # B: Lagrange basis of the finite points, extended by the infinity column (wincnn's Bt/B).
    npts = n - 1
    lag = []  # lag[i][j] = coefficient of x^j of L_i(x) = prod_{k!=i}(x - a_k)/prod_{k!=i}(a_i - a_k)
    for i in range(npts):
        num = _poly_from_roots([a[k] for k in range(npts) if k != i])
        den = Fraction(1)
        for k in range(npts):
            if k != i:
                den *= a[i] - a[k]
        lag.append([c / den for c in num])
    # Bt_small (npts x n) = L^T-layout * [I | -a^npts]
    Lmat = [[lag[j][i] for j in range(npts)] for i in range(npts)]  # wincnn's L(a, npts)
    Tmat = [[Fraction(int(i == j)) for j in range(npts)] + [-(a[i] ** npts)] for i in range(npts)]
    bt_small = _matmul(Lmat, Tmat)
    b_full = bt_small + [[Fraction(int(j == n - 1)) for j in range(n)]]  # n x n, wincnn's B(a, n)
    b_t = _transpose(b_full)

    at = _transpose(_vandermonde_inf(a, n, m))  # m x n
    a_r = _vandermonde_inf(a, n, r)  # n x r
    g = [[a_r[i][j] / f[i] for j in range(r)] for i in range(n)]  # (A_r^T f^{-1})^T
    bt = [[f[i] * b_t[i][j] for j in range(n)] for i in range(n)]
    return at, g, bt


def winograd_matrices_exact(
    m: int, r: int, points: Sequence[object] | None = None
) -> tuple[Matrix, Matrix, Matrix]:
    """``(AT, G, BT)`` as nested lists of ``Fraction`` (exact)."""
    pts = normalize_points(m, r, points)
    at, g, bt = _exact(m, r, pts)
    return [row[:] for row in at], [row[:] for row in g], [row[:] for row in bt]


def winograd_matrices(
    m: int, r: int, points: Sequence[object] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Winograd matrices of F(m×m, r×r) as float64 tensors ``(AT (m×n), G (n×r), BT (n×n))``.

    ``points`` are the n − 1 finite interpolation points (ints, floats, ``Fraction`` or strings
    such as ``"1/2"``); infinity is always the last point. ``None`` gives the library defaults
    (``default_points``). Raises ``ValueError`` for m < 1, r < 1, a wrong number of points or
    repeated points.
    """
    at, g, bt = winograd_matrices_exact(m, r, points)

    def t(x: Matrix) -> torch.Tensor:
        return torch.tensor([[float(v) for v in row] for row in x], dtype=torch.float64)

    return t(at), t(g), t(bt)


def winograd_kron(
    m: int, r: int, points: Sequence[object] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened 2-D transforms as single matrices (float64), used by every stage implementation.

    ``KB`` (n², n²): ``vec(Bᵀ X B) = vec(X) @ KB`` with row-major ``vec`` over the n×n tile,
    i.e. ``KB[(a,b), (i,j)] = Bᵀ[i,a]·Bᵀ[j,b]``.
    ``KA`` (n², m²): ``vec(Aᵀ M A) = vec(M) @ KA``, i.e. ``KA[(i,j), (p,q)] = Aᵀ[p,i]·Aᵀ[q,j]``.
    """
    at, _, bt = winograd_matrices(m, r, points)
    n = tile_size(m, r)
    kb = torch.einsum("ia,jb->abij", bt, bt).reshape(n * n, n * n)
    ka = torch.einsum("pi,qj->ijpq", at, at).reshape(n * n, m * m)
    return kb, ka


def input_transform_gain(m: int, r: int, points: Sequence[object] | str | None = None) -> float:
    """The largest ``|V|`` of the input transform ``V = Bᵀ X B`` per unit of ``max |X|``:
    ``(max_i Σ_a |Bᵀ[i, a]|)²``, exact (reached by a tile whose signs follow the worst row).

    ``V`` is stored in the input's dtype for fp16/bf16 inputs, so an fp16 input is safe while
    ``max |x| <= 65504 / input_transform_gain(m, r)`` (F(2,3): 16376, F(4,3): 655, F(6,3): 291;
    F(4,3) with the accurate points: 2348).

    Example:
        >>> input_transform_gain(4, 3)
        100.0
    """
    _, _, bt = winograd_matrices_exact(m, r, points)
    row = max(sum(abs(v) for v in rw) for rw in bt)
    return float(row * row)


# a Winograd-domain weight is G W Gᵀ of some W when the fit's residual is at fp32 rounding level
SPATIAL_REL_TOL = 64 * torch.finfo(torch.float32).eps


def fit_spatial_kernel(q: torch.Tensor, mask: torch.Tensor | None, g: torch.Tensor, *, chunk: int = 16384
                       ) -> tuple[torch.Tensor, float]:
    """The spatial kernel W (K, C, r, r), float64, whose ``(G W Gᵀ) ⊙ mask`` is closest to
    ``q ⊙ mask`` (least squares per kernel over the kept entries; minimum norm where they do not
    determine W), and the largest residual on kept entries relative to ``max |q ⊙ mask|``.

    Args:
        q: (K, C, n, n) Winograd-domain weight.
        mask: bool (K, C, n, n), True = kept, or None (all kept).
        g: the tile's G (n, r).
        chunk: kernels solved at once where the mask differs per kernel (bounds the memory).

    Example:
        >>> _, g, _ = winograd_matrices(4, 3)
        >>> w = torch.randn(2, 3, 3, 3, dtype=torch.float64)
        >>> q = g @ w @ g.t()
        >>> mask = torch.rand(q.shape) > 0.3
        >>> w2, resid = fit_spatial_kernel(q * mask, mask, g)
        >>> resid < 1e-12
        True
    """
    k, c, n, _ = q.shape
    r = g.shape[1]
    s = torch.kron(g, g).to(device=q.device, dtype=torch.float64)  # (n², r²): vec(G W Gᵀ) = s @ vec(W)
    qf = q.detach().to(torch.float64).reshape(k * c, n * n)
    if mask is None:
        mf = torch.ones_like(qf, dtype=torch.bool)
    else:
        mf = mask.reshape(k * c, n * n).to(device=q.device, dtype=torch.bool)
        qf = qf * mf
    w = qf @ torch.linalg.pinv(s).t()  # every entry kept: one projection for all kernels
    partial = (~mf).any(dim=1).nonzero().flatten()
    for lo in range(0, partial.numel(), chunk):
        idx = partial[lo:lo + chunk]
        a = s.unsqueeze(0) * mf[idx].unsqueeze(2).to(torch.float64)  # dropped rows are zero rows
        w[idx] = (torch.linalg.pinv(a) @ qf[idx].unsqueeze(2)).squeeze(2)
    if qf.numel() == 0:
        return w.reshape(k, c, r, r), 0.0
    resid = float(((w @ s.t() - qf) * mf).abs().max())
    return w.reshape(k, c, r, r), resid / max(float(qf.abs().max()), 1e-30)


def spatial_from_winograd(q: torch.Tensor, m: int, r: int, points: Sequence[object] | None = None,
                          rel_tol: float = SPATIAL_REL_TOL) -> torch.Tensor | None:
    """The spatial weight W (K, C, r, r) with ``G W Gᵀ = q``, or None when ``q`` has none.

    ``W = G⁺ q G⁺ᵀ`` in float64 (``q`` is (K, C, n, n) of F(m, r)); ``q`` lies in the range of
    ``W -> G W Gᵀ`` iff the residual is at rounding level, ``rel_tol`` times ``max |q|``. A
    spatially pruned layer passes; Winograd-domain pruning leaves ``q`` outside that range, and
    then a spatial convolution would compute a different function. Returns float64.

    Example:
        >>> w = torch.randn(2, 3, 3, 3, dtype=torch.float64)
        >>> _, g, _ = winograd_matrices(4, 3)
        >>> w2 = spatial_from_winograd(g @ w @ g.t(), 4, 3)
        >>> bool(torch.allclose(w, w2))
        True
    """
    n = tile_size(m, r)
    if q.dim() != 4 or q.shape[2:] != (n, n):
        raise ValueError(f"q must be (K, C, {n}, {n}) for F({m},{r}), got {tuple(q.shape)}")
    _, g, _ = winograd_matrices(m, r, points)
    w, resid = fit_spatial_kernel(q, None, g)
    return None if resid > rel_tol else w
