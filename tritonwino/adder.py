"""AdderNet layers and Winograd for AdderNet.

AdderNet (Chen et al., CVPR 2020) replaces a convolution's multiply-accumulate by a negative ℓ1
distance between the input window and the filter::

    Y[n,k,i,j] = -Σ_{c,u,v} |X[n,c,i+u-p,j+v-p] - W[k,c,u,v]|   (+ bias[k])

Winograd for AdderNet (Li et al., ICML 2021) computes, per m×m output tile,
``Aᵀ[-Σ_c |U - V|]A`` with ``U = G W Gᵀ`` and ``V = Bᵀ X B``: n² ℓ1 terms per tile and channel
pair instead of m²·r². It is *not* equal to the AdderNet layer (the ℓ1 norm does not distribute
over the transforms); it is its own layer, trained as such. With a valid Winograd triple the
ℓ2 form ``Aᵀ[-Σ_c (U - V)²]A`` equals ``2·conv2d(X, W)`` minus an input-only and a weight-only
term, which is why training starts in ℓ2 and moves to ℓ1 (``p`` below, ``l2_to_l1_p``).

Transform matrices (``winograd_adder_matrices``): ``"standard"`` is the library's F(m, 3) triple;
``"balanced"`` (F(2,3), the default) flips the sign of column 0 of Aᵀ and row 0 of G. It is still
an exact Winograd triple, but the rows of Aᵀ now have equal sums (1, 1 instead of 3, 1), so the
four outputs of a tile are the same kind of sum (five +|·| and four −|·| terms each) and have the
same expected value; with the standard matrices the four outputs of a tile differ ~9:3:3:1 in
mean, a fixed pattern of period m that BatchNorm cannot remove. docs/adder.md has the derivation
and what is verified; the paper's own matrices were not available.

Training rules (AdderNet, [code] huawei-noah/AdderNet ``adder.py``): the filter gradient is the
full-precision ``X - W`` instead of ``sign(X - W)``, the input gradient is ``HardTanh(W - X)``,
and the modules scale each layer's filter gradient to norm ``eta·sqrt(numel)`` (the adaptive
learning rate, ``eta=0.2`` as in that code). The Winograd layer applies the same rules to U and V
in the Winograd domain; autograd carries them through the (linear) transforms.

Filters live in the spatial domain (``weight`` is W, ``U = G W Gᵀ``) or, with
``weight_domain="winograd"``, in the Winograd domain (``weight`` is U itself, n×n per channel
pair: n²/r² more parameters, the same additions per image) [ours, beyond the paper: the ℓ1 layer
is not a convolution, so nothing ties U to the r×r filters; docs/adder.md has the measured gain].

``backend``: ``"auto"`` (Triton for CUDA tensors when no gradient is needed, torch otherwise),
``"triton"`` (the kernels; inference only; on CPU tensors it needs ``TRITON_INTERPRET=1``),
``"torch"`` (pure torch, differentiable).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _checks
from ._triton_path import INDEX_LIMIT, check_index_range, check_triton_dtype
from .functional import resolve_backend
from .transforms import normalize_points, tile_size, winograd_matrices, winograd_matrices_exact

__all__ = [
    "ADDER_MATRICES",
    "WEIGHT_DOMAINS",
    "AdderConv2d",
    "WinogradAdderConv2d",
    "adder_conv2d",
    "l2_to_l1_p",
    "set_adder_p",
    "winograd_adder_conv2d",
    "winograd_adder_matrices",
    "winograd_adder_weight",
]

ADDER_MATRICES = ("balanced", "standard")
WEIGHT_DOMAINS = ("spatial", "winograd")
# Elements of one (rows × cols × E) block of the input-gradient computation: 1 MB in fp32 stays in
# cache; measured 3x faster than 16 MB blocks on one CPU thread (0.09 s vs 0.29 s for 115M terms).
_GRAD_CHUNK_ELEMS = 1 << 18


# ------------------------------------------------------------------------------------------------
# matrices


def winograd_adder_matrices(
    m: int = 2, r: int = 3, kind: str = "balanced"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Transform matrices ``(AT (m×n), G (n×r), BT (n×n))`` (float64) of the Winograd AdderNet layer.

    Args:
        m: output tile size; ``"balanced"`` exists for m = 2 only.
        r: kernel size; ``"balanced"`` exists for r = 3 only.
        kind: ``"balanced"`` (default; equal row sums of Aᵀ, see the module docstring) or
            ``"standard"`` (the library's Winograd matrices, ``transforms.winograd_matrices``).

    Both kinds are exact Winograd triples: ``Aᵀ[(G W Gᵀ) ⊙ (Bᵀ X B)]A`` is the correlation of X and W.

    Example:
        >>> at, g, bt = winograd_adder_matrices(2)
        >>> at.sum(dim=1).tolist()
        [1.0, 1.0]
    """
    if kind not in ADDER_MATRICES:
        raise ValueError(f"kind must be one of {ADDER_MATRICES}, got {kind!r}")
    return tuple(t.clone() for t in _adder_matrices(m, r, kind))  # type: ignore[return-value]


