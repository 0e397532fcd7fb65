"""`tritonwino info` end to end (CLI run as a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import triton

from tritonwino.tuning import TuningCache, cache_path

pytestmark = pytest.mark.e2e


def _run_info(env_updates: dict[str, str | None], *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    for k, v in env_updates.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return subprocess.run([sys.executable, "-m", "tritonwino.cli", "info", *extra], env=env,
                          capture_output=True, text=True, timeout=120)


def test_info_json_fields_and_cache_summary(tmp_path):
    # Pre-populate a cache in a private dir with the key the child process will use.
    interp = "cpu-interpreter" if not torch.cuda.is_available() else None
    env = {"TRITONWINO_CACHE_DIR": str(tmp_path), "TRITON_INTERPRET": "1" if interp else None}
    dev = interp or torch.cuda.get_device_name()
    cache = TuningCache(tmp_path / cache_path(dev).name, device=dev)
    cache.put("winograd_gemm", "k1", {"BLOCK_T": 64})
    cache.put("winograd_gemm", "k2", {"BLOCK_T": 32})
    cache.put("sparse_winograd_gemm", "k1", {"BLOCK_T": 64})

    proc = _run_info(env, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["versions"]["torch"] == torch.__version__
    assert info["versions"]["triton"] == triton.__version__
    assert info["versions"]["tritonwino"]
    assert info["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert info["device"]["type"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert info["device"]["name"]
    assert info["device"]["cpu_count"] == os.cpu_count()
    assert info["paths"][-1] == "torch"
    assert ("triton-gpu" in info["paths"]) == torch.cuda.is_available()
    c = info["tuning_cache"]
    assert c["path"] == str(cache.path)
    assert c["exists"] is True
    assert c["entries"] == 3
    assert c["per_kernel"] == {"sparse_winograd_gemm": 1, "winograd_gemm": 2}
    if interp:
        assert info["triton_interpret"] is True
        assert "triton-interpreter" in info["paths"]


def test_info_without_interpreter_and_text_output(tmp_path):
    proc = _run_info({"TRITONWINO_CACHE_DIR": str(tmp_path / "empty"), "TRITON_INTERPRET": None}, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["triton_interpret"] is False
    assert "triton-interpreter" not in info["paths"]
    assert info["tuning_cache"]["exists"] is False
    assert info["tuning_cache"]["entries"] == 0
    assert info["tuning_cache"]["path"].startswith(str(tmp_path / "empty"))

    text = _run_info({"TRITONWINO_CACHE_DIR": str(tmp_path / "empty")})
    assert text.returncode == 0, text.stderr
    assert "tuning cache" in text.stdout and str(tmp_path / "empty") in text.stdout
    assert f"triton {triton.__version__}" in text.stdout


def test_info_reports_corrupt_cache(tmp_path):
    env = {"TRITONWINO_CACHE_DIR": str(tmp_path), "TRITON_INTERPRET": None}
    proc = _run_info(env, "--json")
    assert proc.returncode == 0, proc.stderr
    path = json.loads(proc.stdout)["tuning_cache"]["path"]
    with open(path, "w") as f:
        f.write("{broken")
    proc = _run_info(env, "--json")
    assert proc.returncode == 0, proc.stderr
    c = json.loads(proc.stdout)["tuning_cache"]
    assert c["entries"] == 0
    assert any("ignoring tuning cache" in w for w in c["warnings"])
