"""The "cpu" backend: the fused C++ kernel of tritonwino/_cpu_path.py (built at first use).

Oracle: the float64 Winograd convolution with the same q (for a pruned q this *is* the float64
layer; for an unpruned q it equals F.conv2d in float64). Tolerance rule: tests/_tolerance.py, with
the pure-torch path as the same-numerics twin.

The kernel has three ways to read and write a block of tiles: row blocks (AVX-512 builds, F(2,3) and
F(4,3), rows of x and y with unit stride, a tile row at least 8 tiles wide), multi-row blocks (the
same for F(4,3) and narrower images: several tile rows side by side in the lanes) and flat blocks
(every other case: gathers/scatters with any strides). Shapes below cover both, partial blocks, partial
tiles at the right and bottom edges, and both thread schedules (whole blocks per thread; shared
input transform when there are few blocks).
"""

import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from tritonwino import _cpu_path, ops, reference
from tritonwino._checks import memory_format_of
from tritonwino.functional import resolve_backend
from tritonwino.sparse_conv import (
    SparseWinogradConv2d,
    convert,
    explain,
    pack_winograd_weight,
    sparse_winograd_conv2d,
    tune_model,
    winograd_conv2d,
)
from tritonwino.testing import random_pruned_q
from tritonwino.transforms import ACCURATE_POINTS

from ._tolerance import assert_close_rule

if _cpu_path._compiler() is None:
    pytest.skip("no C++ compiler: the cpu backend cannot be built here", allow_module_level=True)


def _case(nb, c, k, h, w, m, sparsity, block, pad, seed=0, bias=True, points=None):
    gen = torch.Generator().manual_seed(seed)
    q = random_pruned_q(k, c, m, 3, sparsity, block, generator=gen, points=points)
    x = torch.randn(nb, c, h, w, generator=gen)
    b = torch.randn(k, generator=gen) if bias else None
    return q, x, b


def _oracle(x, q, b, pad, m, points=None, relu=False):
    y = reference.winograd_conv2d_q(x.double(), q, None if b is None else b.double(), pad, m, 3, points)
    return torch.relu(y) if relu else y


def test_the_backend_builds_here():
    assert _cpu_path.unavailable_reason() is None
    assert _cpu_path.available() and _cpu_path.runs(torch.randn(1, 1, 3, 3))
    path = _cpu_path.library_path(4, 3, _cpu_path.normalize_points(4, 3))
    assert path.exists() and path == _cpu_path.library_path(4, 3, _cpu_path.normalize_points(4, 3))  # cached


def test_generated_transforms_fold_the_constants():
    text = _cpu_path.generated_header(4, 3, _cpu_path.normalize_points(4, 3))
    # B^T row 0 of F(4,3) is (4, 0, -5, 0, 1, 0): zeros dropped, 1 folded
    assert "o[0] = d[0] * 4.000000000e+00f - d[2] * 5.000000000e+00f + d[4];" in text
    assert "0.000000000e+00f" not in text and "* 1.000000000e+00f" not in text


# shapes: (N, C, K, H, W, m, padding); W wide enough for row blocks in some, odd everywhere
SHAPES = [
    (2, 5, 7, 9, 11, 4, (1, 1)),     # flat blocks, partial tiles, K < group
    (1, 16, 40, 7, 70, 4, (1, 1)),   # row blocks: two per tile row, the second partial
    (3, 8, 16, 13, 37, 2, (0, 2)),   # row blocks for F(2,3), asymmetric padding
    (2, 33, 70, 10, 66, 4, (2, 0)),  # 16 tiles: exactly one full row block; K = 70 spans 3 groups
    (1, 3, 17, 5, 33, 2, (1, 1)),
    (1, 4, 16, 19, 65, 4, (2, 2)),
    (2, 6, 20, 17, 14, 4, (2, 1)),   # multi-row blocks: 4 tile rows of 4 tiles, the last block 2 rows
    (3, 5, 16, 6, 26, 4, (0, 1)),    # multi-row blocks: 2 rows of 7 tiles (14 of 16 lanes)
    (5, 6, 16, 3, 3, 2, (0, 0)),     # 1x1 output per image: every lane a different image
    (1, 1, 1, 1, 1, 4, (1, 1)),      # the smallest layer there is
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:5])) + f"-F{s[5]}-p{s[6][0]}{s[6][1]}")
@pytest.mark.parametrize("sparsity,block", [(0.0, (16, 1)), (0.6, (1, 1)), (0.9, (32, 1)), (0.5, (16, 16))],
                         ids=["dense", "0.6@1x1", "0.9@32x1", "0.5@16x16"])