@functools.lru_cache(maxsize=16)
@torch.inference_mode(False)
def _adder_matrices(m: int, r: int, kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    at, g, bt = winograd_matrices(m, r)
    if kind == "standard":
        return at, g, bt
    if (m, r) != (2, 3):
        raise ValueError(
            f"balanced adder matrices are derived for F(2,3) only, got F({m},{r}); use kind='standard' "
            "(no scaling of the columns of F(4,3)'s Aᵀ by ±1, ±2, ±4, ±1/2 or ±1/4 equalises its row sums)"
        )
    # Negating Aᵀ's column 0 and G's row 0 keeps the triple exact (the two signs cancel in the
    # product) and changes Aᵀ's row sums from (3, 1) to (1, 1). Bᵀ is left alone, so V is the
    # same as with the standard matrices.
    d = torch.ones(tile_size(m, r), dtype=torch.float64)
    d[0] = -1.0
    return at * d[None, :], g * d[:, None], bt


def _check_kind(kind: str, m: int, r: int) -> None:
    if kind not in ADDER_MATRICES:
        raise ValueError(f"matrices must be one of {ADDER_MATRICES}, got {kind!r}")
    _adder_matrices(m, r, kind)  # raises for unsupported (m, r)


@functools.lru_cache(maxsize=32)
@torch.inference_mode(False)
def _kron(m: int, r: int, kind: str, dtype: torch.dtype, device: torch.device):
    """KB (n², n²) with vec(BᵀXB) = vec(X) @ KB, and KA (n², m²) with vec(AᵀMA) = vec(M) @ KA."""
    at, _, bt = _adder_matrices(m, r, kind)
    n = tile_size(m, r)
    kb = torch.einsum("ia,jb->abij", bt, bt).reshape(n * n, n * n)
    ka = torch.einsum("pi,qj->ijpq", at, at).reshape(n * n, m * m)
    return kb.to(device=device, dtype=dtype), ka.to(device=device, dtype=dtype)


# ------------------------------------------------------------------------------------------------
# argument checks


def _check_p(p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, int | float) or not 1.0 <= float(p) <= 2.0:
        raise ValueError(f"p (the distance exponent, 1 = ℓ1 ... 2 = ℓ2) must be a number in [1, 2], got {p!r}")
    return float(p)


def _check_tensor(t: object, name: str, dims: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{name} must be 4-D {dims}, got shape {tuple(t.shape)}")
    if t.dtype not in _checks.FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {t.dtype}; adder layers need float32, float16, bfloat16 or float64")
    return t


def _check_common(x, weight, bias, padding, backend, p) -> tuple[tuple[int, int], float]:
    _check_tensor(weight, "weight", "(K, C, kh, kw)")
    _check_tensor(x, "x", "(N, C, H, W)")
    k, c = weight.shape[:2]
    if x.shape[1] != c:
        raise ValueError(f"x has {x.shape[1]} channels (shape {tuple(x.shape)}) but the weight expects {c}")
    if min(weight.shape) < 1:
        raise ValueError(f"weight has an empty dimension: shape {tuple(weight.shape)}")
    _checks.check_bias(bias, k)
    _checks.check_same_device(x=x, weight=weight, bias=bias)
    _checks.check_backend(backend)
    return _checks.check_padding(padding), _check_p(p)


def _resolve_backend(backend: str, x: torch.Tensor, p: float, *params: torch.Tensor | None) -> str:
    # The library's policy (functional.resolve_backend: the kernels have no backward, so "auto"
    # trains on the torch path and "triton" refuses to), plus what only the kernels lack here:
    # p != 1 and float64.
    if backend == "cpu":
        raise ValueError("the adder layers have no C++ CPU kernel (backend='cpu' is the convolution's): use "
                         "backend='torch' or 'auto'")
    be = resolve_backend(backend, x, *params)
    if be == "cpu" or (backend == "auto" and p != 1.0):
        return "torch"  # "auto" on a CPU tensor: the adder's CPU route is the torch path
    if be == "triton":
        if p != 1.0:
            raise ValueError(f"backend='triton' computes the ℓ1 layer only (p=1), got p={p}; the ℓ2→ℓ1 "
                             "schedule is a training-time setting: use backend='torch'")
        check_triton_dtype(x.dtype)
    return be


# ------------------------------------------------------------------------------------------------
# the distance with AdderNet's gradients


class _NegDistance(torch.autograd.Function):
    """``out[b, i, j] = -Σ_e |a[b,i,e] - w[b,j,e]|^p`` with AdderNet's gradients.

    ``a`` holds inputs (unfolded windows, or V), ``w`` filters (W, or U). Backward, for any p:
    ``∂/∂w = Σ_i (a - w)·g`` (full precision instead of the sign) and
    ``∂/∂a = Σ_j HardTanh(w - a)·g``. At p = 2 these are half the exact gradients (up to the
    clipping); the ℓ2→ℓ1 schedule changes the forward only.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, w: torch.Tensor, p: float) -> torch.Tensor:
        ctx.save_for_backward(a, w)
        if a.shape[-1] == 0:
            return a.new_zeros(a.shape[0], a.shape[1], w.shape[1])
        if p in (1.0, 2.0):
            d = torch.cdist(a, w, p=p, compute_mode="donot_use_mm_for_euclid_dist")
            return -(d if p == 1.0 else d.square())
        # cdist's general-p path calls a scalar pow per term: blocks of vectorised pow_ are 2x faster
        out = a.new_empty(a.shape[0], a.shape[1], w.shape[1])
        step = max(1, _GRAD_CHUNK_ELEMS // max(1, a.shape[0] * w.shape[1] * a.shape[2]))
        for i in range(0, a.shape[1], step):
            out[:, i:i + step] = (a[:, i:i + step].unsqueeze(2) - w.unsqueeze(1)).abs_().pow_(p).sum(dim=3).neg_()
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        a, w = ctx.saved_tensors
        g = g.contiguous()  # it arrives permuted from the output transform; strided g is 4x slower below
        grad_a = grad_w = None
        if ctx.needs_input_grad[1]:
            # Σ_i (a_i - w_j) g_ij = (gᵀ a)_j - w_j Σ_i g_ij: one batched GEMM.
            grad_w = torch.bmm(g.transpose(1, 2), a) - w * g.sum(dim=1).unsqueeze(-1)
        if ctx.needs_input_grad[0]:
            grad_a = torch.empty_like(a)
            nb, na, e = a.shape
            nw = w.shape[1]
            step = max(1, _GRAD_CHUNK_ELEMS // max(1, nb * nw * e))
            for i in range(0, na, step):
                diff = (w.unsqueeze(1) - a[:, i:i + step].unsqueeze(2)).clamp_(-1.0, 1.0)  # (B, i, J, E)
                grad_a[:, i:i + step] = diff.mul_(g[:, i:i + step].unsqueeze(3)).sum(dim=2)
        return grad_a, grad_w, None


class _AdaptiveGrad(torch.autograd.Function):
    """Identity forward; backward rescales the gradient to norm ``eta·sqrt(numel)`` (AdderNet's
    adaptive learning rate: local lr ``eta·sqrt(k)/‖ΔW‖₂`` per layer)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, eta: float) -> torch.Tensor:
        ctx.eta = eta
        return w.view_as(w)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        scale = ctx.eta * math.sqrt(g.numel()) / g.norm().clamp_min(1e-12)
        return g * scale, None


def adaptive_grad(weight: torch.Tensor, eta: float) -> torch.Tensor:
    """``weight`` unchanged, with its gradient scaled to norm ``eta·sqrt(weight.numel())``."""
    return _AdaptiveGrad.apply(weight, eta)


# ------------------------------------------------------------------------------------------------
# torch paths


def _adder_torch(x, weight, bias, padding, p):
    acc = _checks.accum_dtype(x.dtype)
    nb, c, h, w_in = x.shape
    k, _, kh, kw = weight.shape
    ho, wo = h + 2 * padding[0] - kh + 1, w_in + 2 * padding[1] - kw + 1
    cols = F.unfold(x.to(acc), (kh, kw), padding=padding)  # (N, C·kh·kw, L)
    a = cols.transpose(1, 2).reshape(1, nb * ho * wo, c * kh * kw)
    wf = weight.to(x.dtype).to(acc).reshape(1, k, c * kh * kw)
    out = _NegDistance.apply(a, wf, p).reshape(nb, ho, wo, k).permute(0, 3, 1, 2)
    if bias is not None:
        out = out + bias.to(x.dtype).to(acc).view(1, k, 1, 1)  # rounded like the kernel's bias
    return _like_input(out, x)


def _like_input(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return out.to(dtype=x.dtype, memory_format=_checks.memory_format_of(x))


def _tiles(h: int, w: int, r: int, m: int, padding: tuple[int, int]) -> tuple[int, int, int, int]:
    ho, wo = _checks.output_size(h, w, r, padding)
    return ho, wo, -(-ho // m), -(-wo // m)


def winograd_adder_weight(weight: torch.Tensor, m: int = 2, kind: str = "balanced") -> torch.Tensor:
    """``U = G W Gᵀ`` (K, C, n, n) in float64, differentiable with respect to ``weight``."""
    k, c, r, _ = weight.shape
    _, g, _ = _adder_matrices(m, r, kind)
    n = g.shape[0]
    s = torch.kron(g, g).t().to(weight.device)
    return (weight.to(torch.float64).reshape(k * c, r * r) @ s).reshape(k, c, n, n)


def _filters_u(weight: torch.Tensor, dtype: torch.dtype, m: int, kind: str, domain: str) -> torch.Tensor:
    """U (K, C, n, n) from the layer's weight, rounded to ``dtype`` (as the operand the kernels are
    given) and widened to float64; differentiable."""
    if domain == "winograd":
        return weight.to(dtype).to(torch.float64)
    return winograd_adder_weight(weight.to(dtype), m, kind)


def _winograd_adder_torch(x, u, bias, padding, m, r, kind, p):
    acc = _checks.accum_dtype(x.dtype)
    opd = _checks.operand_dtype(x.dtype)
    nb, c, h, w_in = x.shape
    k = u.shape[0]
    n = tile_size(m, r)
    ho, wo, th, tw = _tiles(h, w_in, r, m, padding)
    kb, ka = _kron(m, r, kind, acc, x.device)
    # Zero-extend bottom/right so the tiles cover the output; the extra outputs are cropped.
    xp = F.pad(x.to(acc), (padding[1], padding[1] + tw * m + r - 1 - (w_in + 2 * padding[1]),
                           padding[0], padding[0] + th * m + r - 1 - (h + 2 * padding[0])))
    win = F.unfold(xp, n, stride=m)  # (N, C·n², T_img)
    win = win.reshape(nb, c, n * n, th * tw).permute(0, 3, 1, 2)  # (N, T_img, C, n²)
    v = (win @ kb).to(opd).to(acc)  # the operands the kernels read: V rounded like U
    v = v.permute(3, 0, 1, 2).reshape(n * n, nb * th * tw, c)  # (P, T, C)
    u = u.to(opd).to(acc).permute(2, 3, 0, 1).reshape(n * n, k, c)  # (P, K, C)
    mm = _NegDistance.apply(v, u, p)  # (P, T, K)
    y = mm.permute(1, 2, 0) @ ka  # (T, K, m²)
    y = y.reshape(nb, th, tw, k, m, m).permute(0, 3, 1, 4, 2, 5).reshape(nb, k, th * m, tw * m)
    y = y[:, :, :ho, :wo]
    if bias is not None:
        y = y + bias.to(x.dtype).to(acc).view(1, k, 1, 1)  # rounded like the kernel's bias
    return _like_input(y, x)


# ------------------------------------------------------------------------------------------------
# Triton paths


def _adder_triton(x, weight, bias, padding):
    from .kernels.adder_conv import adder_conv

    k, _, kh, kw = weight.shape
    out = x.shape[0] * k * (x.shape[2] + 2 * padding[0] - kh + 1) * (x.shape[3] + 2 * padding[1] - kw + 1)
    if max(x.numel(), out, weight.numel()) >= INDEX_LIMIT:
        raise ValueError(f"the Triton path does not support tensors of {INDEX_LIMIT} or more elements (input "
                         f"{tuple(x.shape)}, output {out} elements): split the batch or use backend='torch'")
    return adder_conv(x, weight.to(x.dtype).contiguous(), None if bias is None else bias.to(x.dtype), padding)


@functools.lru_cache(maxsize=32)
@torch.inference_mode(False)
def _ka_padded(m: int, r: int, kind: str, device: torch.device) -> torch.Tensor:
    """KA in fp32, zero-padded to the output kernel's power-of-two block."""
    from .kernels._common import next_pow2

    _, ka = _kron(m, r, kind, torch.float64, torch.device("cpu"))
    n = tile_size(m, r)
    kap = torch.zeros(next_pow2(n * n), next_pow2(m * m), dtype=torch.float64)
    kap[: n * n, : m * m] = ka
    return kap.float().to(device)


@functools.lru_cache(maxsize=32)
def _input_spec(m: int, r: int, kind: str):
    """Bᵀ as the generated input-transform kernel takes it (both kinds share the standard Bᵀ)."""
    from .kernels.codegen import TileSpec

    at, _, bt = winograd_matrices_exact(m, r, normalize_points(m, r, None))
    return TileSpec.from_lists(m, r, at, bt)


def _winograd_adder_triton(x, u, bias, padding, m, r, kind):
    from .kernels.adder_output_transform import output_transform
    from .kernels.input_transform import input_transform
    from .kernels.winograd_adder import winograd_adder_domain

    nb, c, h, w_in = x.shape
    k = u.shape[0]
    n = tile_size(m, r)
    ho, wo, th, tw = _tiles(h, w_in, r, m, padding)
    check_index_range(x, k, c, m, r, padding)
    opd = _checks.operand_dtype(x.dtype)
    v = input_transform(x, _input_spec(m, r, kind), padding, (th, tw), opd)  # (P, C, T)
    u = u.detach().permute(2, 3, 1, 0).reshape(n * n, c, k).to(opd).contiguous()  # (P, C, K), cast once
    mm = winograd_adder_domain(v, u)  # (P, K, T) fp32
    y = _checks.empty_output(x, k, ho, wo)
    return output_transform(mm, _ka_padded(m, r, kind, x.device), None if bias is None else bias.to(x.dtype), y,
                            m, (th, tw))


# ------------------------------------------------------------------------------------------------
# public functions


def adder_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    padding: int | tuple[int, int] = 0,
    backend: str = "auto",
    *,
    p: float = 1.0,
) -> torch.Tensor:
    """AdderNet layer: ``Y[n,k,i,j] = -Σ_{c,u,v} |X[n,c,i+u-p_h,j+v-p_w] - W[k,c,u,v]|^p (+ bias[k])``.

    Stride 1, zero padding (padded zeros count as inputs, ``|0 - W|``), any kh×kw kernel.

    Args:
        x: input (N, C, H, W), float32/float16/bfloat16/float64, NCHW or channels_last.
        weight: filters (K, C, kh, kw); cast to ``x``'s dtype.
        bias: optional (K,).
        padding: int or (ph, pw) zero padding.
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` (see the module docstring).
        p: distance exponent in [1, 2]: 1 is the AdderNet layer; larger values are for the
            ℓ2→ℓ1 training schedule (torch path only).

    Returns:
        (N, K, H + 2ph - kh + 1, W + 2pw - kw + 1) in ``x``'s dtype and memory format. Gradients
        (torch path) follow AdderNet: ``X - W`` for the filters, ``HardTanh(W - X)`` for the inputs.

    Example:
        >>> x, w = torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3)
        >>> adder_conv2d(x, w, padding=1).shape
        torch.Size([1, 4, 8, 8])
    """
    pad, p = _check_common(x, weight, bias, padding, backend, p)
    kh, kw = weight.shape[2:]
    if x.shape[2] + 2 * pad[0] < kh or x.shape[3] + 2 * pad[1] < kw:
        raise ValueError(f"input {tuple(x.shape[2:])} with padding {pad} is smaller than the {kh}x{kw} kernel")
    if _resolve_backend(backend, x, p, weight, bias) == "torch":
        return _adder_torch(x, weight, bias, pad, p)
    return _adder_triton(x, weight, bias, pad)


def winograd_adder_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    padding: int | tuple[int, int] = 0,
    m: int = 2,
    backend: str = "auto",
    *,
    matrices: str = "balanced",
    p: float = 1.0,
    weight_domain: str = "spatial",
) -> torch.Tensor:
    """Winograd AdderNet layer F(m, r): per m×m output tile ``Aᵀ[-Σ_c |U - V|^p]A (+ bias)``.

    ``U = G W Gᵀ`` (or ``weight`` itself with ``weight_domain="winograd"``), ``V = Bᵀ X B`` over
    the tile's n×n input window (n = m + r − 1), with ``(AT, G, BT) = winograd_adder_matrices(m, r,
    matrices)``. The input is zero-padded by ``padding`` and then zero-extended at the
    bottom/right until whole tiles cover the output; outputs beyond it are cropped. This is a
    different layer from ``adder_conv2d`` (not an approximation of it). Operands U and V are
    rounded to the input's dtype for fp16/bf16 (as the kernels store them); transforms and sums
    run in fp32 (fp64 for fp64 inputs).

    Args:
        x: input (N, C, H, W), float32/float16/bfloat16/float64, NCHW or channels_last.
        weight: spatial filters W (K, C, r, r), odd r; or, with ``weight_domain="winograd"``, the
            Winograd-domain filters U (K, C, n, n), n = m + r − 1 (r odd). Cast to ``x``'s dtype.
        bias: optional (K,).
        padding: int or (ph, pw).
        m: output tile size (``matrices="balanced"`` needs m = 2, r = 3).
        backend: ``"auto"``, ``"triton"`` or ``"torch"``.
        matrices: ``"balanced"`` (default) or ``"standard"``.
        p: distance exponent in [1, 2] (1 = ℓ1; torch path only for p > 1).
        weight_domain: ``"spatial"`` (default: ``weight`` is W) or ``"winograd"`` (``weight`` is U).

    Example:
        >>> x, w = torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3)
        >>> winograd_adder_conv2d(x, w, padding=1).shape
        torch.Size([1, 4, 8, 8])
        >>> u = winograd_adder_weight(w)  # the same layer, its filters given in the Winograd domain
        >>> winograd_adder_conv2d(x, u, padding=1, weight_domain="winograd").shape
        torch.Size([1, 4, 8, 8])
    """
    pad, p = _check_common(x, weight, bias, padding, backend, p)
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"m must be a positive int, got {m!r}")
    r = _kernel_size(weight, m, weight_domain)
    _check_kind(matrices, m, r)
    _checks.output_size(x.shape[2], x.shape[3], r, pad)
    be = _resolve_backend(backend, x, p, weight, bias)
    u = _filters_u(weight, x.dtype, m, matrices, weight_domain)
    if be == "torch":
        return _winograd_adder_torch(x, u, bias, pad, m, r, matrices, p)
    return _winograd_adder_triton(x, u, bias, pad, m, r, matrices)


