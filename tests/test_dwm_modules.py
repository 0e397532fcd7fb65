"""Decomposed convolutions in models: convert, SparseWinogradConv2d, dispatch paths, state_dict,
torch.compile, and pruning per piece (spatial-Winograd step 1 and step 2 with the piece tile)."""

import copy

import pytest
import torch
from torch import nn

from tritonwino import dwm
from tritonwino.packing import pack_winograd_weight
from tritonwino.pruning import (
    SpatialPruner,
    WinogradConv2d,
    WinogradPruner,
    convert_to_winograd,
    export_masks,
    finalize,
    importance_factor,
    model_winograd_sparsity,
)
from tritonwino.sparse_conv import SparseWinogradConv2d, convert, explain


class StemNet(nn.Module):
    """A 7×7/2 stem, 3×3/2 convs, a 5×5 and a 3×3 — and the convs convert must leave alone."""

    def __init__(self, c=16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 7, stride=2, padding=3)
        self.down = nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False)
        self.c5 = nn.Conv2d(c, c, 5, padding=2)
        self.c3 = nn.Conv2d(c, c, 3, padding=1)
        self.down2 = nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.one = nn.Conv2d(c, c, 1)
        self.dil = nn.Conv2d(c, c, 3, padding=2, dilation=2)
        self.grp = nn.Conv2d(c, c, 3, padding=1, groups=2)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.down(x))
        x = torch.relu(self.c5(x))
        x = torch.relu(self.c3(x))
        x = self.down2(x)
        return self.grp(self.dil(self.one(x)))


SWAPPED = {"stem", "down", "c5", "c3", "down2"}


def _rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def _pruned(model, target=0.5):
    SpatialPruner(model, m=4, r=None, block=(16, 1), keep_dense=None, tol=1e-3, max_iter=30).prune(target)
    return model


@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "sparse"])
def test_convert_swaps_every_decomposable_conv_same_answers_torch(pruned):
    torch.manual_seed(0)
    model = StemNet().eval()
    if pruned:
        _pruned(model)
    x = torch.randn(2, 3, 29, 27)
    with torch.no_grad():
        ref = model(x)
        conv = convert(copy.deepcopy(model), backend="torch")
        y = conv(x)
    log = dict(conv.tritonwino_conversion)
    assert {n for n, s in log.items() if s == "swapped"} == SWAPPED
    assert "1x1" in log["one"] and "dilation" in log["dil"] and "groups" in log["grp"]
    assert conv.stem.decomposition == (7, 2) and conv.down.r == 2 and conv.c3.decomposition is None
    assert _rel(y, ref) <= 1e-4
    if pruned:
        assert conv.down.packed.density < 1.0


@pytest.mark.kernels
@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "sparse"])
def test_convert_same_answers_triton(pruned, device):
    torch.manual_seed(0)
    model = StemNet().eval()
    if pruned:
        _pruned(model)
    model = model.to(device)
    x = torch.randn(1, 3, 19, 17, device=device)
    with torch.no_grad():
        ref = model(x)
        y = convert(copy.deepcopy(model), backend="triton")(x)
    assert _rel(y, ref) <= 1e-4


def test_every_dispatch_path_of_a_decomposed_layer():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 7, stride=2, padding=3)
    layer = SparseWinogradConv2d.from_conv2d(conv, m=4)
    x = torch.randn(1, 4, 15, 13)
    with torch.no_grad():
        ref = conv(x)
        for path in ("conv2d", "dense", "sparse"):
            assert _rel(layer.run_path(x, path, "torch"), ref) <= 1e-5, path
        assert layer(x[:0]).shape == (0, 8, 8, 7)  # empty batch: the decomposed output size
    assert layer.spatial_weight().shape == (8, 4, 7, 7)  # the pieces fold back into the 7x7 kernel
    assert "decomposed into 9 pieces" in repr(layer)
    rows = {r["layer"]: r for r in explain(convert(nn.Sequential(conv)))}
    assert "7x7/2 in 9 pieces F(4,3)" in rows["0"]["shape"]


def test_decompose_false_and_points_leave_layers_alone_with_a_reason():
    model = StemNet()
    log = dict(convert(copy.deepcopy(model), decompose=False).tritonwino_conversion)
    assert "decompose=False" in log["down"] and log["c5"] == "swapped" and log["stem"].startswith("stride")
    log = dict(convert(copy.deepcopy(model), points=(0, 1, -1, 2, -2)).tritonwino_conversion)
    assert log["c3"] == "swapped" and log["c5"] == "swapped" and "points" in log["down"]


def test_state_dict_round_trip_of_a_decomposed_layer(tmp_path):
    torch.manual_seed(0)
    a = convert(_pruned(StemNet()).eval())
    torch.save(a.state_dict(), tmp_path / "m.pt")
    b = convert(StemNet().eval())  # other weights, same architecture
    b.load_state_dict(torch.load(tmp_path / "m.pt"))
    x = torch.randn(1, 3, 21, 19)
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x))
    assert b.stem.get_extra_state()["decomposition"] == [7, 2]
    # a stride-1 3x3 layer refuses the state of the 3x3 stride-2 one
    sd = {k.removeprefix("down."): v for k, v in a.state_dict().items() if k.startswith("down.")}
    plain = SparseWinogradConv2d.from_conv2d(nn.Conv2d(16, 16, 3, padding=1, bias=False), m=2)
    with pytest.raises(ValueError):
        plain.load_state_dict(sd)


