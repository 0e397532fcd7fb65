"""Code generation of the Winograd kernels from the exact transform matrices.

The matrices of F(m, r) are exact rationals known before compilation, so the kernel body is
written per (m, r, points) with its coefficients as literals: zero coefficients vanish, ±1 become
adds and subtracts, terms of equal magnitude share one multiply, and the 2-D transforms run in the
separable (rows, then columns) form. Pairs of rows that are mirror images (interpolation points
±a) share their even and odd halves (``u = e + o``, ``v = e − o``).

The generator works on a tiny IR (:class:`Lin`: ``dst = Σ coef · src``) that is both rendered to
Triton source and evaluated in exact ``Fraction`` arithmetic by the tests, so what the kernel
computes is checked against the exact matrices symbolically, not only numerically.

Two kernels are generated (FlagGems-style: source text written to a private directory and
imported, so ``@triton.jit`` sees a real file; :func:`kernel_source` returns it for inspection):

* the input transform ``V = Bᵀ X B`` (+ optional Winograd-domain ReLU), X -> V (P, C, T);
* the fused Winograd-domain multiply: per (tile block, output-channel group) the P position
  products accumulate in registers and the output transform ``Aᵀ M A`` is applied progressively
  (row pass into m accumulators per position row, then into the m² outputs), followed by bias,
  ReLU and a strided store of Y: M never exists in memory. The multiply reads V from memory
  (two-kernel path) or recomputes each position's V for the kept channels from X (one-kernel
  path), and takes a packed sparse weight or a dense (P, C, K) one.

Extension points: ``TileSpec.order`` chooses the summation order inside each linear combination
(issue 14 adds error-aware orders); the X address of a window element is built in one place
(``_x_addr``); the input transform's ``decomposed`` variant adds the per-piece offsets, the
decimation stride and the expanded extent of the decomposable Winograd method (``tritonwino.dwm``).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

Matrix = tuple[tuple[Fraction, ...], ...]

__all__ = [
    "Lin",
    "TileSpec",
    "emit_rows",
    "evaluate",
    "fused_kernel",
    "input_transform_kernel",
    "kernel_source",
    "lin_flops",
    "position_v_program",
    "separable_terms",
    "input_transform_program",
    "output_transform_program",
]

ORDERS = ("natural", "magnitude")


# ---------------------------------------------------------------------------------------------
# IR: dst = Σ coef · src
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Lin:
    """One statement ``dst = Σ coef · src`` (exact coefficients, no zero terms)."""

    dst: str
    terms: tuple[tuple[Fraction, str], ...]


@dataclass(frozen=True)
class TileSpec:
    """The exact matrices of one F(m, r) and the summation order inside each combination.

    ``at`` is Aᵀ (m × n), ``bt`` is Bᵀ (n × n), both exact. ``order``: ``"natural"`` (terms by
    source index) or ``"magnitude"`` (smallest |coefficient| first)."""

    m: int
    r: int
    at: Matrix
    bt: Matrix
    order: str = "natural"

    def __post_init__(self):
        n = self.m + self.r - 1
        if len(self.at) != self.m or any(len(row) != n for row in self.at):
            raise ValueError(f"at must be {self.m}x{n}")
        if len(self.bt) != n or any(len(row) != n for row in self.bt):
            raise ValueError(f"bt must be {n}x{n}")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")

    @property
    def n(self) -> int:
        return self.m + self.r - 1

    @staticmethod
    def from_lists(m: int, r: int, at: Sequence[Sequence[object]], bt: Sequence[Sequence[object]],
                   order: str = "natural") -> TileSpec:
        def fr(x):
            return tuple(tuple(Fraction(v) for v in row) for row in x)
        return TileSpec(m, r, fr(at), fr(bt), order)

    def key(self) -> str:
        text = repr((self.m, self.r, self.at, self.bt, self.order))
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def _groups(terms: Sequence[tuple[Fraction, str]], order: str):
    """Terms grouped by |coef|: [(magnitude, [(sign, src), ...]), ...] in evaluation order."""
    if order == "magnitude":
        terms = sorted(terms, key=lambda t: abs(t[0]))
    groups: dict[Fraction, list[tuple[int, str]]] = {}
    for c, s in terms:
        groups.setdefault(abs(c), []).append((1 if c > 0 else -1, s))
    out = []
    for mag, members in groups.items():
        # start each group with a positive member: no negation needed
        members = sorted(members, key=lambda t: -t[0]) if members[0][0] < 0 else members
        out.append((mag, members))
    return out


def _render(terms: Sequence[tuple[Fraction, str]], order: str = "natural") -> tuple[str, int]:
    """(Python expression, flops) for Σ coef · src, one multiply per distinct |coef| != 1."""
    if not terms:
        raise ValueError("empty linear combination")
    parts = []  # (sign, text, flops)
    for mag, members in _groups(terms, order):
        gsign = members[0][0]
        text = members[0][1]
        for sign, src in members[1:]:
            text += (" + " if sign * gsign > 0 else " - ") + src
        flops = len(members) - 1
        if mag != 1:
            text = f"({text}) * {float(mag)!r}" if len(members) > 1 else f"{text} * {float(mag)!r}"
            flops += 1
        elif len(members) > 1:
            text = f"({text})"
        parts.append((gsign, text, flops, mag))
    # lead with a positive group; if none, fold the sign into a multiply or negate once
    parts.sort(key=lambda p: p[0] < 0)
    sign0, text, flops, mag = parts[0]
    if sign0 < 0:
        if mag != 1:
            text = text.rsplit(" * ", 1)[0] + f" * {-float(mag)!r}"
        else:
            text = f"-{text}"
            flops += 1
    for sign, t, f, _ in parts[1:]:
        text += (" + " if sign > 0 else " - ") + t
        flops += f + 1
    return text, flops


def lin_flops(stmt: Lin, order: str = "natural") -> int:
    """Flops of one statement as rendered (each +, -, *, unary - counts one)."""
    return _render(stmt.terms, order)[1]


def evaluate(program: Sequence[Lin], env: dict[str, Fraction]) -> dict[str, Fraction]:
    """Run a program in exact arithmetic (a copy of ``env`` extended by every dst)."""
    env = dict(env)
    for st in program:
        env[st.dst] = sum((c * env[s] for c, s in st.terms), Fraction(0))
    return env


# ---------------------------------------------------------------------------------------------
# linear combinations with mirror-row sharing
# ---------------------------------------------------------------------------------------------
def _terms(row: Sequence[Fraction], srcs: Sequence[str]) -> tuple[tuple[Fraction, str], ...]:
    return tuple((c, s) for c, s in zip(row, srcs, strict=True) if c != 0)


def _cost(terms, order) -> int:
    return _render(terms, order)[1] if terms else 0


def emit_rows(rows: Matrix, srcs: Sequence[str], dsts: Sequence[str], tmp: str, order: str = "natural"
              ) -> list[Lin]:
    """Statements computing ``dsts[i] = Σ_j rows[i][j] · srcs[j]``.

    Pairs of rows u, v whose even/odd halves ``e = (u+v)/2``, ``o = (u−v)/2`` are cheaper than
    u and v themselves (rows of mirrored points ±a) are computed as ``e ± o``: greedy, best
    saving first, each row in at most one pair."""
    nrows = len(rows)
    single = [_cost(_terms(r, srcs), order) for r in rows]
    cands = []
    for i in range(nrows):
        for j in range(i + 1, nrows):
            e = [(a + b) / 2 for a, b in zip(rows[i], rows[j], strict=True)]
            o = [(a - b) / 2 for a, b in zip(rows[i], rows[j], strict=True)]
            te, to = _terms(e, srcs), _terms(o, srcs)
            if not te or not to:
                continue
            pair = _cost(te, order) + _cost(to, order) + 2
            saving = single[i] + single[j] - pair
            if saving > 0:
                cands.append((-saving, i, j, te, to))
    cands.sort(key=lambda c: (c[0], c[1], c[2]))
    paired: dict[int, tuple] = {}
    for _, i, j, te, to in cands:
        if i in paired or j in paired:
            continue
        paired[i] = paired[j] = (i, j, te, to)
    out: list[Lin] = []
    done: set[int] = set()
    for i in range(nrows):
        if i in done:
            continue
        if i in paired:
            a, b, te, to = paired[i]
            e_name, o_name = f"{tmp}e{a}_{b}", f"{tmp}o{a}_{b}"
            out += [Lin(e_name, te), Lin(o_name, to)]
            one = Fraction(1)
            out += [Lin(dsts[a], ((one, e_name), (one, o_name))), Lin(dsts[b], ((one, e_name), (-one, o_name)))]
            done |= {a, b}
        else:
            terms = _terms(rows[i], srcs)
            if not terms:
                raise ValueError(f"row {i} of the transform is all zeros")
            out.append(Lin(dsts[i], terms))
            done.add(i)
    return out


# ---------------------------------------------------------------------------------------------
# the transforms as IR programs (for the kernels and for the tests)
# ---------------------------------------------------------------------------------------------
def x_name(a: int, b: int) -> str:
    return f"x_{a}_{b}"


def v_name(i: int, j: int) -> str:
    return f"v_{i}_{j}"


def input_transform_program(spec: TileSpec) -> list[Lin]:
    """V = Bᵀ X B, separable: u[a][j] = Σ_b Bᵀ[j,b] x[a][b] per row a, then
    v[i][j] = Σ_a Bᵀ[i,a] u[a][j] per column j."""
    n, bt = spec.n, spec.bt
    prog: list[Lin] = []
    for a in range(n):
        prog += emit_rows(bt, [x_name(a, b) for b in range(n)], [f"u_{a}_{j}" for j in range(n)], f"r{a}_",
                          spec.order)
    for j in range(n):
        prog += emit_rows(bt, [f"u_{a}_{j}" for a in range(n)], [v_name(i, j) for i in range(n)], f"c{j}_",
                          spec.order)
    return prog


def position_v_program(spec: TileSpec, i: int, j: int) -> tuple[list[Lin], list[tuple[int, int]]]:
    """V[i][j] alone (for the kept channels of one position): the inner sums over the nonzero
    entries of one row of Bᵀ, then the outer sum, in whichever order costs fewer flops.
    Returns (program ending in ``v``, the window elements (a, b) it reads)."""
    bt, n = spec.bt, spec.n
    nz = {k: [c for c in range(n) if bt[k][c] != 0] for k in (i, j)}

    def build(first_rows: bool) -> list[Lin]:
        # first_rows: s_a = Σ_b Bᵀ[j,b] x[a][b] for a in nz(i); v = Σ_a Bᵀ[i,a] s_a
        prog = []
        outer, inner = (i, j) if first_rows else (j, i)
        for a in nz[outer]:
            srcs = [x_name(a, b) if first_rows else x_name(b, a) for b in range(n)]
            prog.append(Lin(f"s_{a}", _terms(bt[inner], srcs)))
        prog.append(Lin("v", _terms([bt[outer][a] if a in nz[outer] else 0 for a in range(n)],
                                    [f"s_{a}" for a in range(n)])))
        return prog

    cands = [build(True), build(False)]
    best = min(cands, key=lambda p: sum(lin_flops(s, spec.order) for s in p))
    reads = sorted({(a, b) for a in nz[i] for b in nz[j]})
    return best, reads


def _update_cost(c: Fraction) -> int:
    return 1 + (abs(c) != 1)


def _pair_columns(mat: Matrix) -> list[tuple[int, ...]]:
    """Order in which the columns (inputs) of ``mat`` are consumed, as singles or pairs (j, j').

    A pair is consumed as s = x_j + x_j', d = x_j − x_j' (2 flops) when that makes the updates
    cheaper: mirrored interpolation points ±a give columns equal up to the sign of odd rows, so
    every row then needs only s or only d. Greedy, best saving first."""
    cols = len(mat[0])
    col = [[row[j] for row in mat] for j in range(cols)]

    def single(j):
        return sum(_update_cost(c) for c in col[j] if c)

    def paired(j, k):
        cost = 2
        for a, b in zip(col[j], col[k], strict=True):
            for c in ((a + b) / 2, (a - b) / 2):
                if c:
                    cost += _update_cost(c)
        return cost

    cands = sorted((paired(j, k) - single(j) - single(k), j, k) for j in range(cols) for k in range(j + 1, cols))
    used: set[int] = set()
    pairs: dict[int, tuple[int, int]] = {}
    for gain, j, k in cands:
        if gain < 0 and j not in used and k not in used:
            used |= {j, k}
            pairs[j] = (j, k)
    order: list[tuple[int, ...]] = []
    for j in range(cols):
        if j in pairs:
            order.append(pairs[j])
        elif j not in used:
            order.append((j,))
    return order


def _accumulate(mat: Matrix, groups: Sequence[tuple[int, ...]], src: Sequence[str], dst: Sequence[str],
                started: set[str], tmp: str) -> list[Lin]:
    """dst[q] += Σ_j mat[q][j] · src[j] for the inputs of ``groups`` (a single column, or a pair
    consumed as its sum and difference); the first update of a dst is an assignment."""
    one = Fraction(1)
    out: list[Lin] = []
    for grp in groups:
        if len(grp) == 1:
            terms = [(mat[q][grp[0]], src[grp[0]]) for q in range(len(mat))]
        else:
            j, k = grp
            s_name, d_name = f"{tmp}s{j}_{k}", f"{tmp}d{j}_{k}"
            sc = [(mat[q][j] + mat[q][k]) / 2 for q in range(len(mat))]
            dc = [(mat[q][j] - mat[q][k]) / 2 for q in range(len(mat))]
            if any(sc):
                out.append(Lin(s_name, ((one, src[j]), (one, src[k]))))
            if any(dc):
                out.append(Lin(d_name, ((one, src[j]), (-one, src[k]))))
            terms = None
        for q in range(len(mat)):
            for c, name in ([terms[q]] if terms is not None else [(sc[q], s_name), (dc[q], d_name)]):
                if c == 0:
                    continue
                if dst[q] in started:
                    out.append(Lin(dst[q], ((one, dst[q]), (c, name))))
                else:
                    out.append(Lin(dst[q], ((c, name),)))
                    started.add(dst[q])
    return out


def output_transform_program(spec: TileSpec, pair_rows: bool = False) -> list[Lin]:
    """Y = Aᵀ M A applied progressively, as the fused kernel does: for each row i of positions,
    z_i[q] accumulates Aᵀ[q,j]·M[i][j] as the positions of the row arrive; then y[o][q]
    accumulates Aᵀ[o,i]·z_i[q]. Mirrored columns of Aᵀ are consumed in pairs (sum and difference,
    :func:`_pair_columns`) in the row pass, and with ``pair_rows`` mirrored rows in the column pass
    too (m more live accumulators, fewer flops; off by default: registers bind before flops do in
    the fused kernels). Every accumulator's first update is an assignment.
    Inputs ``m_i_j`` in the order the program consumes them; outputs ``y_o_q``."""
    m, n, at = spec.m, spec.n, spec.at
    order = _pair_columns(at)
    prog: list[Lin] = []
    y_started: set[str] = set()
    ys = [[f"y_{o}_{q}" for q in range(m)] for o in range(m)]
    row_groups = order if pair_rows else [(i,) for grp in order for i in grp]
    for rows in row_groups:
        for i in rows:
            prog += _accumulate(at, order, [f"m_{i}_{j}" for j in range(n)], [f"z{i}_{q}" for q in range(m)],
                                set(), f"r{i}_")
        # column pass for these rows: for each q, y[:, q] += Aᵀ[:, rows] · z_rows[q]
        sub = tuple(tuple(at[o][i] for i in rows) for o in range(m))
        for q in range(m):
            prog += _accumulate(sub, [tuple(range(len(rows)))], [f"z{i}_{q}" for i in rows],
                                [ys[o][q] for o in range(m)], y_started, f"c{'_'.join(map(str, rows))}q{q}_")
    return prog


def separable_terms(mat: Matrix, width: int) -> int:
    """Nonzero terms of applying ``mat`` (rows × n) on both sides of an n×``width`` block in the
    separable form: ``width`` column applications + ``rows`` row applications."""
    nnz = sum(1 for row in mat for c in row if c != 0)
    return nnz * width + nnz * len(mat)


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------
def _render_stmts(prog: Sequence[Lin], indent: str, order: str) -> list[str]:
    lines = []
    for st in prog:
        expr, _ = _render(st.terms, order)
        lines.append(f"{indent}{st.dst} = {expr}")
    return lines


_HEADER = '''"""Generated by tritonwino.kernels.codegen for F({m},{r}) (do not edit).

Aᵀ = {at}
Bᵀ = {bt}
order = {order}
"""
import triton
import triton.language as tl
'''


def _header(spec: TileSpec) -> str:
    def fmt(mat):
        return "[" + "; ".join(" ".join(str(c) for c in row) for row in mat) + "]"
    return _HEADER.format(m=spec.m, r=spec.r, at=fmt(spec.at), bt=fmt(spec.bt), order=spec.order)


def _x_addr(a: int, b: int, decomposed: bool = False) -> str:
    # The window element (a, b) of every tile: the one place a per-channel offset or a decimation
    # stride (DWM) enters. Decomposed, row a of the expanded input X' is row STRIDE·a of x
    # (the piece's offset is already in xb).
    if decomposed:
        return f"xb + ({a} * STRIDE * stride_xh + {b} * STRIDE * stride_xw)"
    return f"xb + ({a} * stride_xh + {b} * stride_xw)"


def _x_mask(a: int, b: int, base: str, decomposed: bool = False) -> str:
    if decomposed:  # hv/wv are (BLOCK_T, BLOCK_C): the piece offset varies with the channel
        return f"{base} & hv{a} & wv{b}"
    return f"{base} & (hv{a}[:, None] & wv{b}[:, None])"


def input_transform_source(spec: TileSpec, name: str, decomposed: bool = False) -> str:
    """The input transform kernel. ``decomposed`` (the decomposable Winograd method,
    ``tritonwino.dwm``): V channel c is the virtual channel ``piece·C_IN + c_in``; its window
    element (a, b) of tile (ty, tx) is ``x[c_in, STRIDE·(ty·m + a) + oy − PAD_H, STRIDE·(tx·m + b)
    + ox − PAD_W]`` with the piece's (oy, ox) from the int32 (pieces, 2) table ``off_ptr``, read in
    place; rows/columns of the expanded input X' at or past its extent HX × WX read zero (as the
    torch twin's ``dwm.expand_input``), as does everything outside x."""
    n, m = spec.n, spec.m
    if decomposed:
        params = ["    x_ptr, v_ptr, off_ptr, C, C_IN, H, W, HX, WX, TW, TILES_PER_IMG, T, PAD_H, PAD_W, STRIDE,"]
    else:
        params = ["    x_ptr, v_ptr, C, H, W, TW, TILES_PER_IMG, T, PAD_H, PAD_W,"]
    L = [_header(spec), "", "@triton.jit", f"def {name}(", *params,
         "    stride_xn, stride_xc, stride_xh, stride_xw,",
         "    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, WINOGRAD_RELU: tl.constexpr,",
         "):",
         "    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)",
         "    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)",
         "    t_mask = t < T",
         "    c_mask = c < C",
         "    tc_mask = t_mask[:, None] & c_mask[None, :]",
         "    img = t // TILES_PER_IMG",
         "    rem = t % TILES_PER_IMG"]
    if decomposed:
        L += ["    piece = c // C_IN",
              "    c_in = c % C_IN",
              "    oy = tl.load(off_ptr + 2 * piece, mask=c_mask, other=0)",
              "    ox = tl.load(off_ptr + 2 * piece + 1, mask=c_mask, other=0)",
              f"    i0 = (rem // TW) * {m}",  # first row / column of the tile in X'
              f"    j0 = (rem % TW) * {m}",
              # row / column in x of the tile's window element (0, 0), per (tile, channel)
              "    h0 = (i0 * STRIDE - PAD_H)[:, None] + oy[None, :]",
              "    w0 = (j0 * STRIDE - PAD_W)[:, None] + ox[None, :]",
              "    xb = x_ptr + ((img.to(tl.int64) * stride_xn)[:, None] + c_in.to(tl.int64)[None, :] * stride_xc",
              "                  + h0.to(tl.int64) * stride_xh + w0.to(tl.int64) * stride_xw)"]
        for a in range(n):
            L.append(f"    hv{a} = (i0 + {a} < HX)[:, None] & (h0 + {a} * STRIDE >= 0) & (h0 + {a} * STRIDE < H)")
        for b in range(n):
            L.append(f"    wv{b} = (j0 + {b} < WX)[:, None] & (w0 + {b} * STRIDE >= 0) & (w0 + {b} * STRIDE < W)")
    else:
        L += [f"    h0 = (rem // TW) * {m} - PAD_H",
              f"    w0 = (rem % TW) * {m} - PAD_W",
              "    xb = x_ptr + (img.to(tl.int64) * stride_xn + h0.to(tl.int64) * stride_xh",
              "                  + w0.to(tl.int64) * stride_xw)[:, None] + c.to(tl.int64)[None, :] * stride_xc"]
        for a in range(n):
            L.append(f"    hv{a} = (h0 + {a} >= 0) & (h0 + {a} < H)")
        for b in range(n):
            L.append(f"    wv{b} = (w0 + {b} >= 0) & (w0 + {b} < W)")
    L.append("    vrow = c[None, :] * T + t[:, None]")
    L.append("    CT = C * T")
    # the tested program, in order; each x is loaded just before its first use (pass 1 runs row by
    # row, so one row of x is live at a time) and each v is stored right after it is computed
    loaded: set[str] = set()
    for st in input_transform_program(spec):
        for _, src in st.terms:
            if src.startswith("x_") and src not in loaded:
                _, a, b = src.split("_")
                L.append(f"    {src} = tl.load({_x_addr(int(a), int(b), decomposed)}, "
                         f"mask={_x_mask(int(a), int(b), 'tc_mask', decomposed)}, other=0.0).to(tl.float32)")
                loaded.add(src)
        L += _render_stmts([st], "    ", spec.order)
        if st.dst.startswith("v_"):
            _, i, j = st.dst.split("_")
            v = st.dst
            L.append("    if WINOGRAD_RELU:")
            L.append(f"        {v} = tl.maximum({v}, 0.0)")
            L.append(f"    tl.store(v_ptr + {int(i) * n + int(j)} * CT + vrow, {v}.to(v_ptr.dtype.element_ty), "
                     "mask=tc_mask)")
    return "\n".join(L) + "\n"


def fused_source(spec: TileSpec, source: str, weight: str, name: str) -> str:
    """``source``: ``"v"`` (read V (P, C, T)) or ``"x"`` (recompute V_p from X per kept chunk);
    ``weight``: ``"sparse"`` (packed values/indices/offsets) or ``"dense"`` (Q as (P, C, K))."""
    if source not in ("v", "x") or weight not in ("sparse", "dense"):
        raise ValueError(f"bad fused kernel variant {source}/{weight}")
    n, m = spec.n, spec.m
    args = ["x_ptr" if source == "x" else "v_ptr", "w_ptr"]
    if weight == "sparse":
        args += ["idx_ptr", "off_ptr"]
    args += ["bias_ptr", "y_ptr", "C", "K", "T", "G", "HO", "WO", "TW", "TILES_PER_IMG"]
    if source == "x":
        args += ["H", "W", "PAD_H", "PAD_W", "stride_xn", "stride_xc", "stride_xh", "stride_xw"]
    args += ["stride_yn", "stride_yk", "stride_yh", "stride_yw", "stride_b"]
    consts = ["HAS_BIAS", "RELU", "BLOCK_T", "BLOCK_K", "BLOCK_C", "PRECISION", "UPCAST", "ACC64"]
    if source == "x":
        consts.append("WINOGRAD_RELU")
    L = [_header(spec), "", "@triton.jit", f"def {name}("]
    L.append("    " + ", ".join(args) + ",")
    L.append("    " + ", ".join(f"{c}: tl.constexpr" for c in consts) + ",")
    L += ["):",
          "    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)",
          "    g = tl.program_id(1)",
          "    t_mask = t < T",
          "    kk = tl.arange(0, BLOCK_K)",
          "    k = g * BLOCK_K + kk",
          "    k_mask = k < K",
          "    cc = tl.arange(0, BLOCK_C)",
          "    img = t // TILES_PER_IMG",
          "    rem = t % TILES_PER_IMG",
          f"    oh0 = (rem // TW) * {m}",
          f"    ow0 = (rem % TW) * {m}"]
    if source == "x":
        L += ["    h0 = oh0 - PAD_H",
              "    w0 = ow0 - PAD_W",
              "    xt = (img.to(tl.int64) * stride_xn + h0.to(tl.int64) * stride_xh + w0.to(tl.int64) * stride_xw)"]
        for a in range(n):
            L.append(f"    hv{a} = (h0 + {a} >= 0) & (h0 + {a} < H)")
        for b in range(n):
            L.append(f"    wv{b} = (w0 + {b} >= 0) & (w0 + {b} < W)")
        L.append("    op_ty = w_ptr.dtype.element_ty")
    else:
        L.append("    CT = C * T")
    # Positions run in the order the output program consumes them; each statement is emitted as
    # soon as the positions it reads are done (a position's product is named m_i_j and stays live
    # only until its mirror partner arrives).
    out_prog = output_transform_program(spec)
    done: set[str] = set()
    pending = list(out_prog)
    for st in out_prog:
        for _, src in st.terms:
            if src.startswith("m_") and src not in done:
                _, i, j = src.split("_")
                i, j = int(i), int(j)
                L.append(f"    # ---- position ({i}, {j})")
                L += ["    if ACC64:",
                      "        acc = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.float64)",
                      "    else:",
                      "        acc = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.float32)"]
                L += _dot_loop(spec, source, weight, i, j, i * n + j)
                L.append(f"    {src} = acc")
                done.add(src)
                while pending and all(not x.startswith("m_") or x in done for _, x in pending[0].terms):
                    nxt = pending.pop(0)
                    L.append(f"    {nxt.dst} = {_render(nxt.terms, spec.order)[0]}")
    if len(done) != n * n or pending:
        raise AssertionError("output program does not consume every position exactly once")
    # epilogue: bias, ReLU, strided store of the m×m outputs
    L += ["    if HAS_BIAS:",
          "        bias = tl.load(bias_ptr + k * stride_b, mask=k_mask, other=0.0).to(tl.float32)[None, :]",
          "    yb = y_ptr + (img.to(tl.int64) * stride_yn + oh0.to(tl.int64) * stride_yh",
          "                  + ow0.to(tl.int64) * stride_yw)[:, None] + k.to(tl.int64)[None, :] * stride_yk",
          "    tk_mask = t_mask[:, None] & k_mask[None, :]"]
    for o in range(m):
        for q in range(m):
            y = f"y_{o}_{q}"
            L += ["    if HAS_BIAS:", f"        {y} = {y} + bias",
                  "    if RELU:", f"        {y} = tl.maximum({y}, 0.0)",
                  f"    tl.store(yb + ({o} * stride_yh + {q} * stride_yw), {y}.to(y_ptr.dtype.element_ty), "
                  f"mask=tk_mask & ((oh0 + {o} < HO) & (ow0 + {q} < WO))[:, None])"]
    return "\n".join(L) + "\n"


def _dot_loop(spec: TileSpec, source: str, weight: str, i: int, j: int, p: int) -> list[str]:
    L = []
    if weight == "sparse":
        L += [f"    start = tl.load(off_ptr + ({p} * G + g))",
              f"    nk = tl.load(off_ptr + ({p} * G + g + 1)) - start",
              "    for j0 in range(0, nk, BLOCK_C):",
              "        jj = j0 + cc",
              "        jm = jj < nk",
              "        ch = tl.load(idx_ptr + start + jj, mask=jm, other=0).to(tl.int32)",
              # int64: nnz * group_k may pass 2^31 for very wide layers (V, x and y are range-checked)
              "        b = tl.load(w_ptr + (start + jj).to(tl.int64)[:, None] * BLOCK_K + kk[None, :], "
              "mask=jm[:, None], "
              "other=0.0)"]
    else:
        L += ["    for c0 in range(0, C, BLOCK_C):",
              "        ch = c0 + cc",
              "        jm = ch < C",
              f"        b = tl.load(w_ptr + ({p} * C + ch).to(tl.int64)[:, None] * K + k[None, :], "
              "mask=jm[:, None] & k_mask[None, :], other=0.0)"]
    L.append("        tj_mask = t_mask[:, None] & jm[None, :]")
    if source == "v":
        L.append(f"        a = tl.load(v_ptr + ({p} * CT + ch[None, :] * T + t[:, None]), mask=tj_mask, other=0.0)")
    else:
        prog, reads = position_v_program(spec, i, j)
        L.append("        xb = x_ptr + (xt[:, None] + ch.to(tl.int64)[None, :] * stride_xc)")
        for a_, b_ in reads:
            L.append(f"        {x_name(a_, b_)} = tl.load({_x_addr(a_, b_)}, mask={_x_mask(a_, b_, 'tj_mask')}, "
                     "other=0.0).to(tl.float32)")
        L += _render_stmts(prog, "        ", spec.order)
        L += ["        if WINOGRAD_RELU:",
              "            v = tl.maximum(v, 0.0)",
              "        a = v.to(op_ty)"]
    L += ["        if UPCAST:",
          "            a = a.to(tl.float32)",
          "            b = b.to(tl.float32)",
          # the wide multiply: fp32 operands, exact products and channel sums in float64, and the
          # output transform after it in float64 (interpreter only; see fused_multiply)
          "        if ACC64:",
          "            a = a.to(tl.float64)",
          "            b = b.to(tl.float64)",
          "        acc = tl.dot(a, b, acc, input_precision=PRECISION)"]
    return L


# ---------------------------------------------------------------------------------------------
# loading generated kernels
# ---------------------------------------------------------------------------------------------
_DIR: str | None = None


def _gen_dir() -> str:
    # One private directory per process, removed at exit: the source text is the identity of a
    # kernel (Triton's compile cache keys on it), so nothing needs to outlive the process.
    global _DIR
    if _DIR is None:
        _DIR = tempfile.mkdtemp(prefix="tritonwino-generated-")
        atexit.register(shutil.rmtree, _DIR, True)
    return _DIR


@functools.cache
def _load(source: str, name: str):
    digest = hashlib.sha1(source.encode()).hexdigest()[:16]
    modname = f"tritonwino_generated_{name}_{digest}"
    path = os.path.join(_gen_dir(), modname + ".py")
    if not os.path.exists(path):
        tmp = path + f".{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(source)
        os.replace(tmp, path)
    spec = importlib.util.spec_from_file_location(modname, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    spec.loader.exec_module(mod)
    return getattr(mod, name)


def kernel_source(spec: TileSpec, kind: str = "input", source: str = "v", weight: str = "sparse",
                  decomposed: bool = False) -> str:
    """The generated Triton source: ``kind="input"`` (input transform, the ``decomposed`` variant
    for DWM pieces) or ``"fused"`` (multiply + output transform with ``source``/``weight`` variant).
    For reading; the kernels use the same text.

    Example::
        print(kernel_source(spec, "fused", source="x", weight="sparse"))
    """
    if kind == "input":
        return input_transform_source(spec, _input_name(spec, decomposed), decomposed)
    if kind == "fused":
        return fused_source(spec, source, weight, f"_fused_{source}_{weight}__f{spec.m}{spec.r}_{spec.key()}")
    raise ValueError(f"kind must be 'input' or 'fused', got {kind!r}")


def _input_name(spec: TileSpec, decomposed: bool) -> str:
    return f"_input_transform{'_dwm' if decomposed else ''}__f{spec.m}{spec.r}_{spec.key()}"


def input_transform_kernel(spec: TileSpec, decomposed: bool = False):
    """The compiled-on-demand ``@triton.jit`` input transform for ``spec`` (``decomposed``: the
    variant that reads DWM pieces in place, see :func:`input_transform_source`)."""
    name = _input_name(spec, decomposed)
    return _load(input_transform_source(spec, name, decomposed), name)


def fused_kernel(spec: TileSpec, source: str, weight: str):
    """The ``@triton.jit`` fused multiply + output transform for ``spec`` (see :func:`fused_source`)."""
    name = f"_fused_{source}_{weight}__f{spec.m}{spec.r}_{spec.key()}"
    return _load(fused_source(spec, source, weight, name), name)
