"""The AOT compile gate (`tritonwino compile-check`).

Compilation must run without TRITON_INTERPRET (which conftest turns on when there is no GPU), so
the tests that compile run in a subprocess with it unset; that subprocess imports this module to
get the small kernels below as real (not interpreted) JIT functions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton
import triton.language as tl
from tritonwino.kernels.registry import CompileSpec

from tritonwino.aot import (
    COLUMNS,
    Row,
    format_table,
    has_tensor_core_instructions,
    parse_ptxas_log,
    select_specs,
)

TESTS_DIR = Path(__file__).resolve().parent


@triton.jit
def _add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) + tl.load(y_ptr + offs, mask=mask), mask=mask)


@triton.jit
def _dot_kernel(a_ptr, b_ptr, c_ptr, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                PRECISION: tl.constexpr):
    rm = tl.arange(0, BM)
    rn = tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, K, BK):
        a = tl.load(a_ptr + rm[:, None] * K + (k + rk)[None, :])
        b = tl.load(b_ptr + (k + rk)[:, None] * BN + rn[None, :])
        acc += tl.dot(a, b, input_precision=PRECISION)
    tl.store(c_ptr + rm[:, None] * BN + rn[None, :], acc)


def _dot_sig(dt: str) -> dict[str, str]:
    return {"a_ptr": f"*{dt}", "b_ptr": f"*{dt}", "c_ptr": "*fp32", "K": "i32",
            "BM": "constexpr", "BN": "constexpr", "BK": "constexpr", "PRECISION": "constexpr"}


def _specs() -> list[CompileSpec]:
    add_sig = {"x_ptr": "*fp32", "y_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"}
    return [
        CompileSpec("add", _add_kernel, add_sig, {"BLOCK": 1024}, num_warps=4, num_stages=1, label="B1024"),
        CompileSpec("dot", _dot_kernel, _dot_sig("fp16"),
                    {"BM": 64, "BN": 64, "BK": 32, "PRECISION": "ieee"}, num_warps=4, num_stages=2,
                    label="64x64x32 fp16", expects_mma=True),
        # fp32 ieee dot runs on FMA units: claiming tensor cores must be reported as NO-MMA
        CompileSpec("dot", _dot_kernel, _dot_sig("fp32"),
                    {"BM": 32, "BN": 32, "BK": 16, "PRECISION": "ieee"}, num_warps=4, num_stages=1,
                    label="32x32x16 fp32 ieee", expects_mma=True),
        # a non-power-of-2 block does not compile: reported as FAIL, not raised
        CompileSpec("add", _add_kernel, add_sig, {"BLOCK": 1000}, num_warps=4, num_stages=1, label="B1000"),
        # 128x128 fp32 accumulator in one warp = 512 values per thread: must spill
        CompileSpec("dot", _dot_kernel, _dot_sig("fp32"),
                    {"BM": 128, "BN": 128, "BK": 16, "PRECISION": "ieee"}, num_warps=1, num_stages=1,
                    label="128x128x16 fp32 w1"),
    ]


def _env_without_interpreter(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    return env


@pytest.mark.kernels
def test_check_specs_on_own_kernels(tmp_path):
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(TESTS_DIR)!r})\n"
        "import test_compile_check as t\n"
        "from tritonwino.aot import check_specs\n"
        f"rows = check_specs(t._specs(), ['sm_80', 'sm_90'], jobs=2, save_dir={str(tmp_path / 'ptx')!r})\n"
        "print(json.dumps([r.to_dict() for r in rows]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=_env_without_interpreter(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [(r["kernel"], r["config"], r["arch"]) for r in rows] == [
        (s.kernel, s.label, a) for s in _specs() for a in ("sm_80", "sm_90")]
    by = {(r["config"], r["arch"]): r for r in rows}

    for arch in ("sm_80", "sm_90"):
        add = by[("B1024", arch)]
        assert add["status"] == "ok" and add["tensor_cores"] is False
        assert 0 < add["regs"] <= 255 and add["spill_bytes"] == 0

        mma = by[("64x64x32 fp16", arch)]
        assert mma["status"] == "ok", mma["error"]
        assert mma["tensor_cores"] is True and mma["smem"] > 0 and mma["spill_bytes"] == 0

        assert by[("32x32x16 fp32 ieee", arch)]["status"] == "NO-MMA"
        assert by[("32x32x16 fp32 ieee", arch)]["tensor_cores"] is False

        bad = by[("B1000", arch)]
        assert bad["status"] == "FAIL" and "power of 2" in bad["error"]

        spill = by[("128x128x16 fp32 w1", arch)]
        assert spill["status"] == "SPILL" and spill["spill_bytes"] > 0

    # the instruction that shows tensor cores differs per arch
    ptx80 = (tmp_path / "ptx" / "dot-64x64x32-fp16-sm-80.ptx").read_text()
    ptx90 = (tmp_path / "ptx" / "dot-64x64x32-fp16-sm-90.ptx").read_text()
    assert "mma.sync" in ptx80 and "wgmma" in ptx90
    assert "sm_90a" in (tmp_path / "ptx" / "dot-64x64x32-fp16-sm-90.ptxas.log").read_text()


@pytest.mark.e2e
def test_cli_compile_check_subset(tmp_path):
    env = dict(os.environ)
    env["TRITON_INTERPRET"] = "1"  # the command must re-run itself without the interpreter
    json_path = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, "-m", "tritonwino.cli", "compile-check", "--limit", "1",
                           "--json", str(json_path), "--out", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=600)
    from tritonwino.kernels.registry import all_compile_specs

    from tritonwino._triton_path import shipped_tiles

    specs = select_specs(all_compile_specs(shipped_tiles()), limit=1)
    if not specs:
        assert proc.returncode == 0, proc.stderr
        assert "nothing to check" in proc.stdout
        return
    assert json_path.exists(), f"rc={proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    rows = json.loads(json_path.read_text())
    assert len(rows) == 2 * len(specs)
    assert {r["arch"] for r in rows} == {"sm_80", "sm_90"}
    header = [c.strip() for c in proc.stdout.splitlines()[0].strip("|").split("|")]
    assert header == list(COLUMNS)
    assert proc.returncode == (0 if all(r["status"] == "ok" for r in rows) else 1), proc.stdout + proc.stderr
    assert "re-running without it" in proc.stderr
    assert (tmp_path / "out" / "compile_check.csv").exists()
    assert json.loads((tmp_path / "out" / "compile_check.json").read_text()) == rows


def test_parse_ptxas_log_and_tensor_core_detection():
    log = (
        "ptxas info    : Compiling entry function 'k' for 'sm_80'\n"
        "ptxas info    : Function properties for k\n"
        "    8 bytes stack frame, 16 bytes spill stores, 24 bytes spill loads\n"
        "ptxas info    : Used 168 registers, used 1 barriers, 408 bytes cmem[0]\n"
    )
    assert parse_ptxas_log(log) == (168, 16, 24)
    assert parse_ptxas_log("garbage") == (None, None, None)
    assert has_tensor_core_instructions("\tmma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%r1}")
    assert has_tensor_core_instructions("\twgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {")
    assert not has_tensor_core_instructions("\tfma.rn.f32 %f1, %f2, %f3, %f4;\n\tld.global.v4.b32")


def test_select_specs_and_table():
    specs = _specs()
    assert [s.label for s in select_specs(specs, limit=1)] == ["B1024", "64x64x32 fp16"]
    assert {s.kernel for s in select_specs(specs, ["dot"])} == {"dot"}
    assert select_specs(specs, ["nope"]) == []
    rows = [Row("dot", "64x64x32 fp16", "sm_80", regs=128, spill_stores=0, spill_loads=0, smem=16384,
                tensor_cores=True, seconds=0.5),
            Row("add", "B1000", "sm_90", status="FAIL", error="boom")]
    table = format_table(rows).splitlines()

    def cells(line):
        return [c.strip() for c in line.strip("|").split("|")]

    assert cells(table[0]) == list(COLUMNS)
    assert cells(table[2])[:7] == ["dot", "64x64x32 fp16", "sm_80", "128", "0", "-", "16384"]
    assert "yes" in table[2] and "FAIL" in table[3]


def test_occupancy_from_registers_and_shared_memory():
    """Resident warps per SM by the CUDA occupancy rules (registers allocated per warp in units of
    256, 1 KB of shared memory reserved per block), A100 and H100 limits."""
    from tritonwino.aot import SM_LIMITS, occupancy

    a100, h100 = SM_LIMITS["sm_80"], SM_LIMITS["sm_90"]
    assert occupancy(255, 1536, 8, a100) == (8, "regs")        # 8192 regs per warp: 8 warps, one block
    assert occupancy(128, 16384, 4, a100) == (16, "regs")      # 4096 per warp: 16 warps
    assert occupancy(40, 0, 4, h100) == (48, "regs")           # 40*32=1280 -> 1280: 51 warps -> 12 blocks of 4
    assert occupancy(32, 0, 4, h100)[0] == 64                  # the 64-warp ceiling
    assert occupancy(64, 100_000, 4, h100) == (8, "smem")      # 228 KB / (100000 + 1024) -> 2 blocks
    assert occupancy(64, 100_000, 4, a100) == (4, "smem")      # 164 KB -> 1 block


def test_committed_compile_record_covers_every_shipped_config():
    """bench/results/compile_check.json (the last full gate, committed) names exactly the configs
    the launchers can run now, each ok on both architectures: a config added or changed without
    rerunning the gate fails here (the gate itself runs in CI, ~35 minutes). The specs are listed
    without TRITON_INTERPRET, as the gate does (some launch sizes differ under the interpreter)."""
    code = ("import json; from tritonwino._triton_path import shipped_tiles; "
            "from tritonwino.kernels.registry import all_compile_specs; "
            "print(json.dumps([[s.kernel, s.label] for s in all_compile_specs(shipped_tiles())]))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    shipped = {(k, label, arch) for k, label in json.loads(out) for arch in ("sm_80", "sm_90")}
    rows = json.loads((TESTS_DIR.parent / "bench" / "results" / "compile_check.json").read_text())
    assert {(r["kernel"], r["config"], r["arch"]) for r in rows} == shipped
    assert all(r["status"] == "ok" and r["spill_bytes"] == 0 for r in rows)
