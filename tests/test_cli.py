"""The command line end to end: every subcommand run as a subprocess (`python -m tritonwino.cli`),
its files opened and checked."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import pandas as pd
import pytest
import torch

from tritonwino import cli
from tritonwino.tuning import TuningCache, cache_path

pytestmark = pytest.mark.e2e

HAS_CUDA = torch.cuda.is_available()
# Without a GPU and without TRITON_INTERPRET (a user's plain shell) the cache is keyed "cpu".
CPU_DEVICE = "cpu"


def run_cli(*args: str, cache_dir: Path, env_updates: dict[str, str | None] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m tritonwino.cli ARGS`` as a user would: no TRITON_INTERPRET (unless asked),
    a private tuning cache, output captured."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["TRITONWINO_CACHE_DIR"] = str(cache_dir)
    for k, v in (env_updates or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return subprocess.run([sys.executable, "-m", "tritonwino.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def check_png(path: Path) -> None:
    """A real plot: a readable PNG of a sensible size that is not a blank canvas."""
    assert path.is_file(), f"missing {path}"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] >= 200 and img.shape[1] >= 200, img.shape
    rgb = img[..., :3].reshape(-1, 3)
    assert float(rgb.std()) > 0.02, f"{path} looks blank"
    assert len({tuple(p) for p in rgb[:: max(1, len(rgb) // 20000)].round(2).tolist()}) > 10, f"{path}: too few colours"


# --------------------------------------------------------------------------------------------
# bench + plot
# --------------------------------------------------------------------------------------------

BENCH_COLUMNS = {"C", "K", "H", "W", "N", "tile", "block", "target_sparsity", "winograd_sparsity", "kept_slots",
                 "path", "dtype", "conv2d_ms", "dense_winograd_ms", "sparse_ms", "sparse_ms_p20", "sparse_ms_p80",
                 "speedup_vs_conv2d", "packed_bytes_fp32", "dense_spatial_bytes_fp32", "device", "torch", "triton",
                 "tritonwino", "threads", "timer", "timestamp"}


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    proc = run_cli("bench", "--out", str(out), "--shapes", "16:8", "--sparsities", "0", "0.9", "--blocks", "16x1",
                   "--tiles", "2", "--batches", "1", "--plot", cache_dir=tmp_path_factory.mktemp("cache"))
    assert proc.returncode == 0, proc.stderr
    return out


def test_bench_rows_and_plots(bench_dir):
    dev = "cuda" if HAS_CUDA else "cpu"
    df = pd.read_csv(bench_dir / f"sparse_layers_{dev}.csv")
    assert BENCH_COLUMNS <= set(df.columns), BENCH_COLUMNS - set(df.columns)
    from tritonwino.experiments.layer_bench import default_paths

    paths = default_paths(torch.device(dev))
    assert HAS_CUDA or "cpu" in paths or shutil.which("g++") is None  # the C++ kernels are timed where they build
    assert len(df) == 2 * len(paths)  # 1 shape x 2 sparsities x 1 block x 1 tile x 1 batch x paths
    assert set(df["path"]) == set(paths)
    # one interleaved run per shape: every row shares the conv2d timing it is compared with
    assert df["conv2d_ms"].nunique() == 1 and (df["conv2d_ms_p20"] <= df["conv2d_ms_p80"]).all()
    assert set(df["timing"]) == {"interleaved"}
    assert (df[["C", "K", "H", "W", "N"]].values == [16, 16, 8, 8, 1]).all()
    assert set(df["tile"]) == {"F(2,3)"} and set(df["block"]) == {"16x1"}
    dense, pruned = df[df.target_sparsity == 0].iloc[0], df[df.target_sparsity == 0.9].iloc[0]
    assert dense.winograd_sparsity == 0 and dense.kept_slots == 1.0
    assert pruned.winograd_sparsity > 0.8 and pruned.kept_slots < 0.25
    assert pruned.packed_bytes_fp32 < dense.packed_bytes_fp32
    assert (df[["conv2d_ms", "dense_winograd_ms", "sparse_ms"]] > 0).all().all()
    assert df["speedup_vs_conv2d"].tolist() == pytest.approx((df.conv2d_ms / df.sparse_ms).tolist())
    assert set(df["timer"]) == {"cuda-do_bench" if HAS_CUDA else "cpu-perf_counter"}
    js = json.loads((bench_dir / f"sparse_layers_{dev}.json").read_text())
    assert len(js) == len(df) and js[0]["C"] == 16
    check_png(bench_dir / f"sparse_layers_{dev}_speedup_N1.png")
    check_png(bench_dir / f"sparse_layers_{dev}_memory.png")


def test_plot_rebuilds_from_saved_rows(bench_dir, tmp_path):
    dev = "cuda" if HAS_CUDA else "cpu"
    out = tmp_path / "plots"
    for ext in ("csv", "json"):
        proc = run_cli("plot", str(bench_dir / f"sparse_layers_{dev}.{ext}"), "--out", str(out), cache_dir=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "wrote" in proc.stdout
        check_png(out / f"sparse_layers_{dev}_speedup_N1.png")
        check_png(out / f"sparse_layers_{dev}_memory.png")


def test_plot_bad_input_fails_clearly(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    proc = run_cli("plot", str(bad), "--out", str(tmp_path / "p"), cache_dir=tmp_path)
    assert proc.returncode != 0
    assert "not a result file" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "p").exists() or not list((tmp_path / "p").glob("*.png"))

    proc = run_cli("plot", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "p"), cache_dir=tmp_path)
    assert proc.returncode != 0
    assert "missing.csv" in proc.stderr and "Traceback" not in proc.stderr

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    proc = run_cli("plot", str(broken), "--out", str(tmp_path / "p"), cache_dir=tmp_path)
    assert proc.returncode != 0
    assert "cannot read" in proc.stderr and "Traceback" not in proc.stderr


def test_plot_pruning_rows(tmp_path):
    """The committed pruning results (top-1 in percent) become an accuracy-vs-sparsity plot."""
    rows = Path(__file__).resolve().parents[1] / "bench" / "results" / "pruning_accuracy.csv"
    proc = run_cli("plot", str(rows), "--out", str(tmp_path), cache_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    check_png(tmp_path / "pruning_accuracy_accuracy.png")


# --------------------------------------------------------------------------------------------
# tune
# --------------------------------------------------------------------------------------------

def _cpu_cache(cache_dir: Path) -> TuningCache:
    return TuningCache(cache_dir / cache_path(CPU_DEVICE).name, device=CPU_DEVICE)


def test_tune_dry_run_lists_keys_and_writes_nothing_to_the_cache(tmp_path):
    cache_dir = tmp_path / "cache"
    proc = run_cli("tune", "--shapes", "16:16:8", "32:16:6:10", "--batch", "1", "2", "--dry-run",
                   "--out", str(tmp_path / "out"), cache_dir=cache_dir)
    assert proc.returncode == 0, proc.stderr
    assert "dry run: 4 keys" in proc.stdout
    if not HAS_CUDA:
        assert "nothing to tune for the Triton kernels" in proc.stdout
        assert "on a CUDA GPU" in proc.stdout
        assert proc.stdout.count("cpu_dispatch ") == 4
    assert "C=16|H=8|K=16|N=1|W=8" in proc.stdout or HAS_CUDA
    plan = pd.read_csv(tmp_path / "out" / f"plan_{'cuda' if HAS_CUDA else 'cpu'}.csv")
    assert len(plan) == 4 and set(plan["N"]) == {1, 2} and (plan["candidates"] >= 1).all()
    assert not plan["cached"].any()
    assert not any(cache_dir.glob("*.json")), "a dry run must not write the cache"


def test_tune_arch_dry_run_shares_keys_between_identical_layers(tmp_path):
    # Sparsity 0 makes every density exactly 1, so layers of one shape have one key (with random
    # masks the density bucket of two same-shape layers may differ, and then so do their keys).
    proc = run_cli("tune", "--arch", "resnet18", "--sparsity", "0", "--block", "16x1", "--tile", "4",
                   "--dry-run", cache_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # ResNet-18 (ResNet.max) has 16 stride-1 3x3 convs in 7 distinct shapes.
    assert proc.stdout.count("layers.") >= 16
    if not HAS_CUDA:
        assert "dry run: 7 keys" in proc.stdout
        assert "layers.2.conv2, layers.3.conv1, layers.3.conv2" in proc.stdout


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU dispatch timings; on a GPU test_tune_gpu runs instead")
def test_tune_cpu_writes_report_rows_and_nothing_to_the_cache(tmp_path):
    cache_dir = tmp_path / "cache"
    out = tmp_path / "out"
    proc = run_cli("tune", "--shapes", "16:16:8", "32:16:6:10", "--batch", "1", "--reps", "2", "--out", str(out),
                   cache_dir=cache_dir)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to tune for the Triton kernels on this machine" in proc.stdout
    assert "winners (CPU)" in proc.stdout and proc.stdout.count("best ") == 2
    df = pd.read_csv(out / "tune_cpu.csv")
    assert len(df) == 2 and set(df["kernel"]) == {"cpu_dispatch"}
    assert list(zip(df.C, df.K, df.H, df.W, strict=True)) == [(16, 16, 8, 8), (32, 16, 6, 10)]
    cache = _cpu_cache(cache_dir)
    assert cache.summary() == {}  # a report: the rows go to --out, never into the tuning cache
    for row in df.itertuples():
        ms = {"conv2d": row.conv2d_ms, "dense": row.dense_ms, "sparse": row.sparse_ms}
        assert row.winner == min(ms, key=ms.__getitem__)
        assert row.timer == "cpu-perf_counter" and row.device_type == "cpu"
    assert json.loads((out / "tune_cpu.json").read_text())[0]["key"] == df.key[0]

    # `info` reads the same (still empty) cache.
    proc = run_cli("info", "--json", cache_dir=cache_dir)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["tuning_cache"]["path"] == str(cache.path)
    assert info["tuning_cache"]["per_kernel"] == {}
    assert info["paths"] == ["torch"] and info["triton_interpret"] is False
    assert info["versions"]["torch"] == torch.__version__


def test_tune_triton_loop_writes_kernel_cache(tmp_path):
    """The Triton tuning loop (on a GPU; without one, under the interpreter with --interpreter)
    times several configs and stores a winner per kernel and key."""
    cache_dir = tmp_path / "cache"
    proc = run_cli("tune", "--shapes", "16:16:8", "--batch", "1", "--interpreter", "--dtype", "float32",
                   "--out", str(tmp_path / "out"), cache_dir=cache_dir,
                   env_updates=None if HAS_CUDA else {"TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stderr
    dev = torch.cuda.get_device_name() if HAS_CUDA else "cpu-interpreter"
    cache = TuningCache(cache_dir / cache_path(dev).name, device=dev)
    df = pd.read_csv(tmp_path / "out" / f"tune_{'cuda' if HAS_CUDA else 'cpu'}.csv")
    # float32: the two-kernel sparse path only (the one-kernel path is for half operands)
    assert sorted(df["kernel"]) == ["fused_dense", "fused_sparse"] + (["sparse_path"] if HAS_CUDA else [])
    if not HAS_CUDA:  # the interpreter run times exactly two configs per kernel
        assert cache.summary() == {"fused_dense": 1, "fused_sparse": 1}
        assert (df["candidates"] == 2).all()
    for row in df.itertuples():
        if row.candidates == 1:  # a single config is used without timing, and not cached
            assert row.status == "single config, not timed"
            continue
        entry = cache.get_entry(row.kernel, row.key)
        assert entry is not None
        assert len(entry["timings"]) + len(entry.get("errors", {})) == row.candidates
        assert row.status == "tuned" and row.best_ms == pytest.approx(min(entry["timings"].values()))
        assert row.winner in entry["timings"]
    assert "winners" in proc.stdout

    # A second run finds every key cached and times nothing.
    proc = run_cli("tune", "--shapes", "16:16:8", "--batch", "1", "--interpreter", "--dtype", "float32",
                   "--out", str(tmp_path / "out2"), cache_dir=cache_dir,
                   env_updates=None if HAS_CUDA else {"TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stderr
    df2 = pd.read_csv(tmp_path / "out2" / f"tune_{'cuda' if HAS_CUDA else 'cpu'}.csv")
    assert set(df2["status"]) <= {"cached", "single config, not timed"} and "cached" in set(df2["status"])


def test_tune_saved_model(tmp_path):
    from tritonwino.experiments.models import SmallVGG
    from tritonwino.sparse_conv import convert

    model = SmallVGG(10, 1, cfg=(16, "M", 16))
    with torch.no_grad():  # prune half the input channels of the second conv, as a pruner would
        model.features[4].weight[:, ::2] = 0
    converted = convert(model, m=4, block=(16, 1))
    path = tmp_path / "model.pt"
    torch.save(converted, path)
    proc = run_cli("tune", "--model", str(path), "--input-size", "12", "--dry-run", cache_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "2 SparseWinogradConv2d layers" in proc.stdout
    assert "C=16   K=16   6x6" in proc.stdout  # second conv sees 16 channels at 12/2

    # A real run also measures what each backend="auto" layer will run, and caches it for them.
    proc = run_cli("tune", "--model", str(path), "--input-size", "12", "--batch", "2", cache_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "per-layer dispatch at batch 2" in proc.stdout
    table = proc.stdout.split("per-layer dispatch at batch 2")[1]
    assert "features.4" in table and "measured" in table
    assert _cpu_cache(tmp_path).summary().get("dispatch", 0) >= 2

    torch.save(converted.state_dict(), tmp_path / "sd.pt")
    proc = run_cli("tune", "--model", str(tmp_path / "sd.pt"), "--dry-run", cache_dir=tmp_path)
    assert proc.returncode != 0 and "state_dict" in proc.stderr and "Traceback" not in proc.stderr


def test_tune_dry_run_without_layers_shows_the_default_plan(tmp_path):
    proc = run_cli("tune", "--dry-run", cache_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "the plan for the default, --arch resnet18" in proc.stdout
    assert "dry run:" in proc.stdout and proc.stdout.count("layers.") >= 16
    proc = run_cli("tune", cache_dir=tmp_path)  # timing needs an explicit choice
    assert proc.returncode != 0 and "exactly one of --arch, --model or --shapes" in proc.stderr
    assert "--dry-run alone shows the plan" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--arch", "vgg16", "--shapes", "16:16:8"], "exactly one of"),
    (["--shapes", "16:16"], "C:K:H"),
    (["--shapes", "16:16:8", "--block", "16-1"], "BKxBC"),
    (["--shapes", "16:16:8", "--block", "8x1"], "bk must be 1"),
    (["--shapes", "16:16:8", "--sparsity", "1.5"], "--sparsity"),
    (["--model", "/nonexistent/model.pt"], "no such file"),
])
def test_tune_bad_input_fails_clearly(tmp_path, args, message):
    proc = run_cli("tune", *args, "--dry-run", cache_dir=tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------------------------
# info, --help
# --------------------------------------------------------------------------------------------

def test_info_json(tmp_path):
    proc = run_cli("info", "--json", cache_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["device"]["type"] == ("cuda" if HAS_CUDA else "cpu")
    assert info["tuning_cache"]["dir"] == str(tmp_path)
    assert info["tuning_cache"]["exists"] is False and info["tuning_cache"]["entries"] == 0
    assert "torch" in info["paths"]


def _subcommand_options() -> dict[str, list[str]]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: [s for a in p._actions if a.help != argparse.SUPPRESS for s in a.option_strings
                   if s.startswith("--") and s != "--help"]
            for name, p in sub.choices.items()}


def test_top_level_help_lists_every_subcommand(tmp_path):
    proc = run_cli("--help", cache_dir=tmp_path)
    assert proc.returncode == 0
    for name, _, _ in cli.SUBCOMMANDS:
        assert name in proc.stdout
    for required in ("demo", "bench", "plot", "tune", "info", "compile-check"):
        assert required in _subcommand_options()


@pytest.mark.parametrize("name", [s[0] for s in cli.SUBCOMMANDS])
def test_subcommand_help(tmp_path, name):
    proc = run_cli(name, "--help", cache_dir=tmp_path, env_updates={"COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: ")
    for opt in _subcommand_options()[name]:
        assert opt in proc.stdout, f"{name} --help does not mention {opt}"


# --------------------------------------------------------------------------------------------
# demo (the main job; about two minutes on 2 CPU cores)
# --------------------------------------------------------------------------------------------

def test_demo_quick(tmp_path):
    out = tmp_path / "demo"
    proc = run_cli("demo", "--quick", "--out", str(out), cache_dir=tmp_path / "cache", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert "Verification" in report and "**OK**" in report
    for png in ("accuracy_vs_sparsity.png", "speedup_vs_sparsity.png", "memory_vs_sparsity.png"):
        check_png(out / png)
        assert f"({png})" in report  # embedded in the report
    for stem in ("pruning", "model_layers", "sparsity_sweep"):
        df = pd.read_csv(out / f"{stem}.csv")
        assert len(df) > 0
        assert (out / f"{stem}.json").is_file()
    assert str(out / "report.md") in proc.stdout