def _check_domain(domain: str) -> None:
    if domain not in WEIGHT_DOMAINS:
        raise ValueError(f"weight_domain must be one of {WEIGHT_DOMAINS}, got {domain!r}")


def _kernel_size(weight: torch.Tensor, m: int, domain: str) -> int:
    """The layer's odd kernel size r, from W (K, C, r, r) or from U (K, C, m + r − 1, m + r − 1)."""
    _check_domain(domain)
    _, _, side = _checks.check_weight(weight)
    if domain == "winograd":
        r = side - m + 1
        if r < 1 or r % 2 == 0:
            raise ValueError(f"a Winograd-domain weight of F({m}, r) is (K, C, n, n) with n = {m} + r - 1 for an odd "
                             f"r, got {side}x{side} (r = {r}); for F({m},3) it is {m + 2}x{m + 2}")
        return r
    if side % 2 == 0:  # check_weight takes even kernels (the convolution decomposes them); the adder does not
        raise ValueError(f"kernel size {side}x{side} is not supported: the Winograd adder needs an odd kernel")
    return side


# ------------------------------------------------------------------------------------------------
# modules


def l2_to_l1_p(progress: float, start: float = 0.0, end: float = 0.5) -> float:
    """Distance exponent of the ℓ2→ℓ1 schedule at ``progress`` ∈ [0, 1] of training.

    p = 2 until ``start``, then linear down to 1 at ``end``, then 1 (the schedule's shape is ours;
    the paper's exact schedule was not available).

    Example:
        >>> [l2_to_l1_p(t, 0.0, 0.5) for t in (0.0, 0.25, 0.5, 1.0)]
        [2.0, 1.5, 1.0, 1.0]
    """
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"need 0 <= start <= end <= 1, got start={start}, end={end}")
    if progress <= start:
        return 2.0
    if progress >= end:
        return 1.0
    return 2.0 - (progress - start) / (end - start)


