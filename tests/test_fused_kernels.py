"""The generated kernels under the interpreter: the input transform against the exact V, and both
sparse paths (one kernel: V recomputed from X; two kernels: V in memory) against the float64
Winograd convolution with the tolerance rule (tests/_tolerance.py)."""


import pytest
import torch
from tritonwino.kernels.input_transform import input_transform

from tritonwino import _checks, _triton_path, reference
from tritonwino.sparse_conv import pack_winograd_weight, sparse_winograd_conv2d
from tritonwino.testing import random_pruned_q
from tritonwino.transforms import ACCURATE_POINTS, normalize_points

from ._tolerance import assert_close_rule

pytestmark = pytest.mark.kernels

PATHS = ["one-kernel", "two-kernel"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _layout(x, layout):
    if layout == "cl":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # a non-contiguous view: every other column of a wider tensor
        wide = torch.zeros(*x.shape[:3], 2 * x.shape[3], dtype=x.dtype, device=x.device)
        wide[..., ::2] = x
        return wide[..., ::2]
    return x


def _q(k, c, m, r, gen, keep=0.5, block=(16, 1), points=None):
    return random_pruned_q(k, c, m, r, 1 - keep, block, points=points, generator=gen)


@pytest.mark.parametrize("m,r,points", [(2, 3, None), (4, 3, None), (6, 3, None), (4, 5, None),
                                        (4, 3, ACCURATE_POINTS[6]), (3, 3, ("0", "1/2", "-2", "3"))],
                         ids=["F2,3", "F4,3", "F6,3", "F4,5", "F4,3acc", "F3,3custom"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_input_transform_matches_exact_v(m, r, points, dtype, device):
    gen = torch.Generator().manual_seed(m * 10 + r)
    x = torch.randn(2, 5, 11, 9, generator=gen).to(device).to(dtype)
    pad = (1, 2)
    pts = normalize_points(m, r, points)
    ho, wo = _checks.output_size(11, 9, r, pad)
    tiles = reference.tile_grid(ho, wo, m)
    for layout in ("nchw", "cl", "strided"):
        v = input_transform(_layout(x, layout), _triton_path.tile_spec(m, r, pts), pad, tiles, dtype)
        exact = reference.input_transform(x.double(), m, r, pad, pts)
        scale = float(exact.abs().max())
        err = (v.double() - exact).abs()
        # fp32: summation order only; half: one rounding of each V to the half type
        bound = 1e-5 * scale + (torch.finfo(dtype).eps * exact.abs() if dtype != torch.float32 else 0)
        assert bool((err <= bound).all()), (layout, float(err.max()))
    vr = input_transform(x, _triton_path.tile_spec(m, r, pts), pad, tiles, dtype, winograd_relu=True)
    assert torch.equal(vr, torch.relu(input_transform(x, _triton_path.tile_spec(m, r, pts), pad, tiles, dtype)))


def _check_path(path, x, packed, q, bias, pad, m, relu=False):
    with torch.no_grad():
        y = _triton_path.sparse_winograd_conv2d(x, packed, bias, pad, relu, path=path)
        y_torch = sparse_winograd_conv2d(x, packed, bias, pad, backend="torch", relu=relu)
    oracle = reference.winograd_conv2d_q(x.double(), q.to(x.device), None if bias is None else bias.double(), pad,
                                         packed.m, packed.r, packed.points_fractions(), relu)
    assert y.dtype == x.dtype
    cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    assert y.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    assert_close_rule(y, y_torch, oracle, m)
    return y


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("m", [2, 4, 6])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_sparse_paths_match_float64(path, m, dtype, layout, device):
    gen = torch.Generator().manual_seed(m)
    q = _q(19, 21, m, 3, gen)
    x = _layout(torch.randn(2, 21, 13, 10, generator=gen).to(device).to(dtype), layout)
    bias = torch.randn(19, generator=gen).to(device).to(dtype)
    packed = pack_winograd_weight(q, (16, 1)).to(device)
    _check_path(path, x, packed, q, bias, (1, 1), m, relu=(m == 4))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("block", [(1, 1), (32, 1), (64, 1), (16, 16)], ids=lambda b: f"{b[0]}x{b[1]}")
def test_sparse_paths_blocks_strides_and_points(path, block, device):
    """Other block shapes, a non-contiguous input and bias, F(4,5) and custom points."""
    gen = torch.Generator().manual_seed(sum(block))
    q = _q(40, 17, 4, 3, gen, 0.3, block if block[0] > 1 else (1, 1))
    x = _layout(torch.randn(1, 17, 9, 12, generator=gen).to(device), "strided")
    bias_store = torch.randn(80, generator=gen).to(device)
    bias = bias_store[::2]  # stride 2
    packed = pack_winograd_weight(q, block).to(device)
    _check_path(path, x, packed, q, bias, (0, 2), 4, relu=True)


@pytest.mark.parametrize("path", PATHS)
def test_sparse_paths_f45_and_custom_points(path, device):
    gen = torch.Generator().manual_seed(3)
    q = _q(16, 6, 4, 5, gen)
    x = torch.randn(1, 6, 10, 10, generator=gen).to(device)
    _check_path(path, x, pack_winograd_weight(q, (16, 1), r=5).to(device), q, None, (2, 2), 4)
    pts = ("0", "5/8", "-5/8", "3/2", "-3/2")
    q = _q(16, 6, 4, 3, gen, points=pts)
    _check_path(path, x, pack_winograd_weight(q, (16, 1), points=pts).to(device), q, None, (1, 1), 4)


@pytest.mark.parametrize("path", PATHS)
def test_all_pruned_gives_bias_and_tiny_inputs(path, device):
    gen = torch.Generator().manual_seed(4)
    q = torch.zeros(16, 8, 6, 6)
    bias = torch.randn(16, generator=gen).to(device)
    x = torch.randn(1, 8, 5, 3, generator=gen).to(device)
    with torch.no_grad():
        y = _triton_path.sparse_winograd_conv2d(x, pack_winograd_weight(q, (16, 1)).to(device), bias, (1, 1), path=path)
    assert torch.equal(y, bias.view(1, -1, 1, 1).expand_as(y))
    # an image smaller than one tile, padding 0
    q = _q(16, 8, 4, 3, gen)
    _check_path(path, torch.randn(3, 8, 3, 4, generator=gen).to(device), pack_winograd_weight(q, (16, 1)).to(device),
                q, None, (0, 0), 4)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_winograd_relu_matches_the_formula(path, dtype, device):
    """winograd_relu=True computes Aᵀ[Q ⊙ ReLU(Bᵀ X B)]A (Liu et al. 2018)."""
    gen = torch.Generator().manual_seed(5)
    m, r, pad = 4, 3, (1, 1)
    q = _q(16, 12, m, r, gen)
    x = torch.randn(2, 12, 9, 11, generator=gen).to(device).to(dtype)
    packed = pack_winograd_weight(q, (16, 1)).to(device)
    nb, _, h, w = x.shape
    ho, wo = _checks.output_size(h, w, r, pad)
    q_pck = q.permute(2, 3, 1, 0).reshape((m + 2) ** 2, 12, 16)  # (P, C, K)

    def formula(xx, opd):
        v = torch.relu(reference.input_transform(xx, m, r, pad)).to(opd).to(xx.dtype)
        mm = reference.winograd_gemm(v, q_pck.to(xx.device).to(opd).to(xx.dtype))
        return reference.output_transform(mm, nb, ho, wo, m, r).to(x.dtype)

    with torch.no_grad():
        y = _triton_path.sparse_winograd_conv2d(x, packed, None, pad, winograd_relu=True, path=path)
    y_torch = formula(x.float(), dtype)
    oracle = formula(x.double(), torch.float64)
    assert_close_rule(y, y_torch, oracle, m)
    # and it differs from the plain convolution
    assert (oracle - reference.winograd_conv2d_q(x.double(), q.to(device), None, pad, m, r)).abs().max() > 1e-2


def test_int32_indices_both_paths(device):
    import dataclasses

    gen = torch.Generator().manual_seed(7)
    q = _q(16, 24, 2, 3, gen)
    p16 = pack_winograd_weight(q, (16, 1)).to(device)
    p32 = dataclasses.replace(p16, indices=p16.indices.to(torch.int32), _cast_cache={})
    x = torch.randn(1, 24, 7, 9, generator=gen).to(device)
    with torch.no_grad():
        for path in PATHS:
            assert torch.equal(_triton_path.sparse_winograd_conv2d(x, p16, None, (1, 1), path=path),
                               _triton_path.sparse_winograd_conv2d(x, p32, None, (1, 1), path=path))


def test_path_choice_without_a_gpu_is_the_work_models(monkeypatch):
    """No GPU: one kernel or two by the counted-work model (H100 roofline, labelled a model); fp32
    operands always two kernels; $TRITONWINO_SPARSE_PATH overrides; the choice is memoised."""
    from tritonwino.tuning import select

    gen = torch.Generator().manual_seed(8)
    packed = pack_winograd_weight(_q(64, 64, 4, 3, gen, keep=0.1, block=(32, 1)), (32, 1))
    x = torch.randn(8, 64, 14, 14, generator=gen)
    select.clear_memo()
    call = _triton_path.SparseCall(x.half(), packed, packed.values_as(torch.float16), None, (1, 1))
    choice = select.sparse_path(call)
    assert choice.source == "model" and "model, not a measurement" in choice.reason
    assert set(choice.times) == {"one-kernel", "two-kernel"}
    assert choice.path == min(choice.times, key=choice.times.__getitem__)
    assert choice.path == "one-kernel"  # 90 % sparse deep layer: V's round trip costs more than recomputing it
    assert select.sparse_path(call) is choice
    fp32 = _triton_path.SparseCall(x, packed, packed.values_as(torch.float32), None, (1, 1))
    assert select.sparse_path(fp32).path == "two-kernel" and select.sparse_path(fp32).source == "rule"
    monkeypatch.setenv(select.PATH_ENV, "two-kernel")
    assert select.sparse_path(call).path == "two-kernel"
    monkeypatch.setenv(select.PATH_ENV, "three")
    with pytest.raises(ValueError, match="TRITONWINO_SPARSE_PATH"):
        select.sparse_path(call)


def test_explain_names_the_kernels(monkeypatch):
    """A layer dispatched to the Triton path says which kernel sequence runs and why."""
    from tritonwino import dispatch
    from tritonwino.modules import SparseWinogradConv2d, explain

    gen = torch.Generator().manual_seed(9)
    q = _q(16, 16, 4, 3, gen, keep=0.5)
    layer = SparseWinogradConv2d(pack_winograd_weight(q.float(), (16, 1)), None, 1, backend="auto")
    model = torch.nn.Sequential(layer)
    monkeypatch.setattr(dispatch, "winograd_backend", lambda x: "triton")  # the interpreter stands in for a GPU
    with torch.no_grad():
        model(torch.randn(1, 16, 8, 8, generator=gen))
    (row,) = [r for r in explain(model) if r["type"] == "SparseWinogradConv2d"]
    if row["chosen"].startswith("sparse"):
        assert row["kernels"].startswith("two-kernel (rule:")  # fp32 input
    elif row["chosen"].startswith("dense"):
        assert row["kernels"].startswith("two-kernel: input transform + fused dense multiply")
    else:
        assert row["kernels"] == ""
    assert "kernels" in str(explain(model)).splitlines()[0]