def test_sparse_matches_float64(shape, sparsity, block):
    nb, c, k, h, w, m, pad = shape
    q, x, b = _case(nb, c, k, h, w, m, sparsity, block, pad)
    packed = pack_winograd_weight(q, block, dtype=torch.float32)
    for relu in (False, True):
        y = sparse_winograd_conv2d(x, packed, b, pad, backend="cpu", relu=relu)
        y_torch = sparse_winograd_conv2d(x, packed, b, pad, backend="torch", relu=relu)
        assert_close_rule(y, y_torch, _oracle(x, q, b, pad, m, relu=relu), m)


@pytest.mark.parametrize("group_k", [16, 32, 64])
def test_every_group_size(group_k):
    q, x, b = _case(2, 9, 70, 8, 40, 4, 0.7, (1, 1), (1, 1))
    packed = pack_winograd_weight(q, (1, 1), dtype=torch.float32, group_k=group_k)
    y = sparse_winograd_conv2d(x, packed, b, 1, backend="cpu")
    assert_close_rule(y, sparse_winograd_conv2d(x, packed, b, 1, backend="torch"), _oracle(x, q, b, 1, 4), 4)


def test_f63_and_other_points_build_and_match():
    """F(6,3) (flat blocks only) and a non-default point set get their own library."""
    q, x, b = _case(2, 6, 20, 17, 30, 6, 0.5, (16, 1), (1, 1))
    packed = pack_winograd_weight(q, (16, 1), dtype=torch.float32)
    y = sparse_winograd_conv2d(x, packed, b, 1, backend="cpu")
    assert_close_rule(y, sparse_winograd_conv2d(x, packed, b, 1, backend="torch"), _oracle(x, q, b, 1, 6), 6)
    pts = ACCURATE_POINTS[6]
    q, x, b = _case(1, 6, 20, 12, 40, 4, 0.5, (16, 1), (1, 1), points=pts)
    packed = pack_winograd_weight(q, (16, 1), dtype=torch.float32, points=pts)
    y = sparse_winograd_conv2d(x, packed, b, 1, backend="cpu")
    y_torch = sparse_winograd_conv2d(x, packed, b, 1, backend="torch")
    assert_close_rule(y, y_torch, _oracle(x, q, b, 1, 4, points=pts), 4)


@pytest.mark.parametrize("layout", ["channels_last", "sliced", "transposed_hw", "expanded_batch"])
def test_any_input_strides(layout):
    q, x, b = _case(2, 6, 16, 11, 38, 4, 0.5, (16, 1), (1, 1))
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        x = torch.randn(2, 9, 13, 45)[:, 1:7, 1:12, 3:41]
    elif layout == "transposed_hw":
        x = torch.randn(2, 6, 38, 11).transpose(2, 3)
    else:
        x = torch.randn(1, 6, 11, 38).expand(3, 6, 11, 38)
    packed = pack_winograd_weight(q, (16, 1), dtype=torch.float32)
    y = sparse_winograd_conv2d(x, packed, b, 1, backend="cpu")
    y_torch = sparse_winograd_conv2d(x, packed, b, 1, backend="torch")
    assert y.is_contiguous(memory_format=memory_format_of(x))
    assert_close_rule(y, y_torch, _oracle(x, q, b, 1, 4), 4)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("nb,h,w", [(1, 7, 7), (8, 7, 7), (4, 30, 30)], ids=["few-blocks", "some", "many"])
def test_thread_schedules_agree_bitwise(threads, nb, h, w):
    """Each output is computed by one thread in a fixed order: any thread count, same bits."""
    q, x, b = _case(nb, 24, 48, h, w, 4, 0.8, (16, 1), (1, 1))
    packed = pack_winograd_weight(q, (16, 1), dtype=torch.float32)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1 = sparse_winograd_conv2d(x, packed, b, 1, backend="cpu")
        torch.set_num_threads(threads)
        yt = sparse_winograd_conv2d(x, packed, b, 1, backend="cpu")
    finally:
        torch.set_num_threads(old)
    assert torch.equal(y1, yt)
    assert_close_rule(yt, sparse_winograd_conv2d(x, packed, b, 1, backend="torch"), _oracle(x, q, b, 1, 4), 4)