def set_adder_p(model: nn.Module, p: float) -> int:
    """Set the distance exponent of every adder layer in ``model``; returns how many were set."""
    p = _check_p(p)
    count = 0
    for mod in model.modules():
        if isinstance(mod, AdderConv2d | WinogradAdderConv2d):
            mod.p = p
            count += 1
    return count


class _AdderBase(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, padding, bias, backend, eta, p, device, dtype):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        kh, kw = _checks.pair(kernel_size, "kernel_size")
        if kh < 1 or kw < 1:
            raise ValueError(f"kernel_size must be >= 1, got {(kh, kw)}")
        _checks.check_backend(backend)
        if eta is not None and not (isinstance(eta, int | float) and eta > 0):
            raise ValueError(f"eta must be a positive number or None, got {eta!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = (kh, kw)
        self.padding = _checks.check_padding(padding)
        self.backend = backend
        self.eta = eta
        self.p = _check_p(p)
        factory = {"device": device, "dtype": dtype}
        # AdderNet's initialisation ([code] huawei-noah/AdderNet): standard normal filters.
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kh, kw, **factory))
        self.bias = nn.Parameter(torch.zeros(out_channels, **factory)) if bias else None

    def _weight(self) -> torch.Tensor:
        if self.training and self.eta is not None and torch.is_grad_enabled() and self.weight.requires_grad:
            return adaptive_grad(self.weight, self.eta)
        return self.weight

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, padding={self.padding}, "
                f"bias={self.bias is not None}, eta={self.eta}, p={self.p}, backend={self.backend!r}")


