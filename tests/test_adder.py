"""AdderNet and Winograd AdderNet layers (tritonwino.adder) against their exact formulas in float64.

Oracles are the literal formulas, written independently of the library's torch path: the AdderNet
sum over unfolded windows, and the Winograd AdderNet tile by tile (pad, zero-extend to whole
tiles, ``Aᵀ[-Σ_c |G W Gᵀ - Bᵀ X B|^p]A`` per tile, crop).

Tolerance: the rule of tests/_tolerance.py (the Triton path's error is at most twice the torch
path's error plus one output ulp at the output's scale), plus a per-dtype relative bound on both
paths (``REL_BOUND`` below: 4-6x the largest relative errors measured over these tests with three
seeds: fp64 3.3e-16, fp32 3.7e-7, fp16 7.7e-4, bf16 9.7e-3). The bf16 maximum comes from the
Triton interpreter, which converts fp32 to bf16 by truncation (torch and GPUs round to nearest),
so interpreted bf16 kernels show up to twice the torch path's rounding error.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from tritonwino.adder import (
    AdderConv2d,
    WinogradAdderConv2d,
    adder_conv2d,
    l2_to_l1_p,
    set_adder_p,
    winograd_adder_conv2d,
    winograd_adder_matrices,
    winograd_adder_weight,
)

from ._io import reloaded
from ._tolerance import max_err, ulp

REL_BOUND = {torch.float64: 2e-15, torch.float32: 2e-6, torch.float16: 3e-3, torch.bfloat16: 4e-2}
TRITON_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ALL_DTYPES = [torch.float64, *TRITON_DTYPES]
dt_id = lambda d: str(d).split(".")[1]  # noqa: E731


# ------------------------------------------------------------------------------------------------
# oracles


def oracle_adder(x, w, b, pad, p=1.0):
    ph, pw = (pad, pad) if isinstance(pad, int) else pad
    xd = F.pad(x.double(), (pw, pw, ph, ph))
    kh, kw = w.shape[2:]
    win = xd.unfold(2, kh, 1).unfold(3, kw, 1)  # (N, C, HO, WO, kh, kw)
    y = -(win[:, None] - w.double()[None, :, :, None, None]).abs().pow(p).sum(dim=(2, 5, 6))
    return y if b is None else y + b.double()[None, :, None, None]


def oracle_winograd_adder(x, w, b, pad, m, kind, p=1.0, domain="spatial"):
    """``domain="winograd"``: ``w`` is U (K, C, n, n) itself."""
    ph, pw = (pad, pad) if isinstance(pad, int) else pad
    r = w.shape[-1] - m + 1 if domain == "winograd" else w.shape[-1]
    at, g, bt = winograd_adder_matrices(m, r, kind)
    mm, n = at.shape
    nb, c, h, wd = x.shape
    ho, wo = h + 2 * ph - r + 1, wd + 2 * pw - r + 1
    th, tw = -(-ho // m), -(-wo // m)
    xp = torch.zeros(nb, c, th * m + r - 1, tw * m + r - 1, dtype=torch.float64)
    xp[:, :, ph:ph + h, pw:pw + wd] = x.double()
    u = w.double() if domain == "winograd" else g @ w.double() @ g.T  # (K, C, n, n)
    y = torch.zeros(nb, w.shape[0], th * m, tw * m, dtype=torch.float64)
    for i in range(th):
        for j in range(tw):
            v = bt @ xp[:, :, i * m:i * m + n, j * m:j * m + n] @ bt.T  # (N, C, n, n)
            mdom = -(u[None] - v[:, None]).abs().pow(p).sum(dim=2)  # (N, K, n, n)
            y[:, :, i * m:(i + 1) * m, j * m:(j + 1) * m] = at @ mdom @ at.T
    y = y[:, :, :ho, :wo]
    return y if b is None else y + b.double()[None, :, None, None]


def check(y, y_ref, oracle):
    """y_ref is the torch path's result (None when y is the torch path)."""
    assert y.shape == oracle.shape
    scale = float(oracle.abs().max())
    err = max_err(y, oracle)
    if y_ref is not None:
        err_ref = max_err(y_ref, oracle)
        atol = ulp(y.dtype) * max(scale, 1.0)
        assert err <= 2 * err_ref + atol, f"triton err {err:.3e} > 2 x torch err {err_ref:.3e} + {atol:.1e}"
    assert err / scale <= REL_BOUND[y.dtype], f"relative error {err / scale:.3e} > {REL_BOUND[y.dtype]}"


def make(n, c, k, h, w, r, dtype, device, bias=True, rw=None, channels_last=False):
    rw = r if rw is None else rw
    x = torch.randn(n, c, h, w, device=device).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    wt = torch.randn(k, c, r, rw, device=device).to(dtype)
    b = torch.randn(k, device=device).to(dtype) if bias else None
    return x, wt, b


