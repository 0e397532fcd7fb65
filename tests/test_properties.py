"""Property-based tests (hypothesis): over shapes x layouts x dtypes x tiles x point sets x
granularities x bias/ReLU, on both paths, every valid input gives the float64 oracle's answer (the
accuracy rule of tests/_tolerance.py for Triton against the torch path, and the tile's error bound
on both) in the input's dtype and memory format, and every input with one defect raises
ValueError/TypeError. The cases and checks are those of the fuzz harness
(``tritonwino.experiments.fuzz``, ``tritonwino fuzz``), drawn here by hypothesis, derandomized (the
same examples on every run, no example database) and small enough for ``make test``.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tritonwino import _checks
from tritonwino.experiments import fuzz

SETTINGS = dict(derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def valid_cases(draw, backend: str, max_c: int, max_hw: int):
    dtypes = ["float32", "float16", "bfloat16"] + (["float64"] if backend == "torch" else [])
    dtype = draw(st.sampled_from(dtypes))
    limit = _checks.MAX_TILE_FOR_DTYPE[fuzz.DTYPES[dtype]]
    tiles = [t for t in fuzz.TILES if t[0] + t[1] - 1 <= (limit if backend == "torch" else min(limit, 8))]
    m, r = draw(st.sampled_from(tiles))
    pad = draw(st.integers(0, r))
    lo = max(1, r - 2 * pad)
    kind = draw(st.sampled_from(["dense", "dense_pck", "sparse"]))
    p = {
        "valid": True, "kind": kind, "backend": backend, "dtype": dtype, "m": m, "r": r,
        "n_batch": draw(st.integers(0, 2)), "c": draw(st.integers(1, max_c)), "k": draw(st.integers(1, max_c + 4)),
        "h": draw(st.integers(lo, max_hw)), "w": draw(st.integers(lo, max_hw)), "pad": pad,
        "layout": draw(st.sampled_from(["nchw", "channels_last", "strided", "transposed"])),
        "bias": draw(st.sampled_from([None, "contiguous", "strided", "expanded", "float32"])),
        "relu": draw(st.booleans()),
        "points": draw(st.sampled_from([None, "standard", "accurate", "accurate_list"])),
        "scale_exp": draw(st.sampled_from([-2, 0, 1])),
        "case_seed": draw(st.integers(0, 2**31 - 1)),
    }
    if kind == "sparse":
        block = draw(st.sampled_from(fuzz.BLOCKS))
        stores = [None, "float32"] + (["float16", "bfloat16"] if m + r - 1 <= 8 else [])
        p.update(block=list(block), group_k=draw(st.sampled_from([16, 32, 64])) if block[0] == 1 else None,
                 sparsity=draw(st.sampled_from([0.0, 0.5, 0.9, 1.0])), store=draw(st.sampled_from(stores)),
                 arrays=draw(st.sampled_from(["contiguous", "non_contiguous", "saved"])))
    return p


def _check(p):
    with torch.no_grad():
        out = fuzz.run_case(p)
    assert out["status"] == "ok", f"{out['status']}: {out['detail']}\nparams: {p}"


@settings(max_examples=80, **SETTINGS)
@given(valid_cases("torch", max_c=24, max_hw=16))
def test_torch_path_matches_the_oracle(p):
    _check(p)


@pytest.mark.kernels
@settings(max_examples=14, **SETTINGS)
@given(valid_cases("triton", max_c=12, max_hw=9))
def test_triton_path_matches_the_oracle_and_the_torch_path(p):
    _check(p)


@st.composite
def invalid_cases(draw):
    backend = draw(st.sampled_from(["torch", "triton"]))
    p = draw(valid_cases(backend, max_c=8, max_hw=8))
    if p["dtype"] == "float64":
        p["dtype"] = "float32"
    p["n_batch"] = max(1, p["n_batch"])
    defect = draw(st.sampled_from(sorted(d for d, (kinds, _) in fuzz.DEFECTS.items() if p["kind"] in kinds)))
    p.update(valid=False, defect=defect)
    return p


@settings(max_examples=120, **SETTINGS)
@given(invalid_cases())
def test_every_defect_is_a_clear_error(p):
    out = fuzz.run_case(p)  # errors are raised before any kernel launch: no kernels marker
    assert out["status"] in ("ok", "skip"), f"{out['status']}: {out['detail']}\nparams: {p}"


@pytest.mark.slow
def test_fuzz_driver_counts_hangs_and_crashes():
    """The harness's own guarantees: a case past the timeout is a hang, a worker that dies is a crash,
    and the run goes on with a fresh worker."""
    ok = fuzz.generate(0, 0, invalid_share=0.0, backends=("torch",))
    report = fuzz.fuzz(params=[{**ok, "selftest": "hang"}, {**ok, "selftest": "crash"}, ok], timeout_s=20)
    assert report["counts"] == {"ok": 1, "wrong": 0, "crash": 1, "hang": 1, "skip": 0}
    assert [f["status"] for f in report["failures"]] == ["hang", "crash"]


@pytest.mark.e2e
def test_fuzz_cli_writes_its_report(tmp_path):
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "tritonwino.cli", "fuzz", "--cases", "8", "--paths", "torch",
                           "--seed", "1", "--out", str(tmp_path), "--no-progress"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "fuzz.json").read_text())
    assert report["cases"] == 8 and report["counts"]["wrong"] == report["counts"]["crash"] == 0
    assert "silent wrong answer" in (tmp_path / "fuzz.md").read_text()
