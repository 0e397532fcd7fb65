"""The persistent autotune cache: roundtrip, location, atomicity, corruption, concurrency, autotune."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import warnings
from pathlib import Path

import pytest
import torch
import triton

from tritonwino import tuning
from tritonwino.tuning import TuningCache, autotune, cache_path, make_key, shape_bucket


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv(tuning.ENV_VAR, str(tmp_path))
    return tmp_path


def test_roundtrip_and_file_content(cache_env):
    cache = TuningCache()
    key = make_key(shape=(shape_bucket(5), 64, 64), dtype=torch.float16, tile=(4, 3), block=(16, 1),
                   sig="d50")
    assert cache.get("sparse_gemm", key) is None
    cfg = {"BLOCK_T": 64, "BLOCK_C": 32, "num_warps": 4}
    cache.put("sparse_gemm", key, cfg, {"a": 1.5, "b": 2.0})
    # a fresh object (as another process would) reads it back from disk
    again = TuningCache()
    assert again.get("sparse_gemm", key) == cfg
    assert again.get_entry("sparse_gemm", key)["timings"] == {"a": 1.5, "b": 2.0}
    assert again.get("sparse_gemm", "other") is None
    assert again.get("dense_gemm", key) is None
    assert again.summary() == {"sparse_gemm": 1}
    assert set(again.entries()) == {"sparse_gemm"}
    data = json.loads(cache.path.read_text())
    assert data["schema"] == tuning.SCHEMA_VERSION
    assert data["device"] == tuning.device_name()
    assert data["triton"] == triton.__version__
    assert data["torch"] == torch.__version__
    # tuple keys are normalized to strings consistently
    cache.put("k", (64, "float16", (4, 3)), {"x": 1})
    assert TuningCache().get("k", (64, "float16", (4, 3))) == {"x": 1}
    cache.clear()
    assert TuningCache().entries() == {}
    assert json.loads(cache.path.read_text())["entries"] == {}


def test_keys_and_buckets():
    assert [shape_bucket(n) for n in (0, 1, 2, 3, 5, 8, 9, 1000)] == [1, 1, 2, 4, 8, 8, 16, 1024]
    k1 = make_key(tile=(4, 3), dtype=torch.float32, shape=(8, 64), block=(16, 1), sig="s")
    k2 = make_key(sig="s", block=[16, 1], shape=(8, 64), dtype="float32", tile=(4, 3))
    assert k1 == k2 == "block=16x1|dtype=float32|shape=8x64|sig=s|tile=4x3"
    assert make_key(shape=(shape_bucket(5),)) == make_key(shape=(shape_bucket(7),))
    assert make_key(shape=(shape_bucket(5),)) != make_key(shape=(shape_bucket(9),))
    with pytest.raises(ValueError):
        make_key()


def test_location_env_override_and_default(tmp_path, monkeypatch):
    monkeypatch.setenv(tuning.ENV_VAR, str(tmp_path / "mine"))
    p = cache_path()
    assert p.parent == tmp_path / "mine"
    assert p.name.startswith("tune-") and p.name.endswith(f"-triton{triton.__version__}.json")
    assert tuning.get_cache().path == p
    monkeypatch.delenv(tuning.ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_path().parent == tmp_path / "xdg" / "tritonwino"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_path().parent == Path.home() / ".cache" / "tritonwino"
    # device name goes into the file name as a slug
    assert cache_path("NVIDIA H100 80GB HBM3").name == f"tune-nvidia-h100-80gb-hbm3-triton{triton.__version__}.json"


def test_device_name_cpu(monkeypatch):
    if torch.cuda.is_available():
        assert tuning.device_name() == torch.cuda.get_device_name()
        return
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert tuning.device_name() == "cpu-interpreter"
    monkeypatch.delenv("TRITON_INTERPRET")
    assert tuning.device_name() == "cpu"


def test_atomic_write_leaves_no_temp_files(cache_env):
    cache = TuningCache()
    for i in range(20):
        cache.put("k", f"key{i}", {"i": i})
    names = sorted(p.name for p in cache_env.iterdir())
    assert names == sorted([cache.path.name, cache.lock_path.name])
    assert len(TuningCache().entries()["k"]) == 20


def test_failed_write_removes_temp_and_keeps_old_file(cache_env, monkeypatch):
    cache = TuningCache()
    cache.put("k", "a", {"v": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(tuning.cache.os, "replace", boom)
        with pytest.warns(RuntimeWarning, match="could not write tuning cache"):
            cache.put("k", "b", {"v": 2})
    assert not [p for p in cache_env.iterdir() if p.name.endswith(".tmp")]
    assert TuningCache().get("k", "a") == {"v": 1}
    assert TuningCache().get("k", "b") is None  # not on disk ...
    assert cache.get("k", "b") == {"v": 2}  # ... but kept in memory for this process


@pytest.mark.parametrize("content", [
    "{not json",
    "",
    "[1, 2, 3]",
    json.dumps({"schema": 999, "entries": {}}),
])
def test_corrupt_file_warns_and_is_rebuilt(cache_env, content):
    cache = TuningCache()
    cache.path.parent.mkdir(parents=True, exist_ok=True)
    cache.path.write_text(content)
    with pytest.warns(RuntimeWarning, match=r"ignoring tuning cache .*tune-"):
        assert cache.get("k", "a") is None
    cache.put("k", "a", {"v": 1})
    data = json.loads(cache.path.read_text())
    assert data["schema"] == tuning.SCHEMA_VERSION
    assert data["entries"] == {"k": {"a": data["entries"]["k"]["a"]}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt file is clean
        assert TuningCache().get("k", "a") == {"v": 1}


@pytest.mark.parametrize("field,value", [("triton", "0.0.1"), ("device", "Some Other GPU")])
def test_foreign_content_is_ignored(cache_env, field, value):
    cache = TuningCache()
    cache.put("k", "a", {"v": 1})
    data = json.loads(cache.path.read_text())
    data[field] = value
    cache.path.write_text(json.dumps(data))
    with pytest.warns(RuntimeWarning, match=value):
        assert TuningCache().get("k", "a") is None
    fresh = TuningCache()
    with pytest.warns(RuntimeWarning):
        fresh.put("k", "b", {"v": 2})
    data = json.loads(cache.path.read_text())
    assert data[field] != value and set(data["entries"]["k"]) == {"b"}


def _worker(path: str, tag: str, n: int, barrier) -> None:
    cache = TuningCache(path, device="test-device")
    barrier.wait(timeout=60)  # start writing at the same time
    for i in range(n):
        cache.put("kern", f"{tag}-{i}", {"i": i, "tag": tag}, {"cfg": float(i)})
        cache.put(f"kern-{tag}", str(i), {"i": i})


def test_two_processes_concurrent_puts_lose_nothing(cache_env):
    path = str(cache_env / "concurrent.json")
    n = 40
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_worker, args=(path, tag, n, barrier)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    data = json.loads(Path(path).read_text())  # valid JSON
    entries = data["entries"]
    assert set(entries["kern"]) == {f"{t}-{i}" for t in "ab" for i in range(n)}
    assert entries["kern"]["b-7"]["config"] == {"i": 7, "tag": "b"}
    assert len(entries["kern-a"]) == n and len(entries["kern-b"]) == n
    assert not [p for p in cache_env.iterdir() if p.name.endswith(".tmp")]


def test_autotune_picks_fastest_then_uses_cache(cache_env):
    configs = [{"BLOCK": 16}, {"BLOCK": 32}, {"BLOCK": 64}]
    times = {16: 3.0, 32: 1.0, 64: 2.0}
    calls = []

    def bench(cfg):
        calls.append(cfg["BLOCK"])
        return times[cfg["BLOCK"]]

    key = make_key(shape=(8,), dtype="float16")
    assert autotune("gemm", key, configs, bench) == {"BLOCK": 32}
    assert sorted(calls) == [16, 32, 64]
    entry = TuningCache().get_entry("gemm", key)
    assert entry["config"] == {"BLOCK": 32}
    assert entry["timings"] == {"BLOCK=16": 3.0, "BLOCK=32": 1.0, "BLOCK=64": 2.0}
    calls.clear()
    assert autotune("gemm", key, configs, bench) == {"BLOCK": 32}
    assert calls == []  # served from the cache
    # a cached winner that is no longer offered is re-tuned
    assert autotune("gemm", key, [{"BLOCK": 16}, {"BLOCK": 64}], bench) == {"BLOCK": 64}
    assert sorted(calls) == [16, 64]
    calls.clear()
    times[16] = 0.5
    assert autotune("gemm", key, configs, bench, force=True) == {"BLOCK": 16}
    assert len(calls) == 3


def test_autotune_single_config_is_not_timed(cache_env):
    def bench(cfg):
        raise AssertionError("must not be called")

    assert autotune("k", "key", [{"A": 1}], bench) == {"A": 1}
    with pytest.raises(ValueError):
        autotune("k", "key", [], bench)


def test_autotune_skips_failing_config(cache_env):
    def bench(cfg):
        if cfg["BLOCK"] == 128:
            raise RuntimeError("out of resources: shared memory")
        if cfg["BLOCK"] == 64:
            return float("nan")
        return {16: 2.0, 32: 4.0}[cfg["BLOCK"]]

    configs = [{"BLOCK": b} for b in (128, 16, 64, 32)]
    with pytest.warns(RuntimeWarning) as rec:
        best = autotune("k", "key", configs, bench)
    msgs = " ".join(str(w.message) for w in rec)
    assert "out of resources" in msgs and "returned nan" in msgs
    assert best == {"BLOCK": 16}
    entry = TuningCache().get_entry("k", "key")
    assert set(entry["timings"]) == {"BLOCK=16", "BLOCK=32"}
    assert "out of resources" in entry["errors"]["BLOCK=128"]
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="every config failed"):
        autotune("k2", "key", [{"BLOCK": 128}, {"BLOCK": 64}], bench)


def test_do_bench_ms_cpu():
    if torch.cuda.is_available():
        pytest.skip("CPU timer path; GPU uses triton.testing.do_bench")
    n = []
    ms = tuning.do_bench_ms(lambda: n.append(sum(range(1000))), warmup=2, rep=5)
    assert len(n) == 7 and 0 < ms < 1000


def test_get_cache_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv(tuning.ENV_VAR, str(tmp_path / "one"))
    c1 = tuning.get_cache()
    assert tuning.get_cache() is c1
    monkeypatch.setenv(tuning.ENV_VAR, str(tmp_path / "two"))
    assert tuning.get_cache().path.parent == tmp_path / "two"
    assert os.fspath(c1.path).startswith(os.fspath(tmp_path / "one"))


# ---------------------------------------------------------------------------------------------
# Robustness (issue 11, item 7): every broken cache location or file is ignored with a warning, never
# an exception in autotune() or a layer's first forward, never a hang.

def _no_hang(fn, timeout=20.0):
    """Run fn in a thread; fail (instead of hanging the suite) if it does not return in time."""
    import threading

    box: dict = {}

    def run():
        try:
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                box["value"] = fn()
            box["warnings"] = [str(x.message) for x in w]
        except BaseException as e:  # noqa: BLE001 - reported below
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"hung for more than {timeout} s"
    if "error" in box:
        raise box["error"]
    return box["value"], box["warnings"]


def _two_configs(cache):
    # two configs, so autotune consults and writes the cache
    return autotune("kern", "key", [{"a": 2}, {"a": 1}], lambda c: float(c["a"]), cache=cache)


def test_cache_dir_that_is_a_file_is_ignored_with_a_warning(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setenv(tuning.ENV_VAR, str(blocker))
    cache = TuningCache()
    (value, warned) = _no_hang(lambda: cache.get("k", "a"))
    assert value is None and any("ignoring tuning cache" in w for w in warned)
    (best, warned) = _no_hang(lambda: _two_configs(cache))
    assert best == {"a": 1} and any("could not write tuning cache" in w for w in warned)
    assert cache.get("kern", "key") == {"a": 1}  # kept in memory for this process
    _no_hang(cache.clear)


def test_untraversable_dir_is_ignored_with_a_warning(cache_env, monkeypatch):
    cache = TuningCache()
    cache.put("k", "a", {"v": 1})
    real_stat, real_open = os.stat, os.open

    def denied(fn):
        def wrapped(path, *a, **k):
            if os.fspath(path).startswith(os.fspath(cache_env)):
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return fn(path, *a, **k)
        return wrapped

    # (the suite may run as root, where chmod 000 denies nothing: deny at the syscall wrappers)
    monkeypatch.setattr(tuning.cache.os, "stat", denied(real_stat))
    monkeypatch.setattr(tuning.cache.os, "open", denied(real_open))
    fresh = TuningCache()
    (value, warned) = _no_hang(lambda: fresh.get("k", "a"))
    assert value is None and any("Permission denied" in w for w in warned)
    (best, warned) = _no_hang(lambda: _two_configs(fresh))
    assert best == {"a": 1} and any("could not write" in w for w in warned)
    _no_hang(fresh.clear)


def test_deeply_nested_json_is_ignored_with_a_warning(cache_env):
    cache = TuningCache()
    cache.path.parent.mkdir(parents=True, exist_ok=True)
    cache.path.write_text("[" * 200_000 + "]" * 200_000)
    (value, warned) = _no_hang(lambda: cache.get("k", "a"))
    assert value is None and any("nested too deeply" in w for w in warned)
    (best, _) = _no_hang(lambda: _two_configs(cache))
    assert best == {"a": 1} and TuningCache().get("kern", "key") == {"a": 1}  # rebuilt on write


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("where", ["cache", "lock"])
def test_fifo_at_the_cache_path_never_hangs(cache_env, where):
    cache = TuningCache()
    os.mkfifo(cache.path if where == "cache" else cache.lock_path)
    (value, warned) = _no_hang(lambda: cache.get("k", "a"))
    assert value is None
    if where == "cache":
        assert any("not a regular file" in w for w in warned)
    (best, warned) = _no_hang(lambda: _two_configs(cache))
    assert best == {"a": 1}
    if where == "lock":
        assert any("not a regular file" in w for w in warned)  # refused to lock on a FIFO, kept in memory
    else:
        assert TuningCache().get("kern", "key") == {"a": 1}  # the FIFO was replaced by the new file


def test_malformed_timings_are_ignored(cache_env):
    cache = TuningCache()
    cache.put("k", "a", {"v": 1}, {"cfg": 1.0})
    data = json.loads(cache.path.read_text())
    data["entries"]["k"]["a"]["timings"] = {"cfg": "fast"}  # a consumer would float() these
    cache.path.write_text(json.dumps(data))
    with pytest.warns(RuntimeWarning, match="malformed"):
        assert TuningCache().get("k", "a") is None


def test_orphan_temp_file_of_a_killed_writer_is_removed(cache_env):
    cache = TuningCache()
    cache.put("k", "a", {"v": 1})
    orphan = cache.path.with_name(f".{cache.path.name}.dead1234.tmp")
    orphan.write_text('{"half": ')
    unrelated = cache.path.with_name("notes.tmp")
    unrelated.write_text("keep me")
    cache.put("k", "b", {"v": 2})
    assert not orphan.exists() and unrelated.exists()
    assert TuningCache().get("k", "a") == {"v": 1} and TuningCache().get("k", "b") == {"v": 2}


def test_lock_held_too_long_gives_up_with_a_warning(cache_env, monkeypatch):
    import fcntl

    cache = TuningCache()
    cache.put("k", "a", {"v": 1})
    monkeypatch.setattr(tuning.cache, "LOCK_TIMEOUT_S", 0.2)
    with open(cache.lock_path, "a+") as holder:  # another open file description: flock conflicts
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        (best, warned) = _no_hang(lambda: _two_configs(cache))
        fcntl.flock(holder.fileno(), fcntl.LOCK_UN)
    assert best == {"a": 1} and any("held by another process" in w for w in warned)