def make_u(k, c, n, dtype, device):
    """U anywhere in R^(n×n), not only in the image of W ↦ G W Gᵀ (which has r² < n² dimensions)."""
    return torch.randn(k, c, n, n, device=device).to(dtype)


# (N, C, K, H, W, kh, kw, padding, bias): odd sizes, partial blocks, rectangular kernels and padding.
ADDER_SHAPES = [
    (2, 3, 5, 7, 9, 3, 3, 1, True),
    (1, 4, 3, 6, 5, 1, 1, 0, False),
    (1, 2, 6, 8, 7, 3, 5, (1, 2), True),
    (3, 5, 2, 5, 5, 5, 5, 2, False),
]
shape_id = lambda s: "x".join(map(str, s[:5])) + f"k{s[5]}{s[6]}p{s[7]}b{int(s[8])}"  # noqa: E731

# (N, C, K, H, W, padding, bias) for 3x3 Winograd: partial tiles, input smaller than a tile.
WINO_SHAPES = [
    (2, 3, 5, 7, 9, 1, True),
    (1, 4, 3, 4, 3, 0, False),
    (1, 6, 7, 10, 5, (1, 0), True),
]
wshape_id = lambda s: "x".join(map(str, s[:5])) + f"p{s[5]}b{int(s[6])}"  # noqa: E731


# ------------------------------------------------------------------------------------------------
# matrices


@pytest.mark.parametrize("kind,m", [("balanced", 2), ("standard", 2), ("standard", 4)])
def test_matrices_are_exact_winograd_triples(kind, m):
    at, g, bt = winograd_adder_matrices(m, 3, kind)
    n = m + 2
    assert at.shape == (m, n) and g.shape == (n, 3) and bt.shape == (n, n) and at.dtype == torch.float64
    x = torch.randn(5, 7, n, n, dtype=torch.float64)
    w = torch.randn(5, 7, 3, 3, dtype=torch.float64)
    y = at @ ((g @ w @ g.T) * (bt @ x @ bt.T)) @ at.T
    ref = torch.stack([F.conv2d(x[i:i + 1], w[i:i + 1, None].transpose(0, 1).reshape(7, 1, 3, 3), groups=7)[0]
                       for i in range(5)])
    assert (y - ref).abs().max() < 1e-12


