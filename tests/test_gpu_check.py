"""The CPU-side parts of bench/gpu_check.sh: the plan, argument handling, the dry run, and a clear
refusal without a GPU (the GPU run itself is what the script is for)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tritonwino.experiments import gpu_check

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


def _run(*args, script="bench/gpu_check.py"):
    cmd = (["bash", script] if script.endswith(".sh") else [sys.executable, script]) + list(args)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})


def test_plan_covers_the_issue_matrix():
    cases = gpu_check.plan()
    assert len(cases) == 4 * 3 * 3 * 2
    assert {(c.c, c.h) for c in cases} == {(64, 56), (128, 28), (256, 14), (512, 7)}
    assert {c.n for c in cases} == {1, 8, 32} and {c.sparsity for c in cases} == {0.0, 0.75, 0.9}
    assert {c.block for c in cases} == {(16, 1), (32, 1)} and {c.m for c in cases} == {4}
    assert (cases[0].c, cases[0].h) == (512, 7)  # deepest layers first, ahead of any time budget


def test_dry_run_prints_the_plan_without_a_gpu():
    proc = _run("--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "72 cases" in proc.stdout and "512@7² N=32 90% (32,1)" in proc.stdout
    proc = _run("--dry-run", "--quick", script="bench/gpu_check.sh")
    assert proc.returncode == 0, proc.stderr
    assert "12 cases" in proc.stdout and "256@14² N=8 75% (16,1)" in proc.stdout


def test_arguments_are_checked():
    proc = _run("--budget-s", "0")
    assert proc.returncode == 2 and "--budget-s must be positive" in proc.stderr
    proc = _run("--help")
    assert proc.returncode == 0 and "F.conv2d" in proc.stdout and "--dry-run" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_refuses_without_a_gpu():
    proc = _run("--quick", "--out", "/nonexistent-not-written")
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr
    proc = _run("--quick", script="bench/gpu_check.sh")
    assert proc.returncode != 0 and "no CUDA GPU" in proc.stderr
