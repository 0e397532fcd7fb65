"""Keeps the pruning experiment (`tritonwino prune`, bench/pruning_fashion_mnist.py) alive: a tiny
run (data subset, one short stage per step)."""

import csv
import os

import pytest

from tritonwino import cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("dataset", ["digits"])
def test_pruning_bench_tiny_run(tmp_path, dataset):
    out = tmp_path / "pruning_tiny"
    rc = cli.main([
        "prune",
        "--dataset", dataset, "--train-limit", "128", "--test-limit", "64", "--dense-epochs", "1",
        "--stage-steps", "1", "--spatial-targets", "0.5", "--winograd-targets", "0.7",
        "--methods", "yu,magnitude,liu", "--threads", "1", "--out", str(out),
    ])
    assert rc == 0
    rows = list(csv.DictReader(open(f"{out}.csv")))
    methods = [r["method"] for r in rows]
    assert methods == ["yu-step1", "yu-step2", "spatial-magnitude", "spatial-magnitude", "liu-magnitude",
                       "liu-magnitude"]
    by = {(r["method"], r["target"]): r for r in rows}
    assert abs(float(by[("yu-step1", "0.5")]["winograd_sparsity"]) - 0.5) < 0.02
    assert abs(float(by[("yu-step2", "0.7")]["winograd_sparsity"]) - 0.7) < 0.01
    assert float(by[("spatial-magnitude", "0.7")]["winograd_sparsity"]) < 0.5
    for r in rows:
        assert r["device"].startswith("CPU") and r["torch"] and r["timestamp"]
        assert float(r["mult_reduction_vs_direct"]) > 2.0  # F(4,3) dense already gives 4x
        assert 0.0 <= float(r["top1"]) <= 100.0
    assert "CPU" in open(f"{out}.md").read()
    assert os.path.getsize(f"{out}.png") > 1000  # the accuracy-vs-sparsity plot
