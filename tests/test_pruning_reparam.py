"""Spatial kernels behind Winograd-domain weights (tritonwino.pruning.reparam): Q = (G W Gᵀ) ⊙ mask."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tritonwino.pruning import (
    WinogradConv2d,
    WinogradPruner,
    convert_to_winograd,
    spatial_kernels,
)
from tritonwino.transforms import fit_spatial_kernel, winograd_matrices


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 4, 3, padding=1))


def _wino_net(seed=0, m=4):
    net = _net(seed)
    convert_to_winograd(net, m=m)
    return net


@pytest.mark.parametrize("m", [2, 4])
def test_fit_recovers_the_kernel_from_the_kept_entries(m):
    _, g, _ = winograd_matrices(m, 3)
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(5, 7, 3, 3, dtype=torch.float64, generator=gen)
    q = g @ w @ g.t()
    mask = torch.rand(q.shape, generator=gen) > 0.4
    mask[0, 0] = True  # some kernels fully kept (the one-projection path), the rest masked
    got, resid = fit_spatial_kernel(q * mask, mask, g, chunk=4)  # several chunks
    assert resid < 1e-12
    assert torch.allclose((g @ got @ g.t()) * mask, q * mask, atol=1e-12)
    # kernels with >= 9 independent kept entries come back exactly; all-kept ones certainly do
    assert torch.allclose(got[0, 0], w[0, 0], atol=1e-12)
    # a Q trained freely in the Winograd domain is no spatial kernel
    _, resid = fit_spatial_kernel(torch.randn(q.shape, dtype=torch.float64, generator=gen), None, g)
    assert resid > 1e-3


def test_the_layer_computes_the_same_inside_and_after_the_block():
    net = _wino_net()
    x = torch.randn(2, 3, 11, 9)  # odd sizes: partial tiles
    with torch.no_grad():
        before = net(x)
    with spatial_kernels(net) as layers:
        assert sorted(layers) == ["0", "2", "4"]
        for mod in layers.values():
            assert not isinstance(mod.q, nn.Parameter)  # computed from W
            assert tuple(mod.parametrizations.q.original.shape) == (mod.out_channels, mod.in_channels, 3, 3)
        with torch.no_grad():
            inside = net(x)
    with torch.no_grad():
        after = net(x)
    assert torch.allclose(inside, before, atol=1e-5, rtol=1e-5)
    assert torch.allclose(after, before, atol=1e-5, rtol=1e-5)
    assert all(isinstance(mod.q, nn.Parameter) for mod in layers.values())
    assert set(net.state_dict()) == set(_wino_net().state_dict())  # same checkpoint format after the block


def test_retraining_prunes_trains_w_and_keeps_q_a_masked_spatial_kernel():
    net = _wino_net()
    x, y = torch.randn(4, 3, 8, 8), torch.randn(4, 4, 8, 8)
    with spatial_kernels(net, layers=["2", "4"]):
        pruner = WinogradPruner(net, keep_dense=["0"])
        pruner.prune(0.6)
        w0 = net[2].parametrizations.q.original.detach().clone()
        opt = torch.optim.SGD(net.parameters(), lr=0.05)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no ".grad of a non-leaf tensor" warning from the F̂ scaling
            for _ in range(3):
                opt.zero_grad()
                F.mse_loss(net(x), y).backward()
                pruner.step(opt)
        assert not torch.equal(net[2].parametrizations.q.original, w0)  # W is what trains
        sp = pruner.sparsity()
    assert abs(sp["2"] - 0.6) < 0.01 and abs(sp["4"] - 0.6) < 0.01 and "0" not in sp
    _, g, _ = winograd_matrices(4, 3)
    for name in ("2", "4"):
        mod = net[int(name)]
        q = mod.masked_q().detach().double()
        assert int((q == 0).sum()) >= int((~mod.mask).sum())  # pruned entries are exact zeros
        _, resid = fit_spatial_kernel(q, mod.mask, g)
        assert resid < 1e-5  # the kept entries are still those of a spatial kernel
    assert isinstance(net[0].q, nn.Parameter)  # layer 0, not chosen, trained its Q as before


def test_a_layer_pruned_by_apply_mask_is_fitted_on_its_kept_entries():
    net = _wino_net()
    pruner = WinogradPruner(net, keep_dense=None)
    pruner.prune(0.5)  # zeroes the pruned entries of q itself: q is no longer G W Gᵀ everywhere
    x = torch.randn(1, 3, 10, 10)
    with torch.no_grad():
        before = net(x)
        with spatial_kernels(net):
            inside = net(x)
    assert torch.allclose(inside, before, atol=1e-5, rtol=1e-5)


def test_refusals_name_the_layer():
    net = _wino_net()
    with torch.no_grad():
        net[2].q.add_(0.1 * torch.randn_like(net[2].q))  # "trained in the Winograd domain"
    with pytest.raises(ValueError, match=r"^2: its Winograd-domain weight is not G W Gᵀ"):
        with spatial_kernels(net):
            pass
    assert not any(hasattr(mod, "parametrizations") and mod.parametrizations for mod in net.modules()
                   if isinstance(mod, WinogradConv2d))  # layer 0, registered first, was released
    with pytest.raises(ValueError, match=r"\['1'\] are not WinogradConv2d"):
        with spatial_kernels(net, layers=["1"]):
            pass
    with pytest.raises(ValueError, match="nested"):
        with spatial_kernels(net, layers=["0"]):
            with spatial_kernels(net, layers=["0"]):
                pass
    strided = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1))
    convert_to_winograd(strided)
    with pytest.raises(ValueError, match="decomposed"):
        with spatial_kernels(strided):
            pass


def test_an_error_inside_the_block_still_gives_q_back():
    net = _wino_net()
    with pytest.raises(RuntimeError, match="boom"):
        with spatial_kernels(net):
            raise RuntimeError("boom")
    assert all(isinstance(net[i].q, nn.Parameter) for i in (0, 2, 4))
