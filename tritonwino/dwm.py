"""The Decomposable Winograd Method (Huang et al., AAAI 2020): stride 2 and large kernels as one
stride-1 Winograd convolution over "virtual input channels".

A k×k convolution with stride s ∈ {1, 2} and padding p is a sum of pieces:

* the polyphase split (s = 2): phase (pu, pv) keeps the kernel taps ``w[s·u + pu, s·v + pv]`` and
  the input samples ``x_pad[s·i + pu, s·j + pv]``, a stride-1 correlation;
* inside each phase kernel (length L along an axis), blocks of at most 3 taps: ⌈L/3⌉ blocks of
  near-equal length (so a 4-tap phase becomes 2 + 2, not 3 + 1, and runs as F(m, 2)).

A piece whose kernel row block starts at tap ``oy`` (and column block at ``ox``) reads the shifted,
decimated input ``X'[i, j] = x_pad[s·i + oy, s·j + ox]``, and every piece produces the same
HO × WO output grid. With one common piece size r (each piece zero-padded to r × r), the layer is
exactly a stride-1, padding-0 r × r convolution of the expanded input X' (N, C·pieces, ·, ·) with
the expanded weight W' (K, C·pieces, r, r); virtual channel ``c' = piece·C + c`` (piece-major).
So one Winograd pipeline runs every piece: the Winograd-domain GEMM sums over c', which is DWM's
aggregation in the Winograd domain, and the sparse format, the importance factors of F(m, r) and
pruning all apply per piece unchanged. Every original weight belongs to exactly one piece, so
spatial masks fold back (:func:`fold_weight`).

The torch path materialises X' (:func:`expand_input`); the Triton input transform reads x directly
with the per-piece offsets and the stride (:func:`offsets_table`).

Example:
    >>> d = decomposition(3, 2)  # 3×3 stride 2: four pieces of at most 2×2, run as F(m, 2)
    >>> d.r, d.pieces
    (2, 4)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "STRIDES",
    "Decomposition",
    "decomposition",
    "expand_input",
    "expand_weight",
    "fold_weight",
    "multiplications",
    "offsets_table",
    "output_size",
    "plan",
]

STRIDES = (1, 2)
MAX_PIECE = 3  # pieces are at most 3 taps along each axis: F(m, 3) is the accurate sweet spot


@dataclass(frozen=True)
class Decomposition:
    """The pieces of a k×k stride-s convolution.

    ``blocks``: per axis, the (first tap, length) of every block; piece ``(by, bx)`` (index
    ``by·len(blocks) + bx``) holds the kernel taps ``(oy + s·u, ox + s·v)`` for ``u < ly``, ``v < lx``.
    ``r``: the common piece size, the r of the F(m, r) tile every piece runs with.
    """

    kernel: int
    stride: int
    r: int
    blocks: tuple[tuple[int, int], ...]

    @property
    def pieces(self) -> int:
        return len(self.blocks) ** 2

    def piece_blocks(self) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """``[((oy, ly), (ox, lx)), ...]`` in virtual-channel (piece) order."""
        return [(by, bx) for by in self.blocks for bx in self.blocks]

    def key(self) -> list[int]:
        """The op-schema form: ``[kernel, stride]`` (the pieces follow from these)."""
        return [self.kernel, self.stride]


def _check_kernel_stride(kernel: object, stride: object) -> tuple[int, int]:
    for name, v in (("kernel size", kernel), ("stride", stride)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if stride not in STRIDES:
        raise ValueError(f"stride={stride} is not supported: the decomposable Winograd method here handles "
                         f"strides {STRIDES}")
    return int(kernel), int(stride)


def decomposition(kernel: int, stride: int) -> Decomposition:
    """The pieces of a ``kernel``×``kernel`` convolution with ``stride`` (1 or 2). Not cached: it is
    a few integer steps, and torch.compile traces through it (it warns about cached functions).

    Example:
        >>> decomposition(7, 2).blocks  # phase 0: taps 0,2 | 4,6; phase 1: taps 1,3,5
        ((0, 2), (4, 2), (1, 3))
    """
    k, s = _check_kernel_stride(kernel, stride)
    blocks = []
    for phase in range(s):
        taps = len(range(phase, k, s))
        if taps == 0:
            continue
        nblk = math.ceil(taps / MAX_PIECE)
        base, extra = divmod(taps, nblk)
        start = 0
        for b in range(nblk):
            length = base + (1 if b < extra else 0)
            blocks.append((phase + s * start, length))
            start += length
    r = max(length for _, length in blocks)
    return Decomposition(k, s, r, tuple(blocks))


def plan(kernel: int, stride: int = 1, decompose: bool | None = None) -> Decomposition | None:
    """The one rule for when a convolution runs decomposed: None means a plain F(m, k) convolution.

    ``decompose=None`` (auto): decomposed when plain Winograd cannot run it or runs it badly —
    stride 2, an even kernel, or a kernel larger than 3 (a single F(m, 5) / F(m, 7) tile is far
    less accurate than F(m, 3) pieces; see bench/results/dwm_accuracy.md). ``True`` always
    decomposes (a 3×3 stride-1 kernel is then its own single piece, i.e. plain); ``False`` never
    does (only stride 1 with an odd kernel is allowed then).

    Example:
        >>> plan(3, 1) is None, plan(5, 1).pieces, plan(5, 1, decompose=False)
        (True, 4, None)
    """
    k, s = _check_kernel_stride(kernel, stride)
    if decompose is not None and not isinstance(decompose, bool):
        raise ValueError(f"decompose must be None (auto), True or False, got {decompose!r}")
    if decompose is False:
        if s != 1:
            raise ValueError(f"stride {s} needs the decomposable Winograd method: decompose=False is only "
                             "possible for stride 1")
        if k % 2 == 0:
            raise ValueError(f"kernel size {k} is even: a plain F(m, {k}) needs an odd kernel; use decompose=None "
                             "(the decomposable Winograd method)")
        return None
    if decompose is None and s == 1 and k % 2 == 1 and k <= MAX_PIECE:
        return None
    d = decomposition(k, s)
    if d.pieces == 1 and s == 1:
        return None  # a kernel of at most 3 taps is its own single piece
    return d


def output_size(h: int, w: int, kernel: int, stride: int, padding: tuple[int, int]) -> tuple[int, int]:
    """``F.conv2d``'s output size; ValueError when the padded input is smaller than the kernel."""
    hp, wp = h + 2 * padding[0], w + 2 * padding[1]
    if hp < kernel or wp < kernel:
        raise ValueError(f"input {h}x{w} with padding {padding} is smaller than the {kernel}x{kernel} kernel: "
                         "the output would be empty")
    return (hp - kernel) // stride + 1, (wp - kernel) // stride + 1


