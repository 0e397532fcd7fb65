"""Measured per-layer dispatch: the rule, the cache, the memo, explain()."""

import pytest
import torch
from torch import nn

from tritonwino import dispatch, reference, tuning
from tritonwino.packing import pack_winograd_weight
from tritonwino.pruning import SpatialPruner
from tritonwino.sparse_conv import SparseWinogradConv2d, convert, explain, tune_model

SYNC_OPS = {"aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::is_nonzero"}


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(tuning.ENV_VAR, str(tmp_path / "cache"))
    yield


def _spatial_layer(c=8, k=16, sparsity=0.6, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(c, k, 3, padding=1))
    SpatialPruner(model, m=4, block=(16, 1), keep_dense=None, tol=1e-3, max_iter=25).prune(sparsity)
    return SparseWinogradConv2d.from_conv2d(model[0], backend="auto"), model[0]


def _winograd_direct_layer(c=8, k=16):
    q = torch.randn(k, c, 6, 6, dtype=torch.float64)
    q = q * (torch.rand(1, c, 6, 6) > 0.5).to(q.dtype)
    return SparseWinogradConv2d(pack_winograd_weight(q, (16, 1), dtype=torch.float32), None, 1, "auto"), q


def _fake_times(monkeypatch, times):
    monkeypatch.setattr(dispatch.tuning, "time_interleaved",
                        lambda fns, device, rounds=5: {k: {"ms": times[k]} for k in fns})


def test_choose_rule_never_slower_than_conv2d():
    assert dispatch.choose({"conv2d": 1.0, "dense": 2.0, "sparse": 0.97})[0] == "conv2d"  # inside the margin
    assert dispatch.choose({"conv2d": 1.0, "dense": 1.2, "sparse": 1.1})[0] == "conv2d"
    assert dispatch.choose({"conv2d": 1.0, "dense": 0.9, "sparse": 0.5})[0] == "sparse"
    assert dispatch.choose({"conv2d": 1.0, "dense": 0.8, "sparse": 0.9})[0] == "dense"
    assert dispatch.choose({"dense": 0.8, "sparse": 0.9})[0] == "dense"  # no exact conv2d


@pytest.mark.parametrize("times,expected", [
    ({"conv2d": 1.0, "dense": 0.99, "sparse": 0.98}, "conv2d"),
    ({"conv2d": 1.0, "dense": 2.0, "sparse": 0.5}, "sparse"),
    ({"conv2d": 1.0, "dense": 0.5, "sparse": 0.9}, "dense"),
])
def test_layer_runs_the_chosen_path_and_its_output_is_right(monkeypatch, times, expected):
    layer, conv = _spatial_layer()
    _fake_times(monkeypatch, times)
    x = torch.randn(2, 8, 10, 10)
    with torch.no_grad():
        y = layer(x)
        ref = torch.nn.functional.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
    (d,) = layer.dispatch_decisions().values()
    assert d.path == expected and d.source == "measured" and d.times_ms == times
    assert float((y.double() - ref).abs().max() / ref.abs().max()) < 2e-5
    # only the dense Q the chosen path needs is kept in memory; the spatial weight a spatially
    # pruned layer was built from is kept whatever runs (its checkpoint stores it instead of Q)
    assert layer._w_spatial is not None
    assert (layer._q_pck is not None) == (expected == "dense")
    assert set(layer.state_dict()) == {"weight_mask", "weight_nonzeros", "bias", "_extra_state"}
    direct, _ = _winograd_direct_layer()
    _fake_times(monkeypatch, {"dense": 2.0, "sparse": 1.0})
    with torch.no_grad():
        direct(x)
    assert direct._w_spatial is None and direct._q_pck is None  # sparse chosen, no spatial weight exists


def test_winograd_direct_q_never_runs_conv2d(monkeypatch):
    layer, q = _winograd_direct_layer()
    _fake_times(monkeypatch, {"conv2d": 0.001, "dense": 1.0, "sparse": 2.0})
    x = torch.randn(1, 8, 8, 8)
    assert "conv2d" not in dispatch.candidates(layer, x)
    with torch.no_grad():
        y = layer(x)
    (d,) = layer.dispatch_decisions().values()
    assert d.path == "dense" and "conv2d" not in d.times_ms
    ref = reference.winograd_conv2d_q(x.double(), q, None, 1, 4)
    assert float((y.double() - ref).abs().max() / ref.abs().max()) < 2e-5


