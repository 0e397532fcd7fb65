"""Model-level pruning: WinogradConv2d, pruners, gradient scaling, masks lifecycle, schedules,
sensitivity scan."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests._io import reloaded
from tritonwino.pruning import (
    SpatialPruner,
    WinogradConv2d,
    WinogradPruner,
    check_schedule,
    convert_to_winograd,
    cubic_schedule,
    export_masks,
    finalize,
    importance_factor,
    linear_schedule,
    load_pruned_state_dict,
    model_winograd_sparsity,
    run_schedule,
    sensitivity_scan,
    winograd_mask_from_spatial,
    winograd_weight,
)
from tritonwino.transforms import ACCURATE_POINTS, normalize_points


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(1, 4, 3, padding=1)
        self.c1 = nn.Conv2d(4, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 8, 1)  # not eligible (1x1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.c0(x))
        x = F.relu(self.c1(x))
        x = F.relu(self.c2(x))
        return self.fc(self.down(x).mean((2, 3)))


def _batch(n=4):
    return torch.randn(n, 1, 8, 8), torch.randint(0, 3, (n,))


# ---------------------------------------------------------------- WinogradConv2d
@pytest.mark.parametrize("m,points", [(4, None), (2, None), (4, ACCURATE_POINTS[6])])
def test_winograd_conv2d_from_conv_matches_conv2d(m, points):
    conv = nn.Conv2d(3, 5, 3, padding=1).double()
    layer = WinogradConv2d.from_conv2d(conv, m=m, points=points)
    assert layer.q.dtype == torch.float64 and layer.points == normalize_points(m, 3, points)
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-10, atol=1e-10)
    layer.float()
    y = layer(x.float())
    torch.testing.assert_close(y, conv(x).float(), rtol=1e-4, atol=1e-4)


def test_winograd_conv2d_is_differentiable_in_q():
    layer = WinogradConv2d(2, 3, 3, padding=1)
    layer(torch.randn(1, 2, 6, 6)).sum().backward()
    assert layer.q.grad is not None and layer.q.grad.shape == (3, 2, 6, 6)
    assert layer.bias.grad is not None


def test_winograd_conv2d_refuses_other_points_on_load():
    a = WinogradConv2d(2, 3, 3, m=4)
    b = WinogradConv2d(2, 3, 3, m=4, points=ACCURATE_POINTS[6])
    with pytest.raises(ValueError, match="point set"):
        b.load_state_dict(a.state_dict())
    c = WinogradConv2d(2, 3, 3, m=2)
    with pytest.raises(ValueError, match=r"F\(4,3\)"):
        c.load_state_dict(a.state_dict())
    d = WinogradConv2d(2, 3, 3, m=4)
    d.load_state_dict(a.state_dict())
    assert torch.equal(d.q, a.q)


def test_winograd_conv2d_bad_args():
    with pytest.raises(ValueError):
        WinogradConv2d(0, 3)
    with pytest.raises(ValueError):
        WinogradConv2d(2, 3, m=4, points=[0, 1])
    with pytest.raises(TypeError):
        WinogradConv2d.from_conv2d(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="stride"):
        WinogradConv2d.from_conv2d(nn.Conv2d(2, 2, 3, stride=3))
    with pytest.raises(ValueError):
        WinogradConv2d.from_q(torch.randn(2, 2, 5, 5), m=4, r=3)


# ---------------------------------------------------------------- pruners
def test_spatial_pruner_keeps_first_dense_and_hits_targets():
    model = Tiny()
    w0 = model.c0.weight.detach().clone()
    p = SpatialPruner(model, m=4)
    assert list(p.layers) == ["c1", "c2"] and p.dense_layers == ["c0"]
    got = p.prune(0.5)
    assert set(got) == {"c1", "c2"}
    sp = model_winograd_sparsity(model, 4, layers=["c1", "c2"])
    for name in ("c1", "c2"):
        assert abs(sp[name] - 0.5) <= 36 / (8 * 8 * 36) + 1e-9  # at most one kernel's jump
        assert sp[name] == pytest.approx(got[name])
    assert torch.equal(model.c0.weight, w0)
    p2 = SpatialPruner(Tiny(), keep_dense=None, overrides={"c0": 0.2})
    res = p2.prune(0.6)
    assert abs(res["c0"] - 0.2) < 0.1 and abs(res["c2"] - 0.6) < 0.1
    with pytest.raises(ValueError, match="not a pruned layer"):
        SpatialPruner(Tiny(), overrides={"c0": 0.2})
    with pytest.raises(ValueError, match="not eligible"):
        SpatialPruner(Tiny(), layers=["down"])
    with pytest.raises(ValueError, match="no layers left"):
        SpatialPruner(Tiny(), layers=["c0"])  # the first conv is kept dense by default
    assert list(SpatialPruner(Tiny(), layers=["c0"], keep_dense=None).layers) == ["c0"]
    with pytest.raises(ValueError):
        SpatialPruner(Tiny(), method="l1")
    with pytest.raises(TypeError):
        SpatialPruner("model")


def test_spatial_pruner_masks_reapplied_after_steps():
    model = Tiny()
    p = SpatialPruner(model)
    p.prune(0.6)
    before = model_winograd_sparsity(model, 4, layers=["c1", "c2"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        x, y = _batch()
        F.cross_entropy(model(x), y).backward()
        p.step(opt)
        opt.zero_grad()
    assert bool((model.c1.weight[~model.c1.spatial_mask] == 0).all())
    after = model_winograd_sparsity(model, 4, layers=["c1", "c2"])
    assert after["c1"] >= before["c1"] and after["c2"] >= before["c2"]


def test_convert_carries_spatial_zeros_and_output():
    model = Tiny().double()
    SpatialPruner(model).prune(0.5)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    y_ref = model(x)
    masks_sp = export_masks(model, "winograd", layers=["c1"])
    layers = convert_to_winograd(model, m=4)
    assert set(layers) == {"c0", "c1", "c2"}
    torch.testing.assert_close(model(x), y_ref, rtol=1e-9, atol=1e-9)
    assert torch.equal(model.c1.mask, masks_sp["c1"])
    assert torch.equal(model.c1.q == 0, ~masks_sp["c1"])


def test_winograd_pruner_gradient_scaling_and_unscaled_weight_decay():
    model = Tiny()
    convert_to_winograd(model)
    p = WinogradPruner(model, method="yu")
    assert p.alpha == 1.5 and list(p.layers) == ["c1", "c2"]
    p.prune(0.5)
    q0 = model.c1.q.detach().clone()
    x, y = _batch()
    F.cross_entropy(model(x), y).backward()
    g = model.c1.q.grad.detach().clone()
    lr, wd = 0.1, 0.01
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd)
    p.step(opt)
    fh = importance_factor(4, 3).float()
    expected = (q0 - lr * (g / fh ** 1.5 + wd * q0)) * model.c1.mask
    torch.testing.assert_close(model.c1.q.detach(), expected, rtol=1e-5, atol=1e-6)
    assert bool((model.c1.q[~model.c1.mask] == 0).all())
    assert WinogradPruner(model, method="li").alpha == 0.0
    assert WinogradPruner(model, alpha=2.0).alpha == 2.0


@pytest.mark.parametrize("method", ["yu", "li", "liu"])
def test_winograd_pruner_methods_hit_target_and_stay_pruned(method):
    model = Tiny()
    convert_to_winograd(model)
    p = WinogradPruner(model, method=method)
    res = p.prune(0.7)
    for name, s in res.items():
        assert abs(s - 0.7) <= 1 / (8 * 8 * 36) + 1e-9, name
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(2):
        x, y = _batch()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        p.step(opt)
    sp = p.sparsity()
    assert sp["c1"] >= res["c1"] - 1e-12 and sp["overall"] >= 0.7 - 1e-3


def test_winograd_pruner_block_granularity():
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1))
    convert_to_winograd(model)
    p = WinogradPruner(model, block=(16, 1))
    p.prune(0.6)
    mask = model[1].mask.reshape(2, 16, 16, 6, 6)
    assert torch.equal(mask.all(1), mask.any(1))
    with pytest.raises(ValueError):
        WinogradPruner(nn.Sequential(nn.Conv2d(1, 2, 3)))  # no WinogradConv2d layers


# ---------------------------------------------------------------- lifecycle
def test_spatial_masks_survive_state_dict_into_fresh_model():
    model = Tiny()
    SpatialPruner(model).prune(0.6)
    sd = reloaded(model.state_dict())
    fresh = Tiny()
    load_pruned_state_dict(fresh, sd)
    assert torch.equal(fresh.c1.spatial_mask, model.c1.spatial_mask)
    x, _ = _batch()
    torch.testing.assert_close(fresh(x), model(x))
    p = SpatialPruner(fresh)  # re-attaching keeps the loaded masks
    assert torch.equal(p.masks()["c2"], model.c2.spatial_mask)


def test_winograd_masks_survive_state_dict_into_fresh_model():
    model = Tiny()
    SpatialPruner(model).prune(0.4)
    convert_to_winograd(model, m=4, points=ACCURATE_POINTS[6])
    WinogradPruner(model).prune(0.7)
    sd = reloaded(model.state_dict())
    fresh = Tiny()
    load_pruned_state_dict(fresh, sd)
    assert isinstance(fresh.c1, WinogradConv2d) and fresh.c1.points == normalize_points(4, 3, ACCURATE_POINTS[6])
    assert torch.equal(fresh.c1.mask, model.c1.mask) and torch.equal(fresh.c1.q, model.c1.q)
    x, _ = _batch()
    torch.testing.assert_close(fresh(x), model(x))
    # a fresh model converted with other points refuses the state
    other = Tiny()
    convert_to_winograd(other, m=4)
    with pytest.raises(ValueError, match="point set"):
        other.load_state_dict(sd)


def test_finalize_and_export():
    model = Tiny()
    sp = SpatialPruner(model)
    sp.prune(0.5)
    spatial = sp.masks("spatial")
    wino = sp.masks("winograd")
    assert spatial["c1"].shape == (8, 4, 3, 3) and wino["c1"].shape == (8, 4, 6, 6)
    assert torch.equal(wino["c1"], winograd_mask_from_spatial(spatial["c1"]))
    fin = finalize(model, m=4, layers=["c1"])
    q = fin["c1"].q
    assert q.dtype == torch.float32 and fin["c1"].m == 4 and fin["c1"].r == 3
    assert torch.equal(q, winograd_weight(model.c1.weight, 4).float())
    assert torch.equal(q == 0, ~wino["c1"])

    convert_to_winograd(model)
    wp = WinogradPruner(model)
    wp.prune(0.75)
    with torch.no_grad():  # simulate a step that wrote into pruned entries
        model.c2.q.add_(1.0)
    fin2 = finalize(model)
    w2 = fin2["c2"]
    assert torch.equal(w2.q == 0, ~model.c2.mask) or bool((w2.q[~model.c2.mask] == 0).all())
    assert w2.points == normalize_points(4, 3) and w2.padding == (1, 1)
    assert w2.sparsity >= 0.75 - 1e-3
    with pytest.raises(ValueError, match="spatial"):
        export_masks(model, "spatial", layers=["c1"])
    with pytest.raises(ValueError):
        export_masks(model, "fourier")


# ---------------------------------------------------------------- schedules and sensitivity
def test_schedules():
    c = cubic_schedule(0.2, 0.8, 4)
    assert c[0] == pytest.approx(0.2) and c[-1] == pytest.approx(0.8)
    assert all(b > a for a, b in zip(c, c[1:], strict=False))
    assert c[1] - c[0] > c[3] - c[2]  # cubic: big steps first
    assert c[1] == pytest.approx(0.8 - 0.6 * (2 / 3) ** 3)
    assert linear_schedule(0.1, 0.4, 4) == pytest.approx([0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError):
        check_schedule([0.5, 0.3])
    with pytest.raises(ValueError):
        cubic_schedule(0.8, 0.2, 3)
    with pytest.raises(ValueError):
        check_schedule([])


def test_run_schedule_with_retraining():
    model = Tiny()
    p = SpatialPruner(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def retrain(stage, target):
        x, y = _batch()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        p.step(opt)
        return stage

    recs = run_schedule(p, [0.3, 0.6], retrain, log=None)
    assert [r["result"] for r in recs] == [0, 1]
    assert recs[1]["sparsity"]["overall"] > recs[0]["sparsity"]["overall"] >= 0.25


def test_sensitivity_scan(tmp_path):
    model = Tiny()
    x, _ = _batch(8)
    ref = model(x).detach()
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def evaluate(mdl):
        return -float((mdl(x) - ref).pow(2).mean())

    path = tmp_path / "sens.csv"
    rows = sensitivity_scan(model, evaluate, sparsities=(0.3, 0.8), path=path, log=None)
    assert rows[0]["layer"] == "dense" and rows[0]["metric"] == 0.0
    names = {r["layer"] for r in rows[1:]}
    assert names == {"c0", "c1", "c2"}
    for r in rows[1:]:
        assert abs(r["winograd_sparsity"] - r["sparsity_target"]) < 0.15
    by = {(r["layer"], r["sparsity_target"]): r["metric"] for r in rows}
    assert by[("c2", 0.8)] < by[("c2", 0.3)] <= 0.0  # more pruning, more output change
    assert path.read_text().splitlines()[0] == "layer,sparsity_target,winograd_sparsity,metric"
    for k, v in model.state_dict().items():  # the model is left unchanged
        assert torch.equal(v, state[k])