def test_balanced_matrices_structure():
    at, g, bt = winograd_adder_matrices(2)
    at_s, g_s, bt_s = winograd_adder_matrices(2, kind="standard")
    assert at.sum(dim=1).tolist() == [1.0, 1.0]
    assert at_s.sum(dim=1).tolist() == [3.0, 1.0]
    for mat in (at, bt):  # the two transforms on the data path need additions only
        assert set(mat.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.equal(bt, bt_s)
    # every output of a tile is a sum of five +|.| and four -|.| terms
    for i in range(2):
        for j in range(2):
            coef = torch.outer(at[i], at[j])
            assert int((coef > 0).sum()) == 5 and int((coef < 0).sum()) == 4
    at[0, 0] = 42.0  # a copy: the library's cached matrices are untouched
    assert winograd_adder_matrices(2)[0][0, 0] == -1.0


def test_balanced_matrices_equalise_expected_tile_outputs():
    """[derived] With i.i.d. N(0,1) inputs and filters, the mean of each of the m² outputs of a
    tile is proportional to the product of Aᵀ's row sums: 9:3:3:1 for the standard matrices,
    equal for the balanced ones."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4000, 8, 4, 4, dtype=torch.float64, generator=gen)
    w = torch.randn(4000, 8, 3, 3, dtype=torch.float64, generator=gen)
    means = {}
    for kind in ("standard", "balanced"):
        at, g, bt = winograd_adder_matrices(2, 3, kind)
        mdom = -((g @ w @ g.T) - (bt @ x @ bt.T)).abs().sum(dim=1)
        means[kind] = (at @ mdom @ at.T).mean(dim=0).flatten()
    std, bal = means["standard"], means["balanced"]
    assert (std < 0).all() and std.max() / std.min() < 0.2  # (1,1) has under a fifth of (0,0)'s mean
    assert (bal < 0).all() and (bal.max() - bal.min()) / bal.abs().mean() < 0.15


def test_matrices_bad_arguments():
    with pytest.raises(ValueError, match="kind must be one of"):
        winograd_adder_matrices(2, 3, "paper")
    with pytest.raises(ValueError, match="F\\(2,3\\) only"):
        winograd_adder_matrices(4)
    with pytest.raises(ValueError, match="F\\(2,3\\) only"):
        winograd_adder_matrices(2, 5)


# ------------------------------------------------------------------------------------------------
# forward: torch path


@pytest.mark.parametrize("shape", ADDER_SHAPES, ids=shape_id)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dt_id)
def test_adder_torch_matches_formula(shape, dtype, device):
    n, c, k, h, w, kh, kw, pad, bias = shape
    x, wt, b = make(n, c, k, h, w, kh, dtype, device, bias, kw)
    y = adder_conv2d(x, wt, b, pad, backend="torch")
    assert y.dtype == dtype
    check(y, None, oracle_adder(x.cpu(), wt.cpu(), None if b is None else b.cpu(), pad).to(y.device))


@pytest.mark.parametrize("shape", WINO_SHAPES, ids=wshape_id)
@pytest.mark.parametrize("kind,m", [("balanced", 2), ("standard", 2), ("standard", 4)])
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dt_id)
@pytest.mark.parametrize("domain", ["spatial", "winograd"])
def test_winograd_adder_torch_matches_formula(shape, kind, m, dtype, domain, device):
    n, c, k, h, w, pad, bias = shape
    x, wt, b = make(n, c, k, h, w, 3, dtype, device, bias)
    if domain == "winograd":  # U as the parameter: (K, C, n, n)
        wt = make_u(k, c, m + 2, dtype, device)
    y = winograd_adder_conv2d(x, wt, b, pad, m, backend="torch", matrices=kind, weight_domain=domain)
    assert y.dtype == dtype
    oracle = oracle_winograd_adder(x.cpu(), wt.cpu(), None if b is None else b.cpu(), pad, m, kind, domain=domain)
    check(y, None, oracle.to(y.device))


@pytest.mark.parametrize("p", [2.0, 1.5])
def test_distance_exponent_matches_formula(p, device):
    x, wt, b = make(2, 3, 4, 6, 7, 3, torch.float64, device)
    check(adder_conv2d(x, wt, b, 1, backend="torch", p=p), None, oracle_adder(x, wt, b, 1, p))
    y = winograd_adder_conv2d(x, wt, b, 1, backend="torch", p=p)
    check(y, None, oracle_winograd_adder(x, wt, b, 1, 2, "balanced", p))
    # more rows than one block of the general-p forward (blocks of 2**18 elements)
    x, wt, b = make(1, 3, 4, 60, 50, 3, torch.float64, device)
    check(adder_conv2d(x, wt, b, 1, backend="torch", p=p), None, oracle_adder(x, wt, b, 1, p))


def test_l2_form_is_twice_the_convolution_plus_input_and_weight_terms():
    """[derived] With an exact Winograd triple, Aᵀ[-(U - V)²]A = 2 conv(X, W) - Aᵀ[V²]A - Aᵀ[U²]A."""
    x, wt, _ = make(1, 3, 4, 8, 8, 3, torch.float64, "cpu", bias=False)
    y2 = winograd_adder_conv2d(x, wt, None, 0, backend="torch", p=2.0)
    zero_w = torch.zeros_like(wt)
    input_term = winograd_adder_conv2d(x, zero_w, None, 0, backend="torch", p=2.0)          # -Aᵀ[ΣV²]A
    weight_term = winograd_adder_conv2d(torch.zeros_like(x), wt, None, 0, backend="torch", p=2.0)  # -Aᵀ[ΣU²]A
    conv = F.conv2d(x, wt)
    assert (y2 - (2 * conv + input_term + weight_term)).abs().max() < 1e-10


def test_padding_counts_as_zero_inputs(device):
    # AdderNet pads with zeros that enter the distance as |0 - w| (not skipped).
    x = torch.zeros(1, 1, 1, 1, device=device, dtype=torch.float64)
    w = torch.full((1, 1, 3, 3), 2.0, device=device, dtype=torch.float64)
    assert float(adder_conv2d(x, w, None, 1, backend="torch")) == -18.0


# ------------------------------------------------------------------------------------------------
# forward: Triton kernels


@pytest.mark.kernels
@pytest.mark.parametrize("shape", ADDER_SHAPES, ids=shape_id)
@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=dt_id)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_adder_triton_matches_formula(shape, dtype, channels_last, device):
    n, c, k, h, w, kh, kw, pad, bias = shape
    x, wt, b = make(n, c, k, h, w, kh, dtype, device, bias, kw, channels_last)
    y = adder_conv2d(x, wt, b, pad, backend="triton")
    y_torch = adder_conv2d(x, wt, b, pad, backend="torch")
    assert y.dtype == dtype
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert y_torch.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    oracle = oracle_adder(x.cpu(), wt.cpu(), None if b is None else b.cpu(), pad).to(y.device)
    check(y, y_torch, oracle)


@pytest.mark.kernels
@pytest.mark.parametrize("shape", WINO_SHAPES, ids=wshape_id)
@pytest.mark.parametrize("kind,m", [("balanced", 2), ("standard", 2), ("standard", 4)])
@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=dt_id)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_winograd_adder_triton_matches_formula(shape, kind, m, dtype, channels_last, device):
    n, c, k, h, w, pad, bias = shape
    x, wt, b = make(n, c, k, h, w, 3, dtype, device, bias, channels_last=channels_last)
    y = winograd_adder_conv2d(x, wt, b, pad, m, backend="triton", matrices=kind)
    y_torch = winograd_adder_conv2d(x, wt, b, pad, m, backend="torch", matrices=kind)
    assert y.dtype == dtype
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    oracle = oracle_winograd_adder(x.cpu(), wt.cpu(), None if b is None else b.cpu(), pad, m, kind).to(y.device)
    check(y, y_torch, oracle)


@pytest.mark.kernels
def test_triton_larger_channel_counts(device):
    # More channels than one BLOCK_C chunk and output channels over several K blocks.
    x, wt, b = make(1, 37, 70, 6, 5, 3, torch.float32, device)
    check(adder_conv2d(x, wt, b, 1, backend="triton"), adder_conv2d(x, wt, b, 1, backend="torch"),
          oracle_adder(x.cpu(), wt.cpu(), b.cpu(), 1).to(x.device))
    y = winograd_adder_conv2d(x, wt, b, 1, backend="triton")
    check(y, winograd_adder_conv2d(x, wt, b, 1, backend="torch"),
          oracle_winograd_adder(x.cpu(), wt.cpu(), b.cpu(), 1, 2, "balanced").to(x.device))


@pytest.mark.kernels
def test_kernel_launchers_validate():
    from tritonwino.kernels.adder_conv import adder_conv
    from tritonwino.kernels.winograd_adder import winograd_adder_domain

    x = torch.randn(1, 3, 5, 5)
    with pytest.raises(ValueError, match="weight must be contiguous"):
        adder_conv(x, torch.randn(2, 4, 3, 3), None, (0, 0))
    with pytest.raises(ValueError, match="smaller than the 3x3 kernel"):
        adder_conv(torch.randn(1, 3, 2, 2), torch.randn(2, 3, 3, 3), None, (0, 0))
    with pytest.raises(ValueError, match="same P and C"):
        winograd_adder_domain(torch.randn(16, 3, 4), torch.randn(16, 2, 5))
    with pytest.raises(ValueError, match="one dtype"):
        winograd_adder_domain(torch.randn(16, 3, 4), torch.randn(16, 3, 5).half())
    empty = winograd_adder_domain(torch.randn(16, 0, 4), torch.randn(16, 0, 5))
    assert empty.shape == (16, 5, 4) and not empty.any()


# ------------------------------------------------------------------------------------------------
# backends and errors


def test_auto_backend_on_cpu_is_the_torch_path():
    x, wt, b = make(1, 3, 4, 6, 6, 3, torch.float32, "cpu")
    assert torch.equal(adder_conv2d(x, wt, b, 1), adder_conv2d(x, wt, b, 1, backend="torch"))
    assert torch.equal(winograd_adder_conv2d(x, wt, b, 1), winograd_adder_conv2d(x, wt, b, 1, backend="torch"))


@pytest.mark.kernels
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_empty_batch(backend, device):
    x, wt, b = make(0, 3, 4, 6, 6, 3, torch.float32, device)
    assert adder_conv2d(x, wt, b, 1, backend=backend).shape == (0, 4, 6, 6)
    assert winograd_adder_conv2d(x, wt, b, 1, backend=backend).shape == (0, 4, 6, 6)


def test_bad_input_gives_clear_errors():
    x, wt, b = make(1, 3, 4, 6, 6, 3, torch.float32, "cpu")
    cases = [
        (lambda: adder_conv2d(x, wt[:, :2]), ValueError, "x has 3 channels"),
        (lambda: adder_conv2d(x[0], wt), ValueError, "x must be 4-D"),
        (lambda: adder_conv2d(x.int(), wt), TypeError, "dtype torch.int32"),
        (lambda: adder_conv2d(x, wt, torch.zeros(3)), ValueError, "bias must have shape"),
        (lambda: adder_conv2d(x, wt, padding=-1), ValueError, "padding must be >= 0"),
        (lambda: adder_conv2d(x, wt, padding="same"), ValueError, "string padding"),
        (lambda: adder_conv2d(x[:, :, :2, :2], wt), ValueError, "smaller than the 3x3 kernel"),
        (lambda: adder_conv2d(x, wt, backend="cuda"), ValueError, "backend must be one of"),
        (lambda: adder_conv2d(x, wt, p=3), ValueError, "must be a number in \\[1, 2\\]"),
        (lambda: adder_conv2d(x, "w"), TypeError, "weight must be a torch.Tensor"),
        (lambda: adder_conv2d(x, wt, p=1.5, backend="triton"), ValueError, "ℓ1 layer only"),
        (lambda: adder_conv2d(x.double(), wt.double(), backend="triton"), TypeError, "use backend='torch' for float64"),
        (lambda: winograd_adder_conv2d(x, wt[:, :, :2, :2]), ValueError, "kernel size 2x2"),
        (lambda: winograd_adder_conv2d(x, wt, m=4), ValueError, "F\\(2,3\\) only"),
        (lambda: winograd_adder_conv2d(x, wt, matrices="new"), ValueError, "matrices must be one of"),
        (lambda: winograd_adder_conv2d(x, wt, m=0), ValueError, "m must be a positive int"),
        (lambda: winograd_adder_conv2d(x[:, :, :1], wt), ValueError, "smaller than the 3x3 kernel"),
        (lambda: winograd_adder_conv2d(x, wt, weight_domain="wino"), ValueError, "weight_domain must be one of"),
        # a 3x3 weight read as U of F(2, r) means r = 2: refused, naming the expected 4x4
        (lambda: winograd_adder_conv2d(x, wt, weight_domain="winograd"), ValueError, "for F\\(2,3\\) it is 4x4"),
        (lambda: winograd_adder_conv2d(x, torch.randn(4, 3, 4, 5), weight_domain="winograd"), ValueError,
         "square kernel"),
    ]
    for fn, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            fn()


def test_triton_refuses_to_train():
    x, wt, _ = make(1, 3, 4, 6, 6, 3, torch.float32, "cpu", bias=False)
    wt.requires_grad_()
    with pytest.raises(RuntimeError, match="inference-only"):
        adder_conv2d(x, wt, backend="triton")
    with pytest.raises(RuntimeError, match="inference-only"):
        winograd_adder_conv2d(x, wt, backend="triton")


# ------------------------------------------------------------------------------------------------
# gradients


def test_adder_gradients_follow_addernet_rules():
    x, wt, _ = make(2, 3, 4, 6, 5, 3, torch.float64, "cpu", bias=False)
    x.requires_grad_()
    wt.requires_grad_()
    y = adder_conv2d(x, wt, None, 1, backend="torch")
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, wt), g)
    # hand formula: windows (N, C·9, L); filter grad Σ (X - W) g; input grad Σ_k HardTanh(W - X) g, folded
    cols = F.unfold(x.detach(), 3, padding=1)  # (N, E, L)
    wf = wt.detach().reshape(4, -1)  # (K, E)
    gl = g.reshape(2, 4, -1)  # (N, K, L)
    gw_ref = ((cols[:, None] - wf[None, :, :, None]) * gl[:, :, None]).sum(dim=(0, 3)).reshape_as(wt)
    gcols = ((wf[None, :, :, None] - cols[:, None]).clamp(-1, 1) * gl[:, :, None]).sum(dim=1)
    gx_ref = F.fold(gcols, (6, 5), 3, padding=1)
    assert (gw - gw_ref).abs().max() < 1e-10
    assert (gx - gx_ref).abs().max() < 1e-10
    assert not torch.allclose(gw, torch.autograd.grad(oracle_adder(x, wt, None, 1), wt, g)[0])  # not sign()


@pytest.mark.parametrize("kind", ["balanced", "standard"])
@pytest.mark.parametrize("domain", ["spatial", "winograd"])
def test_winograd_adder_gradients_follow_addernet_rules(kind, domain):
    m, r, n = 2, 3, 4
    nb, c, k, h, w, pad = 2, 3, 4, 5, 6, 1
    x, wt, _ = make(nb, c, k, h, w, r, torch.float64, "cpu", bias=False)
    if domain == "winograd":  # U itself is the parameter, anywhere in R^(n×n)
        wt = make_u(k, c, n, torch.float64, "cpu")
    x.requires_grad_()
    wt.requires_grad_()
    y = winograd_adder_conv2d(x, wt, None, pad, m, backend="torch", matrices=kind, weight_domain=domain)
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, wt), g)
    # hand formula, tile by tile: dM = A g Aᵀ; dU = Σ (V - U) dM; dV = Σ_k HardTanh(U - V) dM;
    # dW = Gᵀ dU G (U the parameter: dU itself); dX_tile = B dV Bᵀ, accumulated over overlapping
    # tiles, cropped to the input.
    at, gm, bt = winograd_adder_matrices(m, r, kind)
    th, tw = -(-h // m), -(-w // m)
    xp = torch.zeros(nb, c, th * m + 2, tw * m + 2, dtype=torch.float64)
    xp[:, :, pad:pad + h, pad:pad + w] = x.detach()
    gp = torch.zeros(nb, k, th * m, tw * m, dtype=torch.float64)
    gp[:, :, :h, :w] = g
    u = wt.detach() if domain == "winograd" else gm @ wt.detach() @ gm.T
    du = torch.zeros_like(u)
    dxp = torch.zeros_like(xp)
    for i in range(th):
        for j in range(tw):
            v = bt @ xp[:, :, i * m:i * m + n, j * m:j * m + n] @ bt.T  # (N, C, n, n)
            dm = at.T @ gp[:, :, i * m:(i + 1) * m, j * m:(j + 1) * m] @ at  # (N, K, n, n)
            du += ((v[:, None] - u[None]) * dm[:, :, None]).sum(dim=0)
            dv = ((u[None] - v[:, None]).clamp(-1, 1) * dm[:, :, None]).sum(dim=1)
            dxp[:, :, i * m:i * m + n, j * m:j * m + n] += bt.T @ dv @ bt
    gw_ref = du if domain == "winograd" else gm.T @ du @ gm
    gx_ref = dxp[:, :, pad:pad + h, pad:pad + w]
    assert (gw - gw_ref).abs().max() < 1e-10
    assert (gx - gx_ref).abs().max() < 1e-10


def test_gradients_are_the_same_rules_for_every_p():
    x, wt, _ = make(1, 2, 3, 5, 5, 3, torch.float64, "cpu", bias=False)
    wt.requires_grad_()
    grads = []
    for p in (1.0, 1.5, 2.0):
        y = adder_conv2d(x, wt, None, 1, backend="torch", p=p)
        grads.append(torch.autograd.grad(y, wt, torch.ones_like(y))[0])
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0], grads[2])


@pytest.mark.parametrize("cls", [AdderConv2d, WinogradAdderConv2d])
def test_module_adaptive_learning_rate(cls):
    torch.manual_seed(3)
    layer = cls(3, 4, 3, padding=1, eta=0.2, dtype=torch.float64)
    raw = cls(3, 4, 3, padding=1, eta=None, dtype=torch.float64)
    raw.load_state_dict(layer.state_dict())
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    for mod in (layer, raw):
        (mod(x) * torch.linspace(-1, 1, 36, dtype=torch.float64).reshape(6, 6)).sum().backward()
    g, g_raw = layer.weight.grad, raw.weight.grad
    # ‖ΔW‖ = eta·sqrt(k), same direction as the raw AdderNet gradient
    assert abs(float(g.norm()) - 0.2 * (4 * 3 * 9) ** 0.5) < 1e-9
    assert torch.allclose(g, g_raw * (g.norm() / g_raw.norm()), atol=1e-12)
    layer.eval()  # no scaling outside training
    assert torch.equal(layer(x), raw(x))


@pytest.mark.parametrize("cls", [AdderConv2d, WinogradAdderConv2d])
def test_module_state_dict_round_trip(cls):
    layer = cls(3, 5, 3, padding=1, bias=True)
    with torch.no_grad():
        layer.bias.normal_()
    saved = reloaded(layer.state_dict())
    torch.manual_seed(123)
    fresh = cls(3, 5, 3, padding=1, bias=True)
    assert not torch.equal(fresh.weight, layer.weight)
    fresh.load_state_dict(saved)
    x = torch.randn(2, 3, 7, 7)
    assert torch.equal(fresh(x), layer(x))
    assert set(layer.state_dict()) == {"weight", "bias"}


def test_modules_match_functional_and_repr():
    x = torch.randn(2, 3, 7, 7)
    a = AdderConv2d(3, 4, 3, padding=1)
    wa = WinogradAdderConv2d(3, 4, padding=1, matrices="standard")
    assert torch.equal(a(x), adder_conv2d(x, a.weight, None, 1))
    assert torch.equal(wa(x), winograd_adder_conv2d(x, wa.weight, None, 1, matrices="standard"))
    assert "matrices='standard'" in repr(wa) and "eta=0.2" in repr(a)
    with pytest.raises(ValueError, match="odd int"):
        WinogradAdderConv2d(3, 4, kernel_size=2)
    with pytest.raises(ValueError, match="F\\(2,3\\) only"):
        WinogradAdderConv2d(3, 4, m=4)
    with pytest.raises(ValueError, match="eta must be"):
        AdderConv2d(3, 4, eta=-1)
    with pytest.raises(ValueError, match="in_channels"):
        AdderConv2d(0, 4)


def test_l2_to_l1_schedule():
    assert [l2_to_l1_p(t, 0.2, 0.6) for t in (0.0, 0.2, 0.4, 0.6, 0.9)] == pytest.approx([2, 2, 1.5, 1, 1])
    with pytest.raises(ValueError, match="start <= end"):
        l2_to_l1_p(0.5, 0.7, 0.3)
    model = torch.nn.Sequential(AdderConv2d(1, 2), torch.nn.ReLU(), WinogradAdderConv2d(2, 2))
    assert set_adder_p(model, 1.25) == 2
    assert model[0].p == 1.25 and model[2].p == 1.25
    with pytest.raises(ValueError):
        set_adder_p(model, 0.5)


# ------------------------------------------------------------------------------------------------
# experiment helpers and layering


def test_count_ops_by_hand():
    from tritonwino.experiments.adder import count_ops, make_model, tile_imbalance

    ops = {name: count_ops(make_model(name, (4, 6, 8)), (1, 28, 28))
           for name in ("cnn", "addernet", "wino-balanced", "wino-standard")}
    conv1 = 4 * 9 * 28 * 28
    fc = 8 * 3 * 3 * 10
    l2, l3 = 6 * 4 * 9 * 14 * 14, 8 * 6 * 9 * 7 * 7
    assert ops["cnn"] == {"mults": conv1 + l2 + l3 + fc, "adds": conv1 + l2 + l3 + fc}
    bn = 6 * 14 * 14 + 8 * 7 * 7
    assert ops["addernet"] == {"mults": conv1 + fc + bn, "adds": conv1 + fc + bn + 2 * (l2 + l3)}
    # F(2,3): Bᵀ rows have 2 nonzeros (1 add each, 4 per vector), Aᵀ rows 3 (2 adds each, 4 per vector)
    tiles2, tiles3 = 7 * 7, 4 * 4
    wino = tiles2 * (4 * 8 * 4 + 2 * 6 * 4 * 16 + 6 * 6 * 4) + tiles3 * (6 * 8 * 4 + 2 * 8 * 6 * 16 + 8 * 6 * 4)
    assert ops["wino-balanced"] == ops["wino-standard"] == {"mults": conv1 + fc + bn, "adds": conv1 + fc + bn + wino}
    x = torch.randn(8, 1, 28, 28)
    assert tile_imbalance(make_model("cnn", (4, 6, 8)), x) is None
    assert tile_imbalance(make_model("wino-balanced", (4, 6, 8)), x) >= 0.0


@pytest.mark.slow
def test_experiment_runs_and_resumes(tmp_path, monkeypatch):
    import dataclasses

    import tritonwino.experiments.adder as adder_exp
    from tritonwino.experiments.adder import Settings, run_experiment, write_outputs
    from tritonwino.experiments.data import fashion_mnist_available

    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    s = Settings(epochs=1, batch_size=64, widths=(4, 4, 4), train_limit=256, test_limit=128)
    rows = run_experiment(tmp_path, ["cnn", "wino-balanced-l2l1"], s, progress=False)
    assert [r["variant"] for r in rows] == ["cnn", "wino-balanced-l2l1"]
    assert all(0 <= r["test_acc"] <= 100 and r["history"] for r in rows)
    again = run_experiment(tmp_path, ["cnn", "wino-balanced-l2l1"], s, progress=False)  # all skipped
    assert again == rows
    # a stem with a dot keeps its whole name (with_suffix made adder0.5 -> adder0.md and crashed)
    files = write_outputs(rows, tmp_path / "out" / "adder0.5", s)
    assert all(f.exists() and f.stat().st_size > 0 for f in files)
    assert "wino-balanced-l2l1" in (tmp_path / "out" / "adder0.5.md").read_text()
    assert (tmp_path / "out" / "adder0.5.png").exists()
    # the Winograd-domain-filter variant trains and its rows say what its parameter is and costs
    rows_u = run_experiment(tmp_path, ["cnn", "wino-balanced", "wino-balanced-u"], s, progress=False)
    write_outputs(rows_u, tmp_path / "out" / "u", s)
    import csv

    table = {r["variant"]: r for r in csv.DictReader((tmp_path / "out" / "u.csv").open())}
    assert table["wino-balanced-u"]["filters"] == "U (winograd)" and table["wino-balanced"]["filters"] == "W (spatial)"
    # two 4x4 layers of 4x4 U (16 numbers) instead of 3x3 W (9): 2 * 16 * (16 - 9) more parameters
    assert int(table["wino-balanced-u"]["params"]) - int(table["wino-balanced"]["params"]) == 2 * 16 * 7
    assert table["wino-balanced-u"]["adds_per_image"] == table["wino-balanced"]["adds_per_image"]
    # another ℓ2→ℓ1 schedule retrains only the ℓ2→ℓ1 variant; the CNN's finished run stays valid
    step = dataclasses.replace(s, l2_to_l1_schedule="step")
    trained = []
    real = adder_exp.train_variant
    monkeypatch.setattr(adder_exp, "train_variant", lambda v, *a, **k: trained.append(v.name) or real(v, *a, **k))
    rows_step = run_experiment(tmp_path, ["cnn", "wino-balanced-l2l1"], step, progress=False)
    assert trained == ["wino-balanced-l2l1"]
    assert rows_step[0] == rows[0]


def test_l2_to_l1_schedules():
    from tritonwino.experiments.adder import Settings, schedule_p

    lin, step = Settings(l2_to_l1_end=0.5), Settings(l2_to_l1_end=0.5, l2_to_l1_schedule="step")
    assert [schedule_p(t, lin) for t in (0.0, 0.25, 0.5, 0.9)] == [2.0, 1.5, 1.0, 1.0]
    assert [schedule_p(t, step) for t in (0.0, 0.25, 0.5, 0.51, 0.9)] == [2.0, 2.0, 2.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="l2_to_l1_schedule must be one of"):
        schedule_p(0.1, Settings(l2_to_l1_schedule="cosine"))


def test_core_does_not_import_adder():
    code = "import sys, tritonwino.sparse_conv; print('tritonwino.adder' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cpu_backend_is_refused_with_the_alternative():
    """backend='cpu' names the convolution's C++ kernels, which the adder layers do not have."""
    x, wt, b = make(1, 3, 4, 6, 6, 3, torch.float32, "cpu")
    with pytest.raises(ValueError, match="no C\\+\\+ CPU kernel"):
        adder_conv2d(x, wt, b, 1, backend="cpu")
    with pytest.raises(ValueError, match="no C\\+\\+ CPU kernel"):
        winograd_adder_conv2d(x, wt, b, 1, backend="cpu")


@pytest.mark.slow
def test_a_checkpoint_of_other_settings_is_never_resumed(tmp_path):
    # regression: a 2-epoch checkpoint in the work directory was "resumed" by a 1-epoch run with
    # another eta, which then reported the old run's history as its own
    import dataclasses

    from tritonwino.experiments.adder import VARIANTS, Settings, train_variant
    from tritonwino.experiments.data import fashion_mnist_available, load_dataset

    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    tr, te, _ = load_dataset("fashion-mnist", train_limit=128, test_limit=64)
    data = (*tr.tensors, *te.tensors)
    ckpt = tmp_path / "wino-balanced.pt"
    s2 = Settings(epochs=2, batch_size=64, widths=(4, 4, 4), train_limit=128, test_limit=64)
    first = train_variant(VARIANTS["wino-balanced"], data, s2, ckpt, progress=False)
    assert [h["epoch"] for h in first["history"]] == [1, 2]
    again = train_variant(VARIANTS["wino-balanced"], data, s2, ckpt, progress=False)  # same settings: resumed
    assert again["history"] == first["history"]
    other = train_variant(VARIANTS["wino-balanced"], data, dataclasses.replace(s2, epochs=1, eta=0.5), ckpt,
                          progress=False)
    assert [h["epoch"] for h in other["history"]] == [1]


# ------------------------------------------------------------------------------------------------
# Winograd-domain filters (weight_domain="winograd": U is the parameter)


@pytest.mark.kernels
@pytest.mark.parametrize("shape", WINO_SHAPES[:2], ids=wshape_id)
@pytest.mark.parametrize("kind,m", [("balanced", 2), ("standard", 4)])
@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=dt_id)
def test_winograd_domain_filters_triton_match_formula(shape, kind, m, dtype, device):
    n, c, k, h, w, pad, bias = shape
    x, _, b = make(n, c, k, h, w, 3, dtype, device, bias, channels_last=True)
    u = make_u(k, c, m + 2, dtype, device)
    y = winograd_adder_conv2d(x, u, b, pad, m, backend="triton", matrices=kind, weight_domain="winograd")
    y_torch = winograd_adder_conv2d(x, u, b, pad, m, backend="torch", matrices=kind, weight_domain="winograd")
    oracle = oracle_winograd_adder(x.cpu(), u.cpu(), None if b is None else b.cpu(), pad, m, kind, domain="winograd")
    check(y, y_torch, oracle.to(y.device))


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.kernels)])
def test_spatial_filters_are_their_winograd_domain_image(backend, device):
    # W and U = G W Gᵀ (computed in float64) give the same layer on either path
    x, wt, b = make(2, 3, 5, 7, 9, 3, torch.float32, device)
    u = winograd_adder_weight(wt).float()
    y_w = winograd_adder_conv2d(x, wt, b, 1, backend=backend)
    y_u = winograd_adder_conv2d(x, u, b, 1, backend=backend, weight_domain="winograd")
    assert (y_w - y_u).abs().max() <= 4 * ulp(torch.float32) * y_w.abs().max()


