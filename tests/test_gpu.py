"""What only a GPU can check: tensor-core numerics of both sparse paths, no host sync in the steady
state (a layer captured in a CUDA graph), and torch.compile seeing the kernels through the
triton_op. Skipped without a GPU; bench/gpu_check.sh runs them (``pytest -m cuda``)."""

import pytest
import torch

from tritonwino import _triton_path, ops, reference
from tritonwino.modules import SparseWinogradConv2d
from tritonwino.sparse_conv import pack_winograd_weight, sparse_winograd_conv2d
from tritonwino.testing import random_pruned_q
from tritonwino.tuning import select

from ._tolerance import assert_close_rule

pytestmark = [pytest.mark.cuda, pytest.mark.kernels]


def _layer(c=64, k=64, sparsity=0.75, block=(32, 1), dtype=torch.float16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = random_pruned_q(k, c, 4, 3, sparsity, block, generator=gen)
    packed = pack_winograd_weight(q, block, dtype=torch.float32).to("cuda")
    bias = torch.randn(k, generator=gen).to("cuda", dtype)
    return q, packed, bias


@pytest.mark.parametrize("path", _triton_path.PATHS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_both_paths_on_tensor_cores(path, dtype):
    q, packed, bias = _layer(dtype=dtype)
    x = torch.randn(8, 64, 14, 14, device="cuda").to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = _triton_path.sparse_winograd_conv2d(x, packed, bias, (1, 1), relu=True, path=path)
        y_torch = sparse_winograd_conv2d(x, packed, bias, 1, backend="torch", relu=True)
    oracle = reference.winograd_conv2d_q(x.double(), q.to("cuda"), bias.double(), (1, 1), 4, 3, None, True)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close_rule(y, y_torch, oracle, 4)


@pytest.mark.parametrize("path", _triton_path.PATHS)
def test_layer_captured_in_a_cuda_graph(path, monkeypatch):
    """After one eager call (decisions memoised), the forward has no host sync: it can be captured
    in a CUDA graph, and replaying the graph on new input gives the eager result."""
    monkeypatch.setenv(select.PATH_ENV, path)
    q, packed, bias = _layer()
    layer = SparseWinogradConv2d(packed, bias.float(), 1, backend="triton").cuda().half()
    x = torch.randn(1, 64, 14, 14, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        layer(x)  # warm-up: compile, choose config, fill the caches
        static_x = x.clone()
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            layer(static_x)  # a warm-up on the capture stream, as CUDA graphs require
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            static_y = layer(static_x)
        new_x = torch.randn_like(x)
        static_x.copy_(new_x)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_y, layer(new_x))


def test_torch_compile_sees_the_triton_op(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    q, packed, bias = _layer()
    x = torch.randn(2, 64, 14, 14, device="cuda", dtype=torch.float16)

    def f(x):
        return torch.relu(sparse_winograd_conv2d(x, packed, bias, 1, backend="triton")) * 2

    with torch.no_grad():
        eager = f(x)
        compiled = torch.compile(f, fullgraph=True)(x)
    assert torch.equal(compiled, eager) or (compiled.float() - eager.float()).abs().max() < 1e-2
    # the op itself passes torch.library's checks (fake tensor, schema, autograd registration)
    values = packed.values_as(torch.float16)
    torch.library.opcheck(ops.sparse_winograd_conv2d_triton_op,
                          (x, values, packed.indices, packed.offsets, bias, [1, 1], [4, 3], [64, 64], [32, 1],
                           ops.points_str(packed.points), False, False, "two-kernel", [16, 16, 4, 2]))