@pytest.mark.parametrize("m", [2, 4])
def test_dense_path_matches_conv2d(m):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 7, 12, 35, generator=gen)
    w = torch.randn(19, 7, 3, 3, generator=gen)
    b = torch.randn(19, generator=gen)
    y = winograd_conv2d(x, w, b, 1, m, backend="cpu", relu=True)
    y_torch = winograd_conv2d(x, w, b, 1, m, backend="torch", relu=True)
    assert_close_rule(y, y_torch, torch.relu(F.conv2d(x.double(), w.double(), b.double(), padding=1)), m)
    assert winograd_conv2d(x, w, b, 1, m, backend="auto").equal(winograd_conv2d(x, w, b, 1, m, backend="cpu"))


def test_empty_batch_and_all_pruned():
    q, x, b = _case(1, 4, 16, 9, 9, 4, 0.0, (16, 1), (1, 1))
    packed = pack_winograd_weight(torch.zeros_like(q), (16, 1), dtype=torch.float32)
    y = sparse_winograd_conv2d(x, packed, b, 1, backend="cpu")
    assert torch.equal(y, b.view(1, -1, 1, 1).expand_as(y))
    packed = pack_winograd_weight(q, (16, 1), dtype=torch.float32)
    y0 = sparse_winograd_conv2d(torch.randn(0, 4, 9, 9), packed, b, 1, backend="cpu")
    assert y0.shape == (0, 16, 9, 9)


def test_nan_and_inf_propagate():
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(16, 8, 3, 3, generator=gen)
    x = torch.randn(1, 8, 16, 40, generator=gen)
    x[0, 1, 4, 4] = float("nan")
    x[0, 2, 13, 30] = float("inf")
    packed = pack_winograd_weight(reference.winograd_weight(w, 4), (16, 1), dtype=torch.float32)
    for relu in (False, True):
        y = sparse_winograd_conv2d(x, packed, None, 1, backend="cpu", relu=relu)
        oracle = F.conv2d(x.double(), w.double(), padding=1)
        # every output the NaN / Inf reaches in a direct convolution is non-finite here too
        assert (~torch.isfinite(y[~torch.isfinite(oracle)])).all()
        assert torch.isnan(y[0, :, 3:6, 3:6]).all()  # ReLU keeps NaN, as torch.relu
        assert torch.isfinite(y[0, :, 8:12, 12:24]).all()  # tiles touching neither stay finite


def test_dtypes_other_than_float32_are_refused_clearly_and_auto_falls_back():
    q, x, b = _case(1, 4, 16, 8, 8, 4, 0.5, (16, 1), (1, 1))
    packed = pack_winograd_weight(q, (16, 1), dtype=torch.float32)
    for dt in (torch.float64, torch.float16, torch.bfloat16):
        with pytest.raises(TypeError, match="float32"):
            sparse_winograd_conv2d(x.to(dt), packed, b, 1, backend="cpu")
        assert resolve_backend("auto", x.to(dt)) == "torch"
        y = sparse_winograd_conv2d(x.to(dt), packed, b, 1, backend="auto")
        assert y.dtype == dt
    assert resolve_backend("auto", x) == "cpu"


def test_gradients_take_the_torch_path_and_cpu_says_inference_only():
    q, x, b = _case(1, 4, 16, 8, 8, 4, 0.5, (16, 1), (1, 1))
    packed = pack_winograd_weight(q, (16, 1), dtype=torch.float32)
    xg = x.clone().requires_grad_()
    assert resolve_backend("auto", xg) == "torch"
    sparse_winograd_conv2d(xg, packed, b, 1, backend="auto").sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    with pytest.raises(RuntimeError, match="inference-only"):
        sparse_winograd_conv2d(x.clone().requires_grad_(), packed, b, 1, backend="cpu")
    with torch.no_grad():
        sparse_winograd_conv2d(x.clone().requires_grad_(), packed, b, 1, backend="cpu")


