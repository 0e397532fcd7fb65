"""torch.library ops: opcheck, fake tensors, torch.compile(fullgraph=True)."""

import tempfile

import pytest
import torch
from torch import nn

from tritonwino import ops
from tritonwino.packing import pack_winograd_weight
from tritonwino.pruning import SpatialPruner
from tritonwino.sparse_conv import SparseWinogradConv2d, convert
from tritonwino.testing import random_pruned_q


def _packed(k=16, c=4, sparsity=0.5, m=4):
    return pack_winograd_weight(random_pruned_q(k, c, m, 3, sparsity, (16, 1)), (16, 1), dtype=torch.float32)


def _sparse_args(x, p, bias, backend, relu=False):
    return (x, p.values, p.indices, p.offsets, bias, [1, 1], [p.m, p.r], [p.K, p.C], list(p.block),
            ops.points_str(p.points), backend, relu, False)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_opcheck_sparse_torch(layout):
    p = _packed()
    x = torch.randn(2, 4, 8, 8)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(ops.sparse_winograd_conv2d_op, _sparse_args(x, p, torch.randn(16), "torch"))
    torch.library.opcheck(ops.sparse_winograd_conv2d_op, _sparse_args(x.half(), p, None, "torch", relu=True))


def test_opcheck_dense_torch():
    p = _packed()
    q = p.unpack()
    q_pck = q.permute(2, 3, 1, 0).reshape(36, 4, 16).contiguous()
    x = torch.randn(2, 4, 9, 7)
    args = (x, q_pck, torch.randn(16), [1, 1], [4, 3], ops.points_str(p.points), "torch", False, False)
    torch.library.opcheck(ops.winograd_conv2d_pck_op, args)


@pytest.mark.kernels
def test_opcheck_sparse_triton_tiny():
    p = _packed(k=16, c=2)
    x = torch.randn(1, 2, 6, 6)
    torch.library.opcheck(ops.sparse_winograd_conv2d_op, _sparse_args(x, p, None, "triton"),
                          test_utils=("test_schema", "test_faketensor"))
    y = ops.sparse_winograd_conv2d_op(*_sparse_args(x, p, None, "triton"))
    y_t = ops.sparse_winograd_conv2d_op(*_sparse_args(x, p, None, "torch"))
    torch.testing.assert_close(y, y_t, rtol=1e-4, atol=1e-5)


def test_fake_impl_on_meta_shapes_and_bad_backend():
    p = _packed()
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    fake = [mode.from_tensor(t) for t in (p.values, p.indices, p.offsets)]
    with mode:
        x = torch.empty(3, 4, 11, 5).contiguous(memory_format=torch.channels_last)
        args = list(_sparse_args(x, p, None, "torch"))
        args[1:4] = fake
        y = ops.sparse_winograd_conv2d_op(*args)
    assert y.shape == (3, 16, 11, 5) and y.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="backend"):
        ops.sparse_winograd_conv2d_op(*_sparse_args(torch.randn(1, 4, 8, 8), p, None, "auto"))


def test_corrupt_arrays_refused_by_the_op():
    p = _packed()
    bad = p.indices.clone()
    bad[0] = 99
    args = list(_sparse_args(torch.randn(1, 4, 8, 8), p, None, "torch"))
    args[2] = bad
    with pytest.raises(ValueError, match="outside"):
        ops.sparse_winograd_conv2d_op(*args)


def _small_pruned(c=4, k=16):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(c, k, 3, padding=1), nn.ReLU(), nn.Conv2d(k, k, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(k, k, 3, stride=2))
    SpatialPruner(model, m=4, block=(16, 1), keep_dense=None, tol=1e-3, max_iter=25).prune(0.6)
    return model.eval()


@pytest.fixture
def inductor_cache(monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="tw-inductor-"))
    yield
    torch._dynamo.reset()


def test_compile_fullgraph_torch_path(inductor_cache):
    model = _small_pruned()
    x = torch.randn(2, 4, 12, 12)
    with torch.no_grad():
        y_pruned = model(x)
    convert(model, backend="torch")
    compiled = torch.compile(model, fullgraph=True)  # a graph break raises here
    with torch.no_grad():
        y_eager = model(x)
        y_c = compiled(x)
        y_c2 = compiled(x)
    assert torch.equal(y_c, y_c2)
    torch.testing.assert_close(y_c, y_eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y_c, y_pruned, rtol=1e-4, atol=1e-4)


@pytest.mark.kernels
def test_compile_fullgraph_auto_dispatch_and_triton_tiny(inductor_cache):
    """aot_eager (no inductor codegen) keeps this test fast; fullgraph still proves no break."""
    model = _small_pruned(c=2)
    x = torch.randn(1, 2, 8, 8)
    with torch.no_grad():
        y_pruned = model(x)
    convert(model, backend="auto")
    with torch.no_grad():
        model(x)  # eager first use: measured decisions are memoized per shape
        y_auto = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(y_auto, y_pruned, rtol=1e-4, atol=1e-4)
    for mod in model.modules():
        if isinstance(mod, SparseWinogradConv2d):
            mod.backend = "triton"
    torch._dynamo.reset()
    with torch.no_grad():
        y_tr = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(y_tr, y_pruned, rtol=1e-4, atol=1e-4)