def expand_weight(weight: torch.Tensor, d: Decomposition) -> torch.Tensor:
    """W' (K, C·pieces, r, r): every piece's taps, zero-padded to r × r, virtual channel
    ``piece·C + c``. Differentiable (slices and padding)."""
    k_out, c, kh, kw = weight.shape
    if kh != d.kernel or kw != d.kernel:
        raise ValueError(f"weight is {kh}x{kw} but the decomposition is for a {d.kernel}x{d.kernel} kernel")
    s, r = d.stride, d.r
    parts = []
    for (oy, ly), (ox, lx) in d.piece_blocks():
        piece = weight[:, :, oy: oy + s * (ly - 1) + 1: s, ox: ox + s * (lx - 1) + 1: s]
        parts.append(F.pad(piece, (0, r - lx, 0, r - ly)))
    return torch.stack(parts, dim=1).reshape(k_out, d.pieces * c, r, r)


def fold_weight(expanded: torch.Tensor, d: Decomposition, rel_tol: float | None = None) -> torch.Tensor | None:
    """Inverse of :func:`expand_weight`: (K, C·pieces, r, r) -> (K, C, k, k).

    The zero-padding taps of each piece must be zero for the expanded weight to be a k×k
    convolution: with ``rel_tol`` given, None is returned when one of them exceeds ``rel_tol``
    times the largest entry (a weight pruned or trained piece-wise in the Winograd domain may have
    no k×k equivalent); without it they are ignored (masks: each original tap is in one piece).
    Works for bool tensors (masks) too.
    """
    k_out, cp, r, r2 = expanded.shape
    if r != d.r or r2 != d.r or cp % d.pieces:
        raise ValueError(f"expanded weight {tuple(expanded.shape)} does not fit {d.pieces} pieces of {d.r}x{d.r}")
    c = cp // d.pieces
    s = d.stride
    e = expanded.reshape(k_out, d.pieces, c, r, r)
    out = expanded.new_zeros((k_out, c, d.kernel, d.kernel))
    pad_max = 0.0
    for i, ((oy, ly), (ox, lx)) in enumerate(d.piece_blocks()):
        out[:, :, oy: oy + s * (ly - 1) + 1: s, ox: ox + s * (lx - 1) + 1: s] = e[:, i, :, :ly, :lx]
        if rel_tol is not None and (ly < r or lx < r):
            rest = e[:, i].abs().to(torch.float64).clone()
            rest[:, :, :ly, :lx] = 0
            pad_max = max(pad_max, float(rest.max()) if rest.numel() else 0.0)
    if rel_tol is not None:
        scale = float(expanded.abs().max()) if expanded.numel() else 0.0
        if pad_max > rel_tol * max(scale, 1e-30):
            return None
    return out