def test_compile_fullgraph_decomposed_torch_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    model = convert(_pruned(StemNet()).eval(), backend="torch")
    x = torch.randn(1, 3, 17, 17)
    with torch.no_grad():
        y = model(x)
        yc = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    torch._dynamo.reset()
    torch.testing.assert_close(yc, y)


# ---- pruning per piece ---------------------------------------------------------------------------
def test_spatial_pruning_per_piece_hits_the_target_and_keeps_spatial_masks():
    torch.manual_seed(0)
    model = StemNet()
    pruner = SpatialPruner(model, m=4, r=None, block=(1, 1), keep_dense=None, tol=1e-3, max_iter=40)
    assert set(pruner.layers) == SWAPPED
    achieved = pruner.prune(0.6)
    for name in SWAPPED:
        assert achieved[name] == pytest.approx(0.6, abs=0.02), name
        mod = getattr(model, name)
        assert mod.spatial_mask.shape == mod.weight.shape  # a k×k spatial mask
    sp = model_winograd_sparsity(model, m=4, layers=sorted(SWAPPED))
    assert sp["down"] == pytest.approx(achieved["down"])
    wmask = export_masks(model, "winograd", m=4)
    assert wmask["down"].shape == (16, 64, 5, 5) and wmask["stem"].shape == (16, 27, 6, 6)
    # the Winograd-domain mask is exactly where G (W ⊙ mask) Gᵀ over the pieces is zero
    q = model_q = dwm.expand_weight(model.down.weight.detach().double(), dwm.decomposition(3, 2))
    from tritonwino.pruning import winograd_weight

    model_q = winograd_weight(q, 4)
    assert bool((model_q[~wmask["down"]] == 0).all())


def test_winograd_direct_pruning_of_decomposed_layers_uses_the_piece_tile():
    torch.manual_seed(0)
    model = StemNet()
    layers = convert_to_winograd(model, m=4, r=None)
    assert set(layers) == SWAPPED
    down = model.down
    assert isinstance(down, WinogradConv2d) and down.r == 2 and down.q.shape == (16, 64, 5, 5)
    x = torch.randn(1, 3, 21, 19)
    pruner = WinogradPruner(model, method="yu", keep_dense=None, tol=1e-3, max_iter=40)
    assert pruner.importance(down).shape == (5, 5)
    torch.testing.assert_close(pruner.importance(down), importance_factor(4, 2))
    pruner.prune(0.7)
    assert model_winograd_sparsity(model, m=None, layers=["down"])["down"] == pytest.approx(0.7, abs=0.02)
    loss = model(x).square().mean()
    loss.backward()
    assert down.q.grad is not None and down.q.grad.shape == down.q.shape
    pruner.step(torch.optim.SGD(model.parameters(), lr=1e-3))
    with torch.no_grad():
        ref = model(x)
        packed = finalize(model)
        w = packed["down"]
        assert w.decomposition == (3, 2)
        p = pack_winograd_weight(w.q, (16, 1), r=w.r, points=w.points, decomposition=w.decomposition)
        assert p.in_channels == 16
        conv = convert(copy.deepcopy(model), backend="torch")
        assert _rel(conv(x), ref) <= 1e-4
        assert conv.down.spatial_weight() is None  # Winograd-domain pruning: no k×k equivalent


def test_winograd_conv2d_state_dict_keeps_the_decomposition():
    a = WinogradConv2d(4, 8, 7, padding=3, stride=2)
    b = WinogradConv2d(4, 8, 7, padding=3, stride=2)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.q, a.q)
    c = WinogradConv2d(4, 8, 5, padding=3, stride=2)  # 5x5/2: also 3x3 pieces, 4 of them
    with pytest.raises((ValueError, RuntimeError)):
        c.load_state_dict(a.state_dict())
    assert "decomposed into 9 pieces" in repr(a)


def test_dispatch_cache_key_tells_a_decomposed_layer_from_a_plain_one_of_the_same_gemm():
    from tritonwino import dispatch

    torch.manual_seed(0)
    strided = SparseWinogradConv2d.from_conv2d(nn.Conv2d(4, 16, 3, stride=2, padding=1), m=4)  # F(4,2), C' = 16
    plain = SparseWinogradConv2d.from_conv2d(nn.Conv2d(16, 16, 2, padding=1), m=4)  # F(4,2), C = 16
    assert (strided.packed.C, strided.r) == (plain.packed.C, plain.r)
    key_s = dispatch._cache_key(strided, torch.randn(1, 4, 8, 8))
    key_p = dispatch._cache_key(plain, torch.randn(1, 16, 8, 8))
    assert key_s != key_p and "dwm=3x2" in key_s
