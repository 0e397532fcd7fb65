"""F(6, r) has no spill-free GPU kernel (kernels.fused_multiply.GPU_MAX_M): on a CUDA tensor the
Triton path refuses it with a clear error and "auto" routes it to the torch path; the interpreter
(CPU tensors) still runs every tile. No GPU here, so a stand-in object plays the CUDA tensor for
the routing rules (they read only ``is_cuda`` / ``requires_grad``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tritonwino.kernels.fused_multiply import GPU_MAX_M, MAXNREG, compile_specs

import tritonwino.functional as F_tw
from tritonwino import dispatch
from tritonwino._triton_path import check_gpu_tile, shipped_tiles

CUDA_LIKE = SimpleNamespace(is_cuda=True, requires_grad=False, device=SimpleNamespace(type="cuda"))


def test_gpu_tile_limit_names_the_tile_and_the_way_out():
    with pytest.raises(ValueError, match=r"F\(6, r\).*m <= 4.*backend='torch'"):
        check_gpu_tile(6, CUDA_LIKE)
    check_gpu_tile(GPU_MAX_M, CUDA_LIKE)          # F(4, r) runs
    check_gpu_tile(6, torch.zeros(1, 1, 4, 4))   # the interpreter runs every tile


def test_auto_backend_routes_large_tiles_to_torch_on_cuda():
    assert F_tw.resolve_backend("auto", CUDA_LIKE, m=4) == "triton"
    assert F_tw.resolve_backend("auto", CUDA_LIKE, m=6) == "torch"
    assert F_tw.resolve_backend("auto", CUDA_LIKE) == "triton"   # not a tiled call
    assert F_tw.resolve_backend("triton", CUDA_LIKE, m=6) == "triton"  # pinned: the kernel call refuses


def test_dispatch_keeps_large_tiles_off_the_triton_backend(monkeypatch):
    monkeypatch.setattr(dispatch, "winograd_backend", lambda x: "triton")
    assert dispatch.layer_backend(SimpleNamespace(m=6), CUDA_LIKE) == "torch"
    assert dispatch.layer_backend(SimpleNamespace(m=4), CUDA_LIKE) == "triton"


def test_compile_gate_covers_exactly_the_gpu_tiles_with_maxnreg():
    tiles = shipped_tiles()
    assert tiles and all(spec.m <= GPU_MAX_M for _, spec in tiles)
    assert {spec.m for _, spec in tiles} == {2, 4}
    specs = compile_specs(tiles)
    # every fused launch config carries the explicit register limit it is launched with
    assert specs and all(s.maxnreg == MAXNREG for s in specs)


@pytest.mark.kernels
def test_interpreter_still_runs_f6_on_the_triton_path():
    torch.manual_seed(0)
    x, w = torch.randn(1, 3, 9, 9), torch.randn(4, 3, 3, 3)
    y = F_tw.winograd_conv2d(x, w, None, 1, m=6, backend="triton")
    ref = torch.nn.functional.conv2d(x.double(), w.double(), padding=1).float()
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-3)  # F(6,3) fp32: measured error ~1e-5 at this size