def test_module_pinned_and_auto_dispatch_see_the_cpu_backend():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(32, 32, 3, padding=1))
    x = torch.randn(2, 16, 14, 14)
    with torch.no_grad():
        y_ref = net(x)
    auto = convert(net, m=4, block=(16, 1))
    table = tune_model(auto, x)
    chosen = [row["chosen"] for row in table]
    assert all(c in ("conv2d", "dense-winograd/cpu", "sparse-winograd/cpu") for c in chosen), chosen
    assert all(set(row["times_ms"]) == {"conv2d", "dense", "sparse"} for row in table)
    with torch.no_grad():
        torch.testing.assert_close(auto(x), y_ref, rtol=1e-4, atol=1e-4)
    for mod in auto.modules():
        if isinstance(mod, SparseWinogradConv2d):
            mod.backend = "cpu"
            assert "backend=cpu" in repr(mod)
    with torch.no_grad():
        torch.testing.assert_close(auto(x), y_ref, rtol=1e-4, atol=1e-4)
    assert "sparse" in str(explain(auto))
    # a forward that autograd records runs the torch twin, whatever dispatch chose
    for mod in auto.modules():
        if isinstance(mod, SparseWinogradConv2d):
            mod.backend = "auto"
    xg = x.clone().requires_grad_()
    auto(xg).sum().backward()
    assert xg.grad is not None


def test_ops_opcheck_and_compile_fullgraph():
    q, x, b = _case(2, 4, 16, 8, 20, 4, 0.5, (16, 1), (1, 1))
    p = pack_winograd_weight(q, (16, 1), dtype=torch.float32)
    args = (x, p.values, p.indices, p.offsets, b, [1, 1], [4, 3], [16, 4], [16, 1], ops.points_str(p.points), "cpu",
            True, False)
    torch.library.opcheck(ops.sparse_winograd_conv2d_op, args)
    q_pck = p.unpack().permute(2, 3, 1, 0).reshape(36, 4, 16).contiguous()
    torch.library.opcheck(ops.winograd_conv2d_pck_op, (x, q_pck, b, [1, 1], [4, 3], ops.points_str(p.points), "cpu",
                                                        False, False))
    layer = SparseWinogradConv2d(p, b, 1, backend="cpu")
    with torch.no_grad():
        y_eager = layer(x)
        y_c = torch.compile(layer, fullgraph=True, backend="aot_eager")(x)
    torch._dynamo.reset()
    assert torch.equal(y_c, y_eager)


