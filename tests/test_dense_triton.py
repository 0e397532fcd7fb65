"""Dense Triton Winograd convolution (interpreter on CPU) against float64 F.conv2d.

Tolerance: see tests/_tolerance.py (2x the torch reference path's own error + 1 ulp of the output,
and a per-tile, per-dtype relative bound).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from tritonwino.sparse_conv import winograd_conv2d

from ._tolerance import assert_close_rule

pytestmark = pytest.mark.kernels

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (N, C, K, H, W, padding, bias): odd sizes with partial tiles, H/W smaller than a tile, channel
# counts that are not multiples of any block, N=3.
SHAPES = [
    (1, 3, 5, 7, 9, 1, True),
    (3, 4, 6, 3, 4, 2, False),
    (1, 17, 19, 13, 10, 0, True),
]


def _run(shape, m, dtype, channels_last, device, r=3, decompose=None):
    n_, c, k, h, w, pad, has_bias = shape
    x = torch.randn(n_, c, h, w, device=device).to(dtype)
    wt = (torch.randn(k, c, r, r, device=device) / math.sqrt(c * r * r)).to(dtype)
    b = torch.randn(k, device=device).to(dtype) if has_bias else None
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    y = winograd_conv2d(x, wt, b, pad, m, backend="triton", decompose=decompose)
    y_torch = winograd_conv2d(x, wt, b, pad, m, backend="torch", decompose=decompose)
    oracle = F.conv2d(x.double(), wt.double(), None if b is None else b.double(), padding=pad)
    return x, y, y_torch, oracle


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:5])) + f"p{s[5]}b{int(s[6])}")
@pytest.mark.parametrize("m", [2, 4, 6])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[1])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_dense_matches_float64(shape, m, dtype, channels_last, device):
    x, y, y_torch, oracle = _run(shape, m, dtype, channels_last, device)
    assert y.dtype == dtype
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert_close_rule(y, y_torch, oracle, m)


def test_f45_kernel_5x5(device):
    # a single F(4,5) tile, not the decomposed 3x3 pieces that the default would run (test_dwm.py)
    _, y, y_torch, oracle = _run((1, 3, 4, 9, 8, 2, True), 4, torch.float32, False, device, r=5, decompose=False)
    assert_close_rule(y, y_torch, oracle, 4)


def test_fused_relu(device):
    x = torch.randn(1, 3, 8, 8, device=device)
    w = torch.randn(4, 3, 3, 3, device=device)
    y = winograd_conv2d(x, w, None, 1, 2, backend="triton", relu=True)
    ref = torch.relu(F.conv2d(x.double(), w.double(), padding=1))
    assert (y.double() - ref).abs().max() < 1e-4
    assert (y >= 0).all()


def test_empty_batch_returns_empty(device):
    x = torch.randn(0, 3, 8, 8, device=device)
    w = torch.randn(4, 3, 3, 3, device=device)
    for backend in ("triton", "torch"):
        y = winograd_conv2d(x, w, None, 1, 4, backend=backend)
        assert y.shape == (0, 4, 8, 8)


def test_nan_propagates(device):
    x = torch.randn(1, 2, 9, 9, device=device)
    x[0, 1, 4, 4] = float("nan")
    w = torch.randn(3, 2, 3, 3, device=device)
    oracle = F.conv2d(x.double(), w.double(), padding=1)
    for backend in ("triton", "torch"):
        y = winograd_conv2d(x, w, None, 1, 4, backend=backend)
        # Every output the NaN reaches in a direct convolution is NaN here too; Winograd spreads it
        # further, to the rest of the tiles whose input windows contain it.
        assert torch.isnan(y[torch.isnan(oracle)]).all()
        assert torch.isnan(y).any() and not torch.isnan(y).all()


def test_non_contiguous_input(device):
    x = torch.randn(1, 3, 12, 20, device=device)[:, :, ::2, 1::2]
    w = torch.randn(4, 3, 3, 3, device=device)
    y = winograd_conv2d(x, w, None, 1, 2, backend="triton")
    assert torch.allclose(y.double(), F.conv2d(x.double(), w.double(), padding=1), atol=1e-4)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(x=torch.randn(3, 8, 8)), ValueError, "4-D"),
        (dict(w=torch.randn(4, 5, 3, 3)), ValueError, "channels"),
        (dict(x=torch.randint(0, 3, (1, 3, 8, 8))), TypeError, "floating"),
        (dict(w=torch.randn(4, 3, 3, 5)), ValueError, "square"),
        (dict(stride=3), ValueError, "stride"),
        (dict(stride=(1, 2)), ValueError, "stride"),
        (dict(w=torch.randn(4, 3, 5, 5), stride=2, padding=0, x=torch.randn(1, 3, 4, 4)), ValueError,
         "smaller than"),
        (dict(dilation=2), ValueError, "dilation"),
        (dict(groups=3), ValueError, "groups"),
        (dict(padding=-1), ValueError, "padding"),
        (dict(padding="same"), ValueError, "padding"),
        (dict(bias=torch.randn(5)), ValueError, "bias"),
        (dict(backend="cuda"), ValueError, "backend"),
        (dict(m=0), ValueError, "m must be"),
        (dict(x=torch.randn(1, 3, 2, 2), padding=0), ValueError, "smaller than"),
        (dict(x=torch.randn(1, 3, 8, 8, dtype=torch.float64), backend="triton"), TypeError, "float64"),
    ],
)
def test_bad_inputs(kwargs, exc, match):
    args = dict(x=torch.randn(1, 3, 8, 8), w=torch.randn(4, 3, 3, 3), bias=None, padding=1, m=4,
                backend="triton")
    args.update(kwargs)
    extra = {k: args.pop(k) for k in ("stride", "dilation", "groups") if k in args}
    with pytest.raises(exc, match=match):
        winograd_conv2d(args["x"], args["w"], args["bias"], args["padding"], args["m"], args["backend"], **extra)


def test_device_mismatch_is_refused():
    meta_w = torch.randn(4, 3, 3, 3, device="meta")
    with pytest.raises(ValueError, match="same device"):
        winograd_conv2d(torch.randn(1, 3, 8, 8), meta_w, None, 1, 4, backend="torch")


def test_autograd_goes_through_torch_path_or_is_refused(device):
    x = torch.randn(1, 3, 8, 8, device=device, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=device, requires_grad=True)
    y = winograd_conv2d(x, w, None, 1, 4, backend="auto")  # CPU + grad: the differentiable torch path
    y.sum().backward()
    ref_x = x.detach().clone().requires_grad_()
    F.conv2d(ref_x, w.detach(), padding=1).sum().backward()
    assert torch.allclose(x.grad, ref_x.grad, atol=1e-4)
    with pytest.raises(RuntimeError, match="inference-only"):
        winograd_conv2d(x, w, None, 1, 4, backend="triton")
    with torch.no_grad():
        assert winograd_conv2d(x, w, None, 1, 4, backend="triton").shape == (1, 4, 8, 8)
