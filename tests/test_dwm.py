"""The decomposable Winograd method (tritonwino.dwm): stride 2 and large kernels as one stride-1
Winograd pipeline over virtual input channels, on the torch path and the Triton kernels
(interpreter), dense and sparse, against float64 F.conv2d.

Tolerance: tests/_tolerance.py (the Triton path within 2x the torch path's own error; the torch
path within the F(m, 3) relative bound of its piece tile).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from tritonwino import dwm, reference
from tritonwino.packing import PackedWinogradWeight, pack_winograd_weight
from tritonwino.sparse_conv import sparse_winograd_conv2d, winograd_conv2d

from ._tolerance import REL_BOUND, assert_close_rule, max_err

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


# ---- the decomposition itself (exact, float64) ---------------------------------------------------
def test_pieces_of_the_common_kernels():
    d = dwm.decomposition(3, 2)
    assert (d.r, d.pieces, d.blocks) == (2, 4, ((0, 2), (1, 1)))
    d = dwm.decomposition(7, 2)  # phase 0 taps 0,2,4,6 -> two blocks of 2; phase 1 taps 1,3,5 -> one of 3
    assert (d.r, d.pieces, d.blocks) == (3, 9, ((0, 2), (4, 2), (1, 3)))
    assert (dwm.decomposition(5, 1).r, dwm.decomposition(5, 1).pieces) == (3, 4)
    assert dwm.decomposition(4, 1).blocks == ((0, 2), (2, 2))  # balanced: F(m, 2), not 3 + 1
    assert dwm.plan(3, 1) is None and dwm.plan(5, 1, decompose=False) is None
    assert dwm.plan(3, 1, decompose=True) is None  # a 3x3 stride-1 kernel is its own single piece
    assert dwm.plan(5, 1).pieces == 4 and dwm.plan(2, 1) is None


@pytest.mark.parametrize("k", range(2, 10))
@pytest.mark.parametrize("s", [1, 2])
@pytest.mark.parametrize("pad", [(0, 0), (1, 2), (3, 3)])
def test_expanded_convolution_is_exact(k, s, pad):
    """conv(X', W') with stride 1 and no padding is F.conv2d(x, w, stride, padding), exactly."""
    x = torch.randn(2, 3, 11, 9 + k % 3, dtype=torch.float64)
    w = torch.randn(4, 3, k, k, dtype=torch.float64)
    if x.shape[2] + 2 * pad[0] < k or x.shape[3] + 2 * pad[1] < k:
        pytest.skip("input smaller than the kernel")
    d = dwm.decomposition(k, s)
    y = F.conv2d(dwm.expand_input(x, d, pad), dwm.expand_weight(w, d))
    torch.testing.assert_close(y, F.conv2d(x, w, stride=s, padding=pad), rtol=0, atol=1e-11)
    assert torch.equal(dwm.fold_weight(dwm.expand_weight(w, d), d, rel_tol=0.0), w)


def test_fold_refuses_nonzero_padding_taps():
    d = dwm.decomposition(3, 2)
    we = dwm.expand_weight(torch.randn(2, 3, 3, 3, dtype=torch.float64), d)
    we[0, -1, 1, 1] = 0.5  # the 1x1 piece's padding
    assert dwm.fold_weight(we, d, rel_tol=1e-12) is None
    assert dwm.fold_weight(we, d) is not None  # masks: padding ignored


def test_multiplication_count():
    c = dwm.multiplications(7, 2, 4, 112, 112, dwm.decomposition(7, 2))
    assert c["direct"] == 112 * 112 * 49 and c["winograd"] == 28 * 28 * 9 * 36
    assert dwm.multiplications(3, 1, 4, 8, 8, None)["direct_over_winograd"] == 4.0


# ---- functional, torch path ---------------------------------------------------------------------
CASES = [  # (k, stride, padding, H, W): odd sizes, partial tiles, a ResNet stem
    (3, 2, 1, 9, 7),
    (7, 2, 3, 13, 11),
    (5, 1, 2, 7, 10),
    (5, 2, 0, 12, 9),
    (4, 1, 1, 6, 5),
    (3, 2, 0, 5, 5),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "k{}s{}p{}_{}x{}".format(*c))
@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=lambda d: str(d)[6:])
def test_torch_path_matches_float64(case, m, dtype):
    k, s, p, h, w = case
    x = torch.randn(2, 5, h, w).to(dtype)
    wt = (torch.randn(6, 5, k, k) / math.sqrt(5 * k * k)).to(dtype)
    b = torch.randn(6).to(dtype)
    oracle = F.conv2d(x.double(), wt.double(), b.double(), stride=s, padding=p)
    y = winograd_conv2d(x, wt, b, p, m, backend="torch", stride=s)
    assert y.shape == oracle.shape and y.dtype == dtype
    rel = max_err(y, oracle) / float(oracle.abs().max())
    bound = REL_BOUND.get((m, dtype), 1e-12)
    assert rel <= bound, (rel, bound)


def test_decompose_true_runs_a_large_stride1_kernel_as_pieces():
    x, w = torch.randn(1, 3, 9, 9), torch.randn(4, 3, 5, 5) / 8
    oracle = F.conv2d(x.double(), w.double(), padding=2)
    for decompose in (None, True, False):
        y = winograd_conv2d(x, w, None, 2, 4, backend="torch", decompose=decompose)
        assert max_err(y, oracle) / float(oracle.abs().max()) < 2e-5


def test_gradients_flow_through_the_decomposed_path():
    x = torch.randn(1, 3, 9, 9, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    y = winograd_conv2d(x, w, None, 1, 2, backend="auto", stride=2)
    y.square().sum().backward()
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    F.conv2d(x2, w2, stride=2, padding=1).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(w.grad, w2.grad)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(stride=3), "stride"),
        (dict(stride=(2, 1)), "stride"),
        (dict(stride=2, decompose=False), "decompose=False"),
        (dict(decompose="yes"), "decompose"),
        (dict(x=torch.randn(1, 3, 2, 2), w=torch.randn(4, 3, 5, 5), padding=1), "smaller than"),
        (dict(w=torch.randn(4, 3, 3, 5)), "square"),
    ],
)
def test_bad_input_clear_errors(kwargs, match):
    args = dict(x=torch.randn(1, 3, 8, 8), w=torch.randn(4, 3, 3, 3), padding=1)
    args.update(kwargs)
    x, w, p = args.pop("x"), args.pop("w"), args.pop("padding")
    with pytest.raises(ValueError, match=match):
        winograd_conv2d(x, w, None, p, 4, backend="torch", **args)


# ---- packed weights ----------------------------------------------------------------------------
def _packed(k, s, c=4, kout=16, m=4, prune=0.0):
    w = torch.randn(kout, c, k, k) / math.sqrt(c * k * k)
    d = dwm.plan(k, s)
    q = reference.winograd_weight(dwm.expand_weight(w, d), m)
    if prune:
        q[:, : int(prune * q.shape[1])] = 0  # whole virtual channels: some pieces of some channels
    return w, pack_winograd_weight(q.float(), (16, 1), r=d.r, decomposition=(k, s)), q


def test_packed_weight_knows_its_decomposition_and_validates_it():
    w, p, _ = _packed(3, 2, c=5)
    assert (p.decomposition, p.kernel_size, p.stride, p.in_channels, p.C, p.r) == ((3, 2), 3, 2, 5, 20, 2)
    # same n = 5 positions, but r = 3 is not the piece size of a 3x3 stride-2 kernel
    bad = PackedWinogradWeight(p.values, p.indices, p.offsets, 3, 3, p.K, p.C, p.block, p.group_k, p.points, (3, 2))
    with pytest.raises(ValueError, match="pieces"):
        bad.validate()
    with pytest.raises(ValueError, match="split"):
        pack_winograd_weight(torch.randn(16, 6, 5, 5), (16, 1), r=2, decomposition=(3, 2))
    with pytest.raises(ValueError, match="decomposition"):
        pack_winograd_weight(torch.randn(16, 8, 5, 5), (16, 1), r=2, decomposition=(3, 2, 1))
    with pytest.raises(ValueError, match="channels"):
        sparse_winograd_conv2d(torch.randn(1, 20, 8, 8), p, padding=1, backend="torch")  # C', not C


def test_packed_weight_pickles_with_its_decomposition(tmp_path):
    _, p, _ = _packed(7, 2)
    torch.save(p, tmp_path / "p.pt")
    p2 = torch.load(tmp_path / "p.pt")
    assert p2.decomposition == (7, 2) and torch.equal(p2.unpack(), p.unpack())


@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (7, 2, 3), (5, 1, 2)])
def test_sparse_torch_path_matches_pruned_oracle(k, s, p):
    x = torch.randn(2, 4, 11, 10)
    _, packed, q = _packed(k, s, prune=0.25)
    d = dwm.plan(k, s)
    # the oracle of the pruned Q: the stride-1 convolution of X' with the spatial pieces of Q
    from tritonwino.transforms import spatial_from_winograd

    w_pieces = spatial_from_winograd(q, 4, d.r)
    oracle = F.conv2d(dwm.expand_input(x.double(), d, (p, p)), w_pieces)
    y = sparse_winograd_conv2d(x, packed, None, p, backend="torch")
    assert max_err(y, oracle) / float(oracle.abs().max()) < REL_BOUND[(4, torch.float32)]
    assert packed.density < 1.0


# ---- Triton kernels (interpreter) ---------------------------------------------------------------
# enough outputs (N=2, C=8, K=12) for the max error to be a stable statistic in bf16
TRITON_CASES = [(3, 2, 1, 13, 11), (7, 2, 3, 15, 13), (5, 1, 2, 9, 10), (4, 2, 1, 11, 12)]


@pytest.mark.kernels
@pytest.mark.parametrize("case", TRITON_CASES, ids=lambda c: "k{}s{}p{}_{}x{}".format(*c))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_triton_dense_matches_torch_path_and_float64(case, dtype, device):
    k, s, p, h, w = case
    x = torch.randn(2, 8, h, w, device=device).to(dtype)
    wt = (torch.randn(12, 8, k, k, device=device) / math.sqrt(8 * k * k)).to(dtype)
    b = torch.randn(12, device=device).to(dtype)
    y = winograd_conv2d(x, wt, b, p, 4, backend="triton", stride=s)
    y_torch = winograd_conv2d(x, wt, b, p, 4, backend="torch", stride=s)
    oracle = F.conv2d(x.double(), wt.double(), b.double(), stride=s, padding=p)
    assert_close_rule(y, y_torch, oracle, 4)


@pytest.mark.kernels
@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (7, 2, 3), (5, 2, 2)])
def test_triton_sparse_and_channels_last(k, s, p, device):
    x = torch.randn(1, 4, 10, 9, device=device).contiguous(memory_format=torch.channels_last)
    _, packed, _ = _packed(k, s, prune=0.5)
    packed = packed.to(device)
    y = sparse_winograd_conv2d(x, packed, None, p, backend="triton")
    y_torch = sparse_winograd_conv2d(x, packed, None, p, backend="torch")
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, y_torch, rtol=1e-4, atol=1e-5)


@pytest.mark.kernels
def test_triton_partial_tiles_read_zero_past_the_expanded_input(device):
    """Tiles that reach past X' (HO + r - 1 rows) must read zeros, as the torch twin does: with
    winograd_relu those values would otherwise change the valid outputs."""
    x = torch.randn(1, 2, 13, 13, device=device) + 2.0  # positive: real data beyond X' would leak
    w = torch.randn(3, 2, 3, 3, device=device)
    for wrelu in (False, True):
        y = winograd_conv2d(x, w, None, 0, 6, backend="triton", stride=2, winograd_relu=wrelu)
        y_t = winograd_conv2d(x, w, None, 0, 6, backend="torch", stride=2, winograd_relu=wrelu)
        torch.testing.assert_close(y, y_t, rtol=1e-4, atol=1e-4)


@pytest.mark.kernels
@pytest.mark.parametrize("k,s,p,m", [(3, 2, 1, 4), (7, 2, 3, 2), (7, 2, 0, 2), (5, 1, 2, 6), (5, 1, 0, 4),
                                     (4, 2, 0, 4), (4, 1, 1, 2)])
def test_triton_decomposed_input_transform_reads_only_inside_x(k, s, p, m, device):
    """x is a view into a NaN-filled buffer (odd sizes, more channels than one BLOCK_C, a channel
    offset): any read outside x's own elements (a wrong row/column/channel mask) would put a NaN in
    V and hence in the output. V and the result must match the torch twin (expand_input)."""
    from tritonwino import _triton_path
    from tritonwino.reference import tile_grid
    from tritonwino.transforms import normalize_points

    c, h, w = 19, 11, 9
    big = torch.full((2, c + 3, h + 6, w + 7), float("nan"), device=device)
    x = big[:, 1:1 + c, 3:3 + h, 2:2 + w]
    x.copy_(torch.randn(2, c, h, w, device=device))
    d = dwm.decomposition(k, s)
    pts = normalize_points(m, d.r, None)
    spec = _triton_path.tile_spec(m, d.r, pts)
    ho, wo = dwm.output_size(h, w, k, s, (p, p))
    tiles = tile_grid(ho, wo, m)
    for wrelu in (False, True):
        v = _triton_path.transform_input(x, spec, (p, p), tiles, torch.float32, wrelu, d, (ho, wo))
        assert torch.isfinite(v).all()
        xe = dwm.expand_input(x.clone(), d, (p, p))  # (N, C·pieces, HO + r - 1, WO + r - 1), padding 0
        v_t = _triton_path.transform_input(xe.contiguous(), spec, (0, 0), tiles, torch.float32, wrelu, None,
                                           (ho, wo))
        torch.testing.assert_close(v, v_t, rtol=1e-5, atol=1e-5)
    _, packed, _ = _packed(k, s, c=c, m=m, prune=0.3)
    packed = packed.to(device)
    y = sparse_winograd_conv2d(x, packed, None, p, backend="triton")
    y_t = sparse_winograd_conv2d(x.clone(), packed, None, p, backend="torch")
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_t, rtol=1e-4, atol=1e-4)


def test_decomposed_layers_never_take_the_one_kernel_path(monkeypatch):
    """The one-kernel multiply transforms x itself and knows nothing of pieces: the path choice is
    two kernels for decomposed weights (even with the env override), and forcing one is refused."""
    from tritonwino import _triton_path
    from tritonwino.tuning import select

    _, packed, _ = _packed(3, 2, c=4)
    x = torch.randn(1, 4, 9, 9, dtype=torch.float16)
    call = _triton_path.SparseCall(x, packed, packed.values_as(torch.float16), None, (1, 1))
    monkeypatch.setenv(select.PATH_ENV, "one-kernel")
    choice = select.sparse_path(call)
    assert (choice.path, choice.source) == ("two-kernel", "rule")
    assert select.memoised_sparse_choice(call)[0] == "two-kernel"
    with pytest.raises(ValueError, match="two-kernel"):
        call.run("one-kernel")
    with pytest.raises(ValueError, match="two-kernel"):
        _triton_path.sparse_winograd_conv2d(x, packed, None, (1, 1), path="one-kernel")


def test_points_for_the_single_tile_ask_for_decompose_false():
    x, w = torch.randn(1, 2, 9, 9), torch.randn(3, 2, 5, 5)
    pts = [0, 1, -1, 2, -2]  # F(2,5): n - 1 = 5 points; the default runs F(2,3) pieces
    with pytest.raises(ValueError, match="decompose=False"):
        winograd_conv2d(x, w, None, 2, 2, backend="torch", points=pts)
    y = winograd_conv2d(x, w, None, 2, 2, backend="torch", points=pts, decompose=False)
    torch.testing.assert_close(y, F.conv2d(x, w, padding=2), rtol=1e-4, atol=1e-4)
