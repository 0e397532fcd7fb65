"""The counted-work model: the interpreter counter on toy kernels whose counts are known by hand,
the closed form against the counter on the real kernels, the roofline arithmetic, and the rows."""

import math
import os

import pytest
import torch
import triton
import triton.language as tl
from tritonwino.kernels._common import TL_NAME
from tritonwino.kernels.fused_multiply import dense_block_k, fused_multiply, gpu_configs
from tritonwino.kernels.input_transform import gpu_config

from tritonwino import _triton_path
from tritonwino.experiments.work_model import rows_for
from tritonwino.workmodel.counter import LaunchCount, count_work, total
from tritonwino.workmodel.estimate import dense_launches, pack_stats, sparse_launches
from tritonwino.workmodel.layer_model import LayerCase, count_path, layer_inputs
from tritonwino.workmodel.roofline import GPUS, direct_conv_bound_us, launch_time_us, path_time_us

pytestmark = [pytest.mark.kernels,
              pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                 reason="counts work through the Triton interpreter (a GPU run does not use it)")]


@triton.jit
def _axpy(x_ptr, y_ptr, out_ptr, n, a, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    x = tl.load(x_ptr + i, mask=m)
    y = tl.load(y_ptr + i, mask=m)
    tl.store(out_ptr + i, a * x + y, mask=m)


@triton.jit
def _mm(a_ptr, b_ptr, c_ptr, M: tl.constexpr, N: tl.constexpr, K: tl.constexpr, PREC: tl.constexpr):
    r = tl.arange(0, M)
    c = tl.arange(0, N)
    k = tl.arange(0, K)
    a = tl.load(a_ptr + r[:, None] * K + k[None, :])
    b = tl.load(b_ptr + k[:, None] * N + c[None, :])
    tl.store(c_ptr + r[:, None] * N + c[None, :], tl.dot(a, b, input_precision=PREC))


@triton.jit
def _rowsum_overlap(x_ptr, out_ptr, W: tl.constexpr, BLOCK: tl.constexpr):
    # each program reads a window of 2*BLOCK elements starting at pid*BLOCK (overlapping halves)
    i = tl.program_id(0) * BLOCK + tl.arange(0, 2 * BLOCK)
    x = tl.load(x_ptr + i, mask=i < W, other=0.0)
    tl.store(out_ptr + tl.program_id(0), tl.sum(x, axis=0))


@triton.jit
def _unmasked(x_ptr, out_ptr, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    tl.store(out_ptr + i, tl.load(x_ptr + i))


def test_counter_on_axpy():
    x, y, out = torch.randn(100), torch.randn(100), torch.empty(100)
    with count_work() as launches:
        _axpy[(2,)](x, y, out, 100, 2.0, BLOCK=64)
    (lc,) = launches
    assert lc.kernel == "axpy" and lc.grid == (2, 1, 1) and lc.programs == 2
    assert lc.simt_flops == 2 * 64 * 2          # a*x and +y on every lane, masked ones too
    assert lc.load_bytes == 2 * 100 * 4 and lc.store_bytes == 100 * 4   # active lanes only
    assert lc.unique_load_bytes == 800 and lc.unique_store_bytes == 400
    assert lc.tensor_core_macs == 0 and lc.oob_accesses == 0
    assert torch.allclose(out, 2 * x + y)
    # 400 contiguous bytes of a 64-byte-aligned allocation: 13 sectors of 32 bytes each
    assert lc.unique_load_sectors == 2 * math.ceil(400 / 32) and lc.unique_store_sectors == math.ceil(400 / 32)


@pytest.mark.parametrize("dtype,prec,tc_key", [(torch.float16, "ieee", "fp16"), (torch.bfloat16, "ieee", "bf16"),
                                               (torch.float32, "tf32", "fp32/tf32"), (torch.float32, "ieee", None)])
def test_counter_on_dot(dtype, prec, tc_key):
    a = torch.randn(16, 32).to(dtype)
    b = torch.randn(32, 16).to(dtype)
    c = torch.empty(16, 16)
    if dtype == torch.bfloat16:
        a, b = a.float(), b.float()  # the interpreter cannot multiply bf16 (triton#11584): count as fp32
    with count_work() as launches:
        _mm[(1,)](a, b, c, 16, 16, 32, prec)
    (lc,) = launches
    macs = 16 * 16 * 32
    if tc_key is None:   # IEEE fp32: FMAs on the CUDA cores
        assert lc.simt_flops == lc.dot_simt_flops == 2 * macs and lc.tensor_core_macs == 0
    elif dtype != torch.bfloat16:
        assert dict(lc.tc_macs) == {tc_key: macs} and lc.simt_flops == 0
    es = a.element_size()
    assert lc.load_bytes == lc.unique_load_bytes == 2 * 16 * 32 * es


def test_counter_reduction_overlap_and_launches():
    x = torch.randn(100)
    out = torch.empty(4)
    with count_work() as launches:
        _rowsum_overlap[(4,)](x, out, 100, BLOCK=32)
        _rowsum_overlap[(2,)](x, out, 100, BLOCK=32)
    a, b = launches
    assert a.simt_flops == 4 * 64                    # the float reduction counts its input size
    assert a.load_bytes == 4 * (64 + 64 + 36 + 4)    # active lanes: windows clipped at W=100
    assert a.unique_load_bytes == 100 * 4            # overlapping windows: each address once
    assert b.unique_load_bytes == 96 * 4
    tot = total(launches)
    assert tot.compulsory_bytes == a.compulsory_bytes + b.compulsory_bytes  # each launch reads DRAM anew
    assert torch.allclose(out[:2], torch.stack([x[:64].sum(), x[32:96].sum()]))


def test_counter_detects_out_of_bounds():
    x, out = torch.randn(10), torch.empty(16)
    with count_work() as launches:
        _unmasked[(1,)](x, out, BLOCK=16)
    assert launches[0].oob_accesses == 6


def test_roofline_by_hand():
    lc = LaunchCount("k", (1, 1, 1))
    lc.unique_load_bytes, lc.unique_store_bytes = 3_350_000, 0     # 1 µs on H100
    lc.tc_macs["fp16"] = 494_700_000                               # 1 µs
    lc.simt_flops = 3 * 66_900_000                                 # 3 µs: the bound
    t = launch_time_us(lc, GPUS["H100"])
    assert t["bound"] == "simt" and t["time_us"] == pytest.approx(3.0 + 2.5)
    assert path_time_us([lc, lc], GPUS["H100"]) == pytest.approx(11.0)
    d = direct_conv_bound_us(32, 512, 512, 7, 7, 3, 1, 2, GPUS["H100"])
    assert d["macs"] == 32 * 512 * 512 * 9 * 49
    assert d["bytes"] == 2 * (2 * 32 * 512 * 49 + 512 * 512 * 9)
    assert d["time_us"] == pytest.approx(d["macs"] / 494.7e12 * 1e6 + 2.5)


def _exact_fields(lc: LaunchCount):
    return (dict(lc.tc_macs), lc.simt_flops, lc.unique_load_bytes, lc.unique_store_bytes, lc.store_bytes, lc.grid)


@pytest.mark.parametrize("path", ["one-kernel", "two-kernel", "dense"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_closed_form_equals_counted(path, dtype):
    """The closed form the dispatcher uses gives exactly the interpreter's counts (GPU configs)."""
    case = LayerCase(3, 24, 40, 9, 11, 0.6, (16, 1), dtype=str(dtype).removeprefix("torch."))
    x, packed, q_pck = layer_inputs(case, seed=1)
    counted = count_path(case, path, x, packed, q_pck)
    spec = _triton_path.tile_spec(4, 3, packed.points_fractions())
    es = x.element_size()
    op = TL_NAME[dtype]
    if path == "dense":
        bk = dense_block_k(case.k)
        closed = dense_launches(spec, 3, 24, 40, 9, 11, (1, 1), bk, gpu_configs(4, bk, dtype, "ieee", "v")[0],
                                gpu_config(6), in_es=es, operand=op)
    else:
        src = "v" if path == "two-kernel" else "x"
        closed = sparse_launches(spec, 3, 24, 40, 9, 11, (1, 1), pack_stats(packed), 16, path,
                                 gpu_configs(4, 16, dtype, "ieee", src)[0], gpu_config(6), in_es=es, operand=op)
    assert [lc.kernel for lc in closed] == [lc.kernel for lc in counted]
    for a, b in zip(closed, counted, strict=True):
        assert _exact_fields(a) == _exact_fields(b), a.kernel
        assert b.oob_accesses == 0


def test_closed_form_with_bias_relu_and_winograd_relu():
    case = LayerCase(2, 16, 16, 8, 8, 0.5, (16, 1))
    x, packed, _ = layer_inputs(case, seed=2)
    bias = torch.randn(32, dtype=x.dtype)[::2]
    spec = _triton_path.tile_spec(4, 3, packed.points_fractions())
    for path in ("one-kernel", "two-kernel"):
        call = _triton_path.SparseCall(x, packed, packed.values_as(x.dtype), bias, (1, 1), True, False, True)
        src = "v" if path == "two-kernel" else "x"
        cfg = gpu_configs(4, 16, x.dtype, "ieee", src)[0]
        with torch.no_grad(), count_work() as counted:
            call.run(path, cfg, gpu_config(6))
        closed = sparse_launches(spec, 2, 16, 16, 8, 8, (1, 1), pack_stats(packed), 16, path, cfg, gpu_config(6),
                                 has_bias=True, relu=True, winograd_relu=True)
        for a, b in zip(closed, counted, strict=True):
            assert _exact_fields(a) == _exact_fields(b), (path, a.kernel)


def test_sparse_macs_follow_kept_channels():
    """Work is proportional to what is kept: one BLOCK_T x BLOCK_C x group_k dot per chunk of kept
    channels, nothing for pruned ones (both paths)."""
    for sparsity in (0.0, 0.5, 0.9):
        case = LayerCase(1, 64, 32, 8, 8, sparsity, (16, 1))
        x, packed, _ = layer_inputs(case, seed=3)
        counts = (packed.offsets[1:] - packed.offsets[:-1]).tolist()
        for path in ("one-kernel", "two-kernel"):
            cfg = gpu_configs(4, 16, x.dtype, "ieee", "x" if path == "one-kernel" else "v")[0]
            fused = count_path(case, path, x, packed)[-1]
            chunks = sum(math.ceil(cnt / cfg.block_c) for cnt in counts)
            assert fused.tensor_core_macs == math.ceil(16 / cfg.block_t) * cfg.block_t * cfg.block_c * 16 * chunks
        assert abs(packed.density - (1 - sparsity)) < 0.08


def test_model_rows_are_labelled_and_complete():
    case = LayerCase(1, 16, 16, 6, 6, 0.5, (16, 1))
    rows = rows_for(case, ["one-kernel"], ["A100", "H100", "H200"], {"timestamp": "t"}, counted=True)
    assert [r["gpu_name"] for r in rows] == [GPUS[g].name for g in ("A100", "H100", "H200")]
    for r in rows:
        assert r["title"] == "model, not a measurement" and r["method"] == "counted"
        assert r["closed_form_agrees"] is True and r["oob_accesses"] == 0
        assert r["launches"] == 1 and r["timestamp"] == "t"
        assert r["peak_dram_tb_s"] > 0 and r["peak_launch_us"] == 2.5
        assert r["speedup_vs_direct"] == pytest.approx(r["direct_conv_us"] / r["modeled_us"])
        assert r["dram_vs_ideal"] <= 1.0 + 1e-9  # one kernel: X, the packed weight and Y, nothing else


def test_fused_launch_writes_every_output_once():
    """M never in memory: the two-kernel path stores V and Y only, the one-kernel path Y only."""
    case = LayerCase(2, 16, 16, 7, 7, 0.5, (16, 1))
    x, packed, q = layer_inputs(case)
    y_bytes = 2 * 16 * 7 * 7 * 2
    one = count_path(case, "one-kernel", x, packed, q)
    two = count_path(case, "two-kernel", x, packed, q)
    assert len(one) == 1 and one[0].store_bytes == one[0].unique_store_bytes == y_bytes
    v_bytes = 36 * 16 * (2 * 2 * 2) * 2
    assert [lc.store_bytes for lc in two] == [v_bytes, y_bytes]
    dense = count_path(case, "dense", x, packed, q)
    assert dense[-1].store_bytes == y_bytes
    _ = fused_multiply  # the launcher under test


@pytest.mark.e2e
def test_bench_work_model_quick_writes_labelled_rows_and_plot(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "bench/work_model.py", "--quick", "--gpus", "H100", "--out", str(tmp_path)],
                          cwd=root, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "work_model.json").read_text())
    assert rows and all(r["title"] == "model, not a measurement" for r in rows)
    assert {r["method"] for r in rows} == {"closed-form", "counted"}
    assert all(r["closed_form_agrees"] for r in rows if r["method"] == "counted")
    assert (tmp_path / "work_model.png").stat().st_size > 10_000
    assert "model, not a measurement" in (tmp_path / "work_model.md").read_text()