def test_winograd_domain_module():
    torch.manual_seed(5)
    spatial = WinogradAdderConv2d(3, 4, padding=1, dtype=torch.float64)
    torch.manual_seed(5)
    layer = WinogradAdderConv2d(3, 4, padding=1, weight_domain="winograd", dtype=torch.float64)
    # U is the parameter, initialised to G W₀ Gᵀ of the same N(0, 1) draw: both start as one layer
    assert layer.weight.shape == (4, 3, 4, 4) and layer.kernel_size == (3, 3)
    assert torch.allclose(layer.weight, winograd_adder_weight(spatial.weight), atol=1e-12)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    assert torch.allclose(layer(x), spatial(x), atol=1e-10)
    assert torch.equal(layer(x), winograd_adder_conv2d(x, layer.weight, None, 1, weight_domain="winograd"))
    assert "weight_domain='winograd'" in repr(layer) and "weight_domain='spatial'" in repr(spatial)
    # the adaptive learning rate scales U's gradient: norm eta·sqrt(numel(U))
    layer(x).sum().backward()
    assert abs(float(layer.weight.grad.norm()) - 0.2 * (4 * 3 * 16) ** 0.5) < 1e-9
    fresh = WinogradAdderConv2d(3, 4, padding=1, weight_domain="winograd", dtype=torch.float64)
    fresh.load_state_dict(reloaded(layer.state_dict()))
    assert torch.equal(fresh(x), layer(x))
    with pytest.raises(ValueError, match="weight_domain must be one of"):
        WinogradAdderConv2d(3, 4, weight_domain="fourier")
