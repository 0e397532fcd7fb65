"""Pure-torch Winograd convolution: the Triton kernels' reference twin and the CPU execution path.

The three stages are written with torch ops that need no n×n-per-tile unfold tensor:

* input transform — a depthwise ``conv2d`` with stride m whose P = n² filters are the rows of
  ``kron(Bᵀ, Bᵀ)``: padding, tiling and ``Bᵀ X B`` in one call;
* Winograd-domain multiply — batched matmuls over the P positions, summed over the channels in
  blocks of ``CHANNEL_BLOCK`` (as the kernels sum ``BLOCK_C`` per ``tl.dot``);
* output transform — one GEMM with ``kron(Aᵀ, Aᵀ)`` for every tile and one permute that scatters
  the m×m tiles into the output (measured 5–10× faster than a grouped ``conv_transpose2d``).

Everything is differentiable, so this path also trains (pruning step 2 uses it).

Numerics mirror the Triton kernels: transforms and accumulation in fp32 (fp64 for fp64 inputs);
for fp16/bf16 inputs the GEMM operands V and Q are rounded to that dtype, exactly what the
tensor-core kernel consumes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from . import _checks, dwm
from .transforms import normalize_points, tile_size, winograd_kron, winograd_matrices

__all__ = [
    "winograd_weight",
    "winograd_conv2d",
    "winograd_conv2d_q",
    "winograd_conv2d_pck",
    "input_transform",
    "winograd_gemm",
    "split_gemm",
    "split_operand",
    "output_transform",
    "tile_grid",
]


# Cached tensors are built with inference mode off: a cache first filled inside
# torch.inference_mode() must still be usable by a later forward that autograd records.
@functools.lru_cache(maxsize=64)
@torch.inference_mode(False)
def _matrices(m: int, r: int, pts: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return winograd_matrices(m, r, pts)


def matrices(m: int, r: int, points: Sequence[object] | None = None):
    """Cached float64 ``(AT, G, BT)`` (CPU); do not modify the returned tensors."""
    return _matrices(m, r, normalize_points(m, r, points))


def winograd_weight(
    weight: torch.Tensor, m: int, points: Sequence[object] | None = None
) -> torch.Tensor:
    """Winograd-domain weight ``Q = G W Gᵀ`` (K, C, n, n), computed in float64.

    Differentiable with respect to ``weight``; the result is float64 on ``weight``'s device.
    """
    _checks.check_weight(weight)
    k, c, r, _ = weight.shape
    _, g, _ = matrices(m, r, points)
    n = g.shape[0]
    # vec(G W Gᵀ) = vec(W) @ kron(G, G)ᵀ: one (K·C × r²) @ (r² × n²) GEMM instead of many tiny ones.
    s = torch.kron(g, g).t().to(weight.device)
    return (weight.to(torch.float64).reshape(k * c, r * r) @ s).reshape(k, c, n, n)


def tile_grid(ho: int, wo: int, m: int) -> tuple[int, int]:
    """Number of m×m output tiles along H and W."""
    return -(-ho // m), -(-wo // m)


@functools.lru_cache(maxsize=64)
@torch.inference_mode(False)
def _kron_mats(m: int, r: int, pts: tuple, dtype: torch.dtype, device: torch.device):
    kb, ka = winograd_kron(m, r, pts)
    return kb.to(device=device, dtype=dtype), ka.to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=64)
@torch.inference_mode(False)
def _kron_filters(m: int, r: int, pts: tuple, dtype: torch.dtype, device: torch.device):
    kb, _ = winograd_kron(m, r, pts)
    n = tile_size(m, r)
    # conv2d is a correlation: filter (i,j) holds KB[:, (i,j)] laid out over the n×n window.
    return kb.t().reshape(n * n, 1, n, n).to(device=device, dtype=dtype)


class _TiledTransform(torch.autograd.Function):
    """V laid out (P, C, N·T) from the padded input xp (N, C, Hp, Wp): ``conv2d`` with the P kron
    filters at stride m, then one permute-copy. Its input gradient is one GEMM and ``F.fold``.

    The forward is exactly the depthwise conv + permute. Autograd's backward (oneDNN's
    ``convolution_backward`` for a 1-channel input, P filters and stride m) was 48% of a
    Winograd-domain training step on CPU (SmallVGG, batch 128: 46 ms per layer). Here the gradient
    is ``Fᵀ @ grad`` as one (n² × P) @ (P × C·N·T) GEMM straight from V's layout, one permute, and
    ``fold`` over a single batch of N·C channels (col2im steps through its batch one item at a
    time: 2× slower for N·C items). SmallVGG's Winograd-domain step went 0.28 s -> 0.16 s."""

    @staticmethod
    def forward(xp: torch.Tensor, filters: torch.Tensor, m: int) -> torch.Tensor:
        nb, c, hp, wp = xp.shape
        v = F.conv2d(xp.reshape(nb * c, 1, hp, wp), filters, stride=m)  # (N*C, P, th, tw)
        p, t = v.shape[1], v.shape[2] * v.shape[3]  # sizes spelled out: N = 0 must reshape too
        return v.reshape(nb, c, p, t).permute(2, 1, 0, 3).reshape(p, c, nb * t)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        xp, filters, m = inputs
        ctx.save_for_backward(filters)
        ctx.m, ctx.shape = m, tuple(xp.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (filters,) = ctx.saved_tensors
        p, _, n, _ = filters.shape
        nb, c, hp, wp = ctx.shape
        if nb * c == 0:  # fold refuses a 0-channel input
            return grad.new_zeros(ctx.shape), None, None
        t = ((hp - n) // ctx.m + 1) * ((wp - n) // ctx.m + 1)
        windows = filters.reshape(p, n * n).t().to(grad.dtype) @ grad.reshape(p, c * nb * t)  # (n², C·N·T)
        windows = windows.reshape(n * n, c, nb, t).permute(2, 1, 0, 3).reshape(1, nb * c * n * n, t)
        gx = F.fold(windows, (hp, wp), kernel_size=n, stride=ctx.m)
        return gx.reshape(nb, c, hp, wp), None, None


def input_transform(
    x: torch.Tensor, m: int, r: int, padding: tuple[int, int], points=None, zero_row: bool = False,
    decomposition: dwm.Decomposition | None = None, winograd_relu: bool = False,
) -> torch.Tensor:
    """``V = Bᵀ X B`` for every tile: returns (P, C, T) in the accumulation dtype, T = N·th·tw.

    ``zero_row=True`` returns (P, C + 1, T) with an all-zero channel C, which the sparse path's
    padded gathers point at (written in the same copy that lays V out, not a second one).
    ``decomposition``: a decomposed convolution (``tritonwino.dwm``) transforms the expanded input
    X' (C·pieces virtual channels, materialised here; the Triton kernel reads x in place).
    ``winograd_relu``: ``V = ReLU(Bᵀ X B)`` (Liu et al.'s Winograd-ReLU)."""
    if decomposition is not None:
        x = dwm.expand_input(x, decomposition, padding)
        padding = (0, 0)
    pts = normalize_points(m, r, points)
    n = tile_size(m, r)
    nb, c, h, w = x.shape
    ho, wo = _checks.output_size(h, w, r, padding)
    th, tw = tile_grid(ho, wo, m)
    acc = _checks.accum_dtype(x.dtype)
    bfilt = _kron_filters(m, r, pts, acc, x.device)
    ph, pw = padding
    extra_h = th * m + r - 1 - (h + 2 * ph)
    extra_w = tw * m + r - 1 - (w + 2 * pw)
    xp = F.pad(x.to(acc), (pw, pw + extra_w, ph, ph + extra_h))
    if not zero_row:
        v = _TiledTransform.apply(xp, bfilt, m)  # (P, C, N*T); records a backward only under autograd
        return torch.relu(v) if winograd_relu else v
    v = F.conv2d(xp.reshape(nb * c, 1, xp.shape[2], xp.shape[3]), bfilt, stride=m)  # (N*C, P, th, tw)
    if winograd_relu:
        v = torch.relu(v)
    v = v.reshape(nb, c, n * n, th * tw).permute(2, 1, 0, 3)
    out = v.new_empty((n * n, c + 1, nb, th * tw))
    out[:, :c].copy_(v)
    out[:, c].zero_()
    return out.reshape(n * n, c + 1, nb * th * tw)


# Channels per block of the dense Winograd-domain GEMM's accumulation: M is summed over C in blocks
# of CHANNEL_BLOCK (one matmul each, added into one fp32 accumulator), as the Triton kernels sum
# BLOCK_C channels per tl.dot. One long sequential sum over C (a single CPU matmul) is what made the
# torch path 1.3-1.5x less accurate than the kernels (issue 14, uniform[-1, 1], C = K = 64, 24x24,
# accurate points, fp32: F(4,3) 3.52x -> 2.86x a direct conv's error, F(6,3) 14.9x -> 12.5x; at
# C = 256 F(4,3) 4.46x -> 2.87x). 16 would give 2.47x / 11.3x but costs the GEMM stage +44% on one
# CPU thread (36 x 256 x 256 x 3136) against +20% for 32. fp16/bf16 inputs: no change (V's rounding
# dominates).
CHANNEL_BLOCK = 32


def split_operand(t: torch.Tensor, operand: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``t ≈ hi + lo`` with both parts in the half ``operand`` dtype: ``hi`` is t rounded, ``lo`` the
    rounded remainder (t's own precision is fp32 or better). Products of half values are exact in
    fp32, so ``hi·hi' + lo·hi' + hi·lo'`` carries ~21 bits of each operand instead of 11 (8 for
    bf16); the dropped ``lo·lo'`` is 2⁻²² relative."""
    hi = t.to(operand)
    return hi, (t - hi.to(t.dtype)).to(operand)


def split_gemm(v: torch.Tensor, q: torch.Tensor, operand: torch.dtype, gemm=None) -> torch.Tensor:
    """``gemm(v, q)`` (default :func:`winograd_gemm`, v (P, C, T), q (P, C, K)) with split half
    operands (``split_operand``): three GEMMs of half values, accumulated in fp32 — what the Triton
    path's three launches compute. v and q in fp32; a q that was already half has lo = 0 (only V
    gains)."""
    gemm = gemm or winograd_gemm
    (vh, vl), (qh, ql) = ((hi.to(v.dtype), lo.to(v.dtype)) for hi, lo in (split_operand(t, operand) for t in (v, q)))
    return gemm(vh, qh) + gemm(vl, qh) + gemm(vh, ql)


def winograd_gemm(v: torch.Tensor, q_pck: torch.Tensor) -> torch.Tensor:
    """``M_p = Q_pᵀ V_p`` for every position: v (P, C, T), q_pck (P, C, K) -> M (P, K, T), summed over
    C in blocks of ``CHANNEL_BLOCK`` channels."""
    qt = q_pck.transpose(1, 2)
    c, b = v.shape[1], CHANNEL_BLOCK
    if c <= b:
        return torch.matmul(qt, v)
    acc = torch.matmul(qt[:, :, :b], v[:, :b])
    for s in range(b, c, b):
        acc = acc.baddbmm_(qt[:, :, s:s + b], v[:, s:s + b])
    return acc


def output_transform(
    mm: torch.Tensor,
    nb: int,
    ho: int,
    wo: int,
    m: int,
    r: int,
    points=None,
    bias: torch.Tensor | None = None,
    relu: bool = False,
) -> torch.Tensor:
    """``Y = Aᵀ M A`` per tile (+ bias, ReLU): mm (P, K, T) -> (N, K, ho, wo) in mm's dtype."""
    pts = normalize_points(m, r, points)
    p, k, _ = mm.shape
    th, tw = tile_grid(ho, wo, m)
    _, ka = _kron_mats(m, r, pts, mm.dtype, mm.device)
    # One GEMM for every tile's Aᵀ M A, then one permute that scatters the m×m tiles into place.
    y = (ka.t() @ mm.reshape(p, -1)).reshape(m, m, k, nb, th, tw)
    y = y.permute(3, 2, 4, 0, 5, 1).reshape(nb, k, th * m, tw * m)[:, :, :ho, :wo]
    if bias is not None:
        y = y + bias.to(y.dtype).view(1, k, 1, 1)
    if relu:
        y = torch.relu(y)
    return y


def sparse_winograd_gemm(v: torch.Tensor, packed, operand: torch.dtype | None = None,
                         split: bool = False) -> torch.Tensor:
    """Gathered GEMMs over the kept channels only: v (P, C, T) -> M (P, K, T).

    All (position, group) lists are padded to the longest one and run as one batched matmul;
    padding gathers an appended zero row, so it contributes exact zeros (never 0 * NaN).
    ``split``: V and the values as half ``operand`` hi + lo pairs, hi·hi + lo·hi + hi·lo
    (:func:`split_gemm`); v then unrounded.
    """
    if split:
        idx, vals32 = packed.padded_slabs(v.dtype, v.dtype)
        return split_gemm(v, vals32, operand, lambda a, b: _gathered_gemm(a, packed, idx, b))
    return _gathered_gemm(v, packed, *packed.padded_slabs(operand or v.dtype, v.dtype))


def _gathered_gemm(v: torch.Tensor, packed, idx: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    p, c, t = v.shape
    g = packed.G
    if idx.shape[1] == 0:
        return v.new_zeros((p, packed.K, t))
    # The padding index C must read zeros: use V's own zero row when it has one.
    v_ext = v if c == packed.C + 1 else torch.cat([v, v.new_zeros((p, 1, t))], dim=1)
    p_of_group = torch.arange(p * g, device=v.device) // g
    gathered = v_ext[p_of_group[:, None], idx]  # (P*G, L, T)
    out = torch.matmul(vals.transpose(1, 2), gathered)  # (P*G, group_k, T)
    return out.reshape(p, g * packed.group_k, t)[:, : packed.K]


def _own_precision(fn):
    """Run ``fn`` with autocast off: the path chooses its own dtypes (fp32 transforms and
    accumulation, operands rounded to the input's half type). Under autocast its conv2d and matmuls
    would otherwise run in fp16 — transforms included (fp16 input, fp32 weight, F(4,3): mean error
    +21%) — and a split operand would be rounded again."""

    @functools.wraps(fn)
    def wrapped(x: torch.Tensor, *args, **kwargs):
        dev = x.device.type
        if dev in ("cpu", "cuda") and torch.is_autocast_enabled(dev):
            with torch.autocast(dev, enabled=False):
                return fn(x, *args, **kwargs)
        return fn(x, *args, **kwargs)

    return wrapped


@_own_precision
def sparse_winograd_conv2d(
    x: torch.Tensor,
    packed,
    bias: torch.Tensor | None = None,
    padding: int | tuple[int, int] = 0,
    relu: bool = False,
    winograd_relu: bool = False,
    split_operands: bool = False,
) -> torch.Tensor:
    """Sparse Winograd convolution with a ``PackedWinogradWeight`` (inference; torch ops); a packed
    weight with a decomposition runs its k×k stride-s convolution. ``split_operands``: half
    inputs: V and the values as hi + lo pairs (the values gain only if the packed weight is fp32);
    fp32 inputs: the multiply and the output transform in float64."""
    pad = _checks.check_padding(padding)
    m, r, pts, d = packed.m, packed.r, packed.points_fractions(), packed.dwm
    _checks.check_tile_dtype(m, r, x.dtype, packed.values.dtype)
    nb, _, h, w = x.shape
    ho, wo = _checks.conv_output_size(h, w, r, pad, d)
    acc = _checks.accum_dtype(x.dtype)
    opd = _checks.operand_dtype(x.dtype)
    v = input_transform(x, m, r, pad, pts, zero_row=True, decomposition=d, winograd_relu=winograd_relu)
    if _checks.wide_multiply(split_operands, x.dtype):
        mm = sparse_winograd_gemm(v.double(), packed)
    elif split_operands and opd != acc:
        mm = sparse_winograd_gemm(v, packed, opd, True)
    else:
        mm = sparse_winograd_gemm(v.to(opd).to(acc), packed, opd, False)
    y = output_transform(mm, nb, ho, wo, m, r, pts, bias, relu)
    return _finish(y, x)


def _finish(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # x's dtype and layout, and a dense result: the slicing of partial tiles leaves a strided view
    return y.to(x.dtype).contiguous(memory_format=_checks.memory_format_of(x))


def winograd_conv2d_q(
    x: torch.Tensor,
    q: torch.Tensor,
    bias: torch.Tensor | None = None,
    padding: int | tuple[int, int] = 0,
    m: int = 4,
    r: int = 3,
    points=None,
    relu: bool = False,
    winograd_relu: bool = False,
    decomposition: dwm.Decomposition | None = None,
    split_operands: bool = False,
) -> torch.Tensor:
    """Winograd convolution from a Winograd-domain weight ``q`` (K, C, n, n).

    ``q`` must have been built with the same (m, r, points) (and, for a decomposed convolution,
    from the expanded weight: C = input channels · pieces). Differentiable in x, q and bias.
    """
    pad = _checks.check_padding(padding)
    n = tile_size(m, r)
    if q.dim() != 4 or q.shape[2] != n or q.shape[3] != n:
        raise ValueError(f"q must have shape (K, C, {n}, {n}) for F({m},{r}), got {tuple(q.shape)}")
    k, c = q.shape[:2]
    return winograd_conv2d_pck(x, q.permute(2, 3, 1, 0).reshape(n * n, c, k), bias, pad, m, r, points, relu,
                               winograd_relu, decomposition, split_operands)


@_own_precision
def winograd_conv2d_pck(
    x: torch.Tensor,
    q_pck: torch.Tensor,
    bias: torch.Tensor | None,
    padding: tuple[int, int],
    m: int,
    r: int,
    points=None,
    relu: bool = False,
    winograd_relu: bool = False,
    decomposition: dwm.Decomposition | None = None,
    split_operands: bool = False,
) -> torch.Tensor:
    """Winograd convolution from a position-major weight ``q_pck`` (P, C, K) — the layout the GEMM
    uses, so a module can keep it and skip a per-call permute of the whole weight. With a
    ``decomposition``, C counts virtual channels (input channels · pieces). ``split_operands``:
    half inputs: V and Q each as a half hi + lo pair (:func:`split_gemm`); fp32 inputs: the
    multiply and the output transform in float64 (fp32 products are exact there)."""
    _, c, k = q_pck.shape
    _checks.check_input(x, _checks.real_channels(c, decomposition))
    _checks.check_bias(bias, k)
    _checks.check_same_device(x=x, q=q_pck, bias=bias)
    _checks.check_tile_dtype(m, r, x.dtype, q_pck.dtype)
    nb, _, h, w = x.shape
    ho, wo = _checks.conv_output_size(h, w, r, padding, decomposition)
    acc = _checks.accum_dtype(x.dtype)
    opd = _checks.operand_dtype(x.dtype)
    v = input_transform(x, m, r, padding, points, decomposition=decomposition, winograd_relu=winograd_relu)
    if _checks.wide_multiply(split_operands, x.dtype):
        mm = winograd_gemm(v.double(), q_pck.double())
    elif split_operands and opd != acc:
        mm = split_gemm(v, q_pck.to(acc), opd)
    else:
        # fp32 accumulation for half operands: upcast exact values, then one fp32 matmul.
        mm = winograd_gemm(v.to(opd).to(acc), q_pck.to(opd).to(acc))
    y = output_transform(mm, nb, ho, wo, m, r, points, bias, relu)
    return _finish(y, x)


def winograd_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    padding: int | tuple[int, int] = 0,
    m: int = 4,
    points=None,
    relu: bool = False,
    *,
    winograd_relu: bool = False,
    stride: int = 1,
    decompose: bool | None = None,
    split_operands: bool = False,
) -> torch.Tensor:
    """Dense Winograd conv2d (dilation 1, groups 1), pure torch, differentiable. Stride 2 and
    large kernels run decomposed (``tritonwino.dwm.plan`` decides, ``decompose`` overrides)."""
    _, _, k = _checks.check_weight(weight)
    d = dwm.plan(k, stride, decompose)
    r = k if d is None else d.r
    q = winograd_weight(weight if d is None else dwm.expand_weight(weight, d), m, points)
    return winograd_conv2d_q(x, q.to(_checks.accum_dtype(x.dtype)), bias, padding, m, r, points, relu,
                             winograd_relu, d, split_operands)