def expand_input(x: torch.Tensor, d: Decomposition, padding: tuple[int, int]) -> torch.Tensor:
    """X' (N, C·pieces, HO + r − 1, WO + r − 1): ``X'[n, piece·C + c, i, j] = x_pad[n, c, s·i + oy,
    s·j + ox]`` (zero outside x), the input of the equivalent stride-1, padding-0 r×r convolution.
    The torch path's materialised twin of what the Triton input transform reads in place."""
    nb, c, h, w = x.shape
    ph, pw = padding
    ho, wo = output_size(h, w, d.kernel, d.stride, padding)
    hx, wx = ho + d.r - 1, wo + d.r - 1
    s = d.stride
    last = max(o for o, _ in d.blocks)
    # x_pad must reach row last + s·(hx − 1): pad the bottom/right beyond the conv's own padding
    need_h, need_w = last + s * (hx - 1) + 1, last + s * (wx - 1) + 1
    xp = F.pad(x, (pw, max(pw, need_w - w - pw), ph, max(ph, need_h - h - ph)))
    parts = [xp[:, :, oy: oy + s * (hx - 1) + 1: s, ox: ox + s * (wx - 1) + 1: s]
             for (oy, _), (ox, _) in d.piece_blocks()]
    return torch.stack(parts, dim=1).reshape(nb, d.pieces * c, hx, wx)


def offsets_table(d: Decomposition | None) -> list[tuple[int, int]]:
    """Per piece, the (row, column) offset into the padded input of the piece's X' (the Triton
    input transform's table; one (0, 0) entry for a plain convolution)."""
    if d is None:
        return [(0, 0)]
    return [(oy, ox) for (oy, _), (ox, _) in d.piece_blocks()]


def multiplications(kernel: int, stride: int, m: int, ho: int, wo: int, d: Decomposition | None) -> dict:
    """Multiplications of the Winograd-domain (elementwise) stage per (input channel, output channel)
    pair, against a direct convolution: direct ``ho·wo·k²``; Winograd ``tiles · pieces · n²``.

    Example:
        >>> multiplications(3, 2, 4, 8, 8, decomposition(3, 2))["direct_over_winograd"]
        1.44
    """
    r = kernel if d is None else d.r
    pieces = 1 if d is None else d.pieces
    n = m + r - 1
    tiles = math.ceil(ho / m) * math.ceil(wo / m)
    direct = ho * wo * kernel * kernel
    wino = tiles * pieces * n * n
    return {"direct": direct, "winograd": wino, "direct_over_winograd": direct / wino}
