"""The pure-torch path: exact in float64, differentiable, layout- and dtype-preserving."""

import pytest
import torch
import torch.nn.functional as F

from tritonwino import reference
from tritonwino.transforms import ACCURATE_POINTS


@pytest.mark.parametrize("m,r", [(2, 3), (4, 3), (6, 3), (4, 5), (3, 1), (2, 5)])
@pytest.mark.parametrize("pad", [0, 1, 2])
def test_float64_matches_conv2d(m, r, pad):
    x = torch.randn(2, 3, 11, 8, dtype=torch.float64)
    w = torch.randn(4, 3, r, r, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    y = reference.winograd_conv2d(x, w, b, pad, m)
    ref = F.conv2d(x, w, b, padding=pad)
    assert y.shape == ref.shape
    assert (y - ref).abs().max() <= 1e-12 * ref.abs().max()


def test_accurate_points_float64():
    x = torch.randn(1, 2, 9, 9, dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    y = reference.winograd_conv2d(x, w, None, 1, 4, points=ACCURATE_POINTS[6])
    assert torch.allclose(y, F.conv2d(x, w, padding=1), atol=1e-12, rtol=0)


def test_gradients_match_conv2d():
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    grads = torch.autograd.grad((reference.winograd_conv2d(x, w, b, 1, 4) * g).sum(), (x, w, b))
    refs = torch.autograd.grad((F.conv2d(x, w, b, padding=1) * g).sum(), (x, w, b))
    for a, e in zip(grads, refs, strict=True):
        assert torch.allclose(a, e, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("m,r,pad", [(2, 3, 1), (4, 3, 0), (6, 3, 2), (2, 5, 2), (3, 1, 0)])
def test_input_gradient_gradcheck(m, r, pad):
    # the input transform's gradient is a GEMM + fold (col2im), not autograd's conv backward:
    # odd sizes leave partial tiles whose padded rows/columns must get no gradient
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, r, r, dtype=torch.float64)
    torch.autograd.gradcheck(lambda xx: reference.winograd_conv2d(xx, w, None, pad, m), (x,))


def test_input_gradient_of_an_empty_batch():
    # regression: the fold over N·C channels refused N = 0 in the backward
    x = torch.zeros(0, 3, 7, 7, dtype=torch.float64, requires_grad=True)
    y = reference.winograd_conv2d(x, torch.randn(2, 3, 3, 3, dtype=torch.float64), None, 1, 4)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert y.shape == (0, 2, 7, 7) and g.shape == x.shape


@pytest.mark.parametrize("winograd_relu", [False, True])
def test_input_transform_gradient_matches_autograd_conv(winograd_relu):
    x = torch.randn(2, 4, 10, 9, dtype=torch.float64, requires_grad=True)
    v = reference.input_transform(x, 4, 3, (1, 1), winograd_relu=winograd_relu)
    g = torch.randn_like(v)
    (got,) = torch.autograd.grad((v * g).sum(), x)
    # the same transform with autograd's own conv backward
    xp = F.pad(x, (1, 1 + 3, 1, 1 + 2)).reshape(8, 1, 14, 14)  # 3×3 tiles of 4 need 14×14
    filters = reference._kron_filters(4, 3, reference.normalize_points(4, 3, None), torch.float64, x.device)
    ref_v = F.conv2d(xp, filters, stride=4)
    ref_v = (torch.relu(ref_v) if winograd_relu else ref_v).reshape(2, 4, 36, 9).permute(2, 1, 0, 3).reshape(36, 4, 18)
    assert torch.equal(v, ref_v)
    (want,) = torch.autograd.grad((ref_v * g).sum(), x)
    assert torch.allclose(got, want, atol=1e-12, rtol=1e-12)


def test_winograd_conv2d_q_is_differentiable_in_q():
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    q = reference.winograd_weight(torch.randn(3, 2, 3, 3, dtype=torch.float64), 2).requires_grad_()
    torch.autograd.gradcheck(lambda qq: reference.winograd_conv2d_q(x, qq, None, 1, 2, 3), (q,))


def test_channels_last_in_channels_last_out():
    x = torch.randn(2, 3, 9, 7).to(memory_format=torch.channels_last)
    w = torch.randn(5, 3, 3, 3)
    y = reference.winograd_conv2d(x, w, None, 1, 4)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(y, F.conv2d(x, w, padding=1), atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes_keep_dtype(dtype):
    x = torch.randn(1, 4, 8, 8).to(dtype)
    w = torch.randn(4, 4, 3, 3).to(dtype)
    y = reference.winograd_conv2d(x, w, None, 1, 2)
    assert y.dtype == dtype
    ref = F.conv2d(x.double(), w.double(), padding=1)
    assert (y.double() - ref).abs().max() / ref.abs().max() < 0.05


def test_winograd_weight_is_float64_gwgt():
    w = torch.randn(2, 3, 3, 3)
    q = reference.winograd_weight(w, 4)
    _, g, _ = reference.matrices(4, 3)
    assert q.dtype == torch.float64 and q.shape == (2, 3, 6, 6)
    assert torch.allclose(q[1, 2], g @ w[1, 2].double() @ g.T, atol=1e-14)