def test_no_compiler_falls_back_to_torch_with_one_warning(monkeypatch):
    monkeypatch.setattr(_cpu_path, "_compiler", lambda: None)
    monkeypatch.setattr(_cpu_path, "_availability", [])
    x = torch.randn(1, 4, 8, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_backend("auto", x) == "torch"
        assert resolve_backend("auto", x) == "torch"
    assert len([w for w in caught if "CPU kernels are unavailable" in str(w.message)]) == 1
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        resolve_backend("cpu", x)


def test_switched_off_by_environment():
    code = ("import torch, warnings; warnings.simplefilter('error'); from tritonwino.functional import "
            "resolve_backend; print(resolve_backend('auto', torch.randn(1, 1, 4, 4)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, _cpu_path.ENV_SWITCH: "0"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "torch"


@pytest.mark.slow
def test_portable_build_without_native_flags(monkeypatch, tmp_path):
    """A build for any x86-64 / other CPU (no -march=native: generic vectors, scalar gathers) agrees."""
    monkeypatch.setenv(_cpu_path.ENV_BUILD_DIR, str(tmp_path))
    monkeypatch.setattr(_cpu_path, "_FLAG_SETS", (["-O2", "-fopenmp"],))
    monkeypatch.setattr(_cpu_path, "_libraries", {})
    q, x, b = _case(3, 7, 20, 9, 40, 4, 0.6, (16, 1), (1, 1))
    packed = pack_winograd_weight(q, (16, 1), dtype=torch.float32)
    y = sparse_winograd_conv2d(x, packed, b, 1, backend="cpu")
    assert list(tmp_path.glob("*.so"))
    assert_close_rule(y, sparse_winograd_conv2d(x, packed, b, 1, backend="torch"), _oracle(x, q, b, 1, 4), 4)


def test_eager_calls_skip_the_op_but_modes_and_fake_tensors_still_see_it():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    q, x, b = _case(1, 4, 16, 8, 20, 4, 0.5, (16, 1), (1, 1))
    p = pack_winograd_weight(q, (16, 1), dtype=torch.float32)
    assert _cpu_path.eager_direct(x)
    args = (x, p.values, p.indices, p.offsets, b, [1, 1], [4, 3], [16, 4], [16, 1], ops.points_str(p.points), "cpu",
            False, False)
    assert torch.equal(ops.sparse_winograd_conv2d_call(*args), ops.sparse_winograd_conv2d_op(*args))
    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Record():
        sparse_winograd_conv2d(x, p, b, 1, backend="cpu")
    assert "tritonwino.sparse_winograd_conv2d.default" in seen
    with FakeTensorMode() as mode:
        fx = mode.from_tensor(x)
        assert not _cpu_path.eager_direct(fx)
        y = ops.sparse_winograd_conv2d_call(fx, *[mode.from_tensor(t) for t in (p.values, p.indices, p.offsets)],
                                            None, [1, 1], [4, 3], [16, 4], [16, 1], ops.points_str(p.points), "cpu",
                                            False, False)
    assert y.shape == (1, 16, 8, 20)


@pytest.mark.slow
@pytest.mark.parametrize("m,r,w", [(1, 3, 29), (3, 3, 29), (2, 5, 29), (4, 5, 40), (4, 5, 13), (2, 1, 29)])
def test_other_tiles_and_kernel_sizes(m, r, w):
    """Each F(m, r) is its own generated library; row, multi-row and flat blocks across them."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 5, 13, w, generator=gen)
    wt = torch.randn(7, 5, r, r, generator=gen)
    pad = r // 2
    y = winograd_conv2d(x, wt, None, pad, m, backend="cpu")
    y_torch = winograd_conv2d(x, wt, None, pad, m, backend="torch")
    oracle = F.conv2d(x.double(), wt.double(), padding=pad)
    err, err_torch = (y.double() - oracle).abs().max(), (y_torch.double() - oracle).abs().max()
    assert err <= 2 * err_torch + torch.finfo(torch.float32).eps * oracle.abs().max()


# ---- decomposed and Winograd-ReLU calls: no C++ variant, the torch path runs them ----------------
@pytest.mark.parametrize("k,s,wrelu", [(3, 2, False), (7, 2, False), (5, 1, False), (3, 1, True), (3, 2, True)])
def test_decomposed_and_winograd_relu_calls_run_the_torch_path_on_cpu(k, s, wrelu):
    from tritonwino import dispatch, dwm

    torch.manual_seed(0)
    x = torch.randn(2, 5, 13, 11)
    w = torch.randn(8, 5, k, k) / (5 * k * k) ** 0.5
    b = torch.randn(8)
    p = k // 2
    assert not ops.cpu_runs(wrelu, dwm.plan(k, s) is not None)
    y_cpu = winograd_conv2d(x, w, b, p, 4, backend="cpu", stride=s, winograd_relu=wrelu)
    y_torch = winograd_conv2d(x, w, b, p, 4, backend="torch", stride=s, winograd_relu=wrelu)
    torch.testing.assert_close(y_cpu, y_torch, rtol=0, atol=0)  # the same path, hence the same bits
    if not wrelu:
        oracle = F.conv2d(x.double(), w.double(), b.double(), stride=s, padding=p)
        assert_close_rule(y_cpu, y_torch, oracle, 4)
    conv = torch.nn.Conv2d(5, 8, k, stride=s, padding=p)
    packed = SparseWinogradConv2d.from_conv2d(conv, m=4).packed

    def layer(backend):
        return SparseWinogradConv2d(packed, conv.bias, p, backend, winograd_relu=wrelu)

    with torch.no_grad():
        torch.testing.assert_close(layer("cpu")(x), layer("torch")(x), rtol=0, atol=0)
    assert dispatch.layer_backend(layer("auto"), x) == "torch"
    plain = SparseWinogradConv2d.from_conv2d(torch.nn.Conv2d(5, 8, 3, padding=1), m=4, backend="auto")
    assert dispatch.layer_backend(plain, x) == "cpu"