class AdderConv2d(_AdderBase):
    """AdderNet layer (``adder_conv2d``) with AdderNet's training rules.

    Args:
        in_channels, out_channels, kernel_size: as ``nn.Conv2d`` (stride 1, no groups).
        padding: int or pair.
        bias: add a learnable bias (AdderNet follows these layers with BatchNorm, so default False).
        backend: ``"auto"`` / ``"triton"`` / ``"torch"``.
        eta: adaptive learning-rate coefficient: in training the filter gradient is rescaled to
            norm ``eta·sqrt(numel)``; ``None`` keeps the raw AdderNet gradient.
        p: distance exponent (1 = ℓ1); ``set_adder_p`` / ``l2_to_l1_p`` drive the ℓ2→ℓ1 schedule.

    Example:
        >>> layer = AdderConv2d(3, 8, 3, padding=1)
        >>> layer(torch.randn(2, 3, 10, 10)).shape
        torch.Size([2, 8, 10, 10])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int] = 3,
                 padding: int | tuple[int, int] = 0, bias: bool = False, backend: str = "auto",
                 eta: float | None = 0.2, p: float = 1.0, device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding, bias, backend, eta, p, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adder_conv2d(x, self._weight(), self.bias, self.padding, self.backend, p=self.p)


class WinogradAdderConv2d(_AdderBase):
    """Winograd AdderNet layer (``winograd_adder_conv2d``); the parameter is the spatial filter W
    (K, C, r, r), or with ``weight_domain="winograd"`` the Winograd-domain filter U (K, C, n, n).

    Args:
        in_channels, out_channels: channel counts.
        kernel_size: odd square kernel (3 for the balanced matrices).
        padding, bias, backend, eta, p: as ``AdderConv2d``.
        m: output tile size.
        matrices: ``"balanced"`` (default) or ``"standard"`` (``winograd_adder_matrices``).
        weight_domain: ``"spatial"`` (default) or ``"winograd"``: U is the parameter, initialised
            to ``G W₀ Gᵀ`` for AdderNet's N(0, 1) filters W₀ (so both start as the same layer);
            n²/r² more parameters, the same additions per image, and lower training loss
            (docs/adder.md).

    Example:
        >>> layer = WinogradAdderConv2d(3, 8, padding=1)
        >>> layer(torch.randn(2, 3, 10, 10)).shape
        torch.Size([2, 8, 10, 10])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 padding: int | tuple[int, int] = 0, bias: bool = False, m: int = 2,
                 matrices: str = "balanced", backend: str = "auto", eta: float | None = 0.2,
                 p: float = 1.0, weight_domain: str = "spatial", device=None, dtype=None) -> None:
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 \
                or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd int for the Winograd layer, got {kernel_size!r}")
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"m must be a positive int, got {m!r}")
        _check_kind(matrices, m, kernel_size)
        _check_domain(weight_domain)
        super().__init__(in_channels, out_channels, kernel_size, padding, bias, backend, eta, p, device, dtype)
        self.m = m
        self.matrices = matrices
        self.weight_domain = weight_domain
        if weight_domain == "winograd":
            with torch.no_grad():  # U in float64 from the spatial initialisation, then cast
                u = winograd_adder_weight(self.weight, m, matrices).to(self.weight.dtype)
            self.weight = nn.Parameter(u)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return winograd_adder_conv2d(x, self._weight(), self.bias, self.padding, self.m, self.backend,
                                     matrices=self.matrices, p=self.p, weight_domain=self.weight_domain)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m}, matrices={self.matrices!r}, weight_domain={self.weight_domain!r}"