def test_measurement_is_cached_and_reused_and_tune_model_remeasures():
    a, _ = _spatial_layer(seed=0)
    b, _ = _spatial_layer(seed=0)  # same shapes and sparsity signature
    x = torch.randn(2, 8, 10, 10)
    with torch.no_grad():
        a(x)
        b(x)
    (da,) = a.dispatch_decisions().values()
    (db,) = b.dispatch_decisions().values()
    assert da.source == "measured" and db.source == "cache"
    assert db.path == da.path and db.times_ms == pytest.approx(da.times_ms)
    assert set(da.times_ms) == {"conv2d", "dense", "sparse"} and all(t > 0 for t in da.times_ms.values())
    assert len(tuning.get_cache().entries()[dispatch.KERNEL_NAME]) == 1
    table = tune_model(nn.Sequential(b), x)
    (db2,) = b.dispatch_decisions().values()
    assert db2.source == "measured" and table[0]["source"] == "measured"


def test_memo_keyed_by_shape_bucket(monkeypatch):
    layer, _ = _spatial_layer()
    calls = []
    real = dispatch.decide
    monkeypatch.setattr(dispatch, "decide", lambda lay, x: calls.append(tuple(x.shape)) or real(lay, x))
    with torch.no_grad():
        layer(torch.randn(5, 8, 10, 10))
        layer(torch.randn(7, 8, 10, 10))  # same batch bucket (8)
        layer(torch.randn(5, 8, 12, 10))  # other H: new decision
        layer(torch.randn(5, 8, 10, 10).contiguous(memory_format=torch.channels_last))  # other layout
    assert calls == [(5, 8, 10, 10), (5, 8, 12, 10), (5, 8, 10, 10)]
    assert len(layer.dispatch_decisions()) == 3


@pytest.mark.parametrize("path", ["conv2d", "dense", "sparse"])
def test_steady_state_forward_has_no_host_sync_and_no_measurement(monkeypatch, path):
    layer, _ = _spatial_layer()
    _fake_times(monkeypatch, {"conv2d": 1.0, "dense": 1.0, "sparse": 1.0, path: 0.1})
    x = torch.randn(2, 8, 10, 10)
    with torch.no_grad():
        layer(x)
    monkeypatch.setattr(dispatch, "decide", lambda *a: pytest.fail("decide called in the steady state"))
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        layer(x)
    names = {e.name for e in prof.events()}
    assert not (names & SYNC_OPS), names & SYNC_OPS
    assert names & {"aten::conv2d", "aten::matmul", "aten::bmm", "tritonwino::sparse_winograd_conv2d",
                    "tritonwino::winograd_conv2d_pck"}  # the profiler did see the work


def test_pinned_backend_never_dispatches(monkeypatch):
    layer, _ = _spatial_layer()
    layer.backend = "torch"
    monkeypatch.setattr(dispatch, "decide", lambda *a: pytest.fail("pinned backend must not measure"))
    with torch.no_grad():
        layer(torch.randn(1, 8, 8, 8))
    assert layer.dispatch_decisions() == {}


def test_static_rule_when_measurement_off():
    old = dispatch.set_measure_on_first_use(False)
    try:
        spatial, _ = _spatial_layer()
        direct, _ = _winograd_direct_layer()
        x = torch.randn(1, 8, 8, 8)
        with torch.no_grad():
            spatial(x)
            direct(x)
    finally:
        dispatch.set_measure_on_first_use(old)
    (ds,) = spatial.dispatch_decisions().values()
    (dd,) = direct.dispatch_decisions().values()
    assert (ds.path, ds.source) == ("conv2d", "static")
    assert (dd.path, dd.source) == ("sparse", "static")


def test_explain_table_lists_every_conv_with_reason_choice_and_times():
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=3),
                          nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 8, 1))
    SpatialPruner(model, m=4, block=(16, 1), keep_dense=None, tol=1e-3, max_iter=25).prune(0.7)
    convert(model)
    before = explain(model)
    assert [r["chosen"] for r in before if r["type"] == "SparseWinogradConv2d"] == [None, None]
    table = tune_model(model, torch.randn(1, 3, 16, 16))
    rows = {r["layer"]: r for r in table}
    assert set(rows) == {"0", "2", "3", "4"}
    assert "stride" in rows["2"]["eligible"] and "1x1" in rows["4"]["eligible"]
    assert rows["3"]["eligible"] == "converted" and rows["3"]["winograd_sparsity"] > 0.6
    assert rows["3"]["chosen"] in ("conv2d", "dense-winograd/torch", "sparse-winograd/torch")
    assert set(rows["3"]["times_ms"]) == {"conv2d", "dense", "sparse"}
    assert "5x5" in rows["3"]["input"]  # 16x16 through the stride-3 conv
    text = str(table)
    assert text.startswith("| layer | type |") and "stride (3, 3)" in text and "measured" in text
