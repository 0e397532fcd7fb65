"""SparseWinogradConv2d and convert(): construction, conversion, save/load, bad input."""

import copy
import io
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests._tolerance import REL_BOUND
from tritonwino import _triton_path, reference
from tritonwino.modules import compact_state_dict
from tritonwino.packing import pack_winograd_weight
from tritonwino.pruning import SpatialPruner, WinogradConv2d
from tritonwino.sparse_conv import SparseWinogradConv2d, convert
from tritonwino.testing import random_pruned_q


def _pruned_q(k, c, m=4, sparsity=0.75, gen=None):
    """Random Q with a Winograd-domain mask at (16, 1) granularity: per position and group of 16
    output channels, input channels are kept or dropped together."""
    return random_pruned_q(k, c, m, 3, sparsity, (16, 1), generator=gen)


def _layer(k=16, c=8, sparsity=0.75, m=4, padding=1, backend="torch", bias=True):
    q = _pruned_q(k, c, m, sparsity)
    b = torch.randn(k) if bias else None
    mod = SparseWinogradConv2d(pack_winograd_weight(q, (16, 1), dtype=torch.float32), b, padding, backend)
    return mod, q.float().double(), b


def _oracle(x, q, b, padding=1, m=4):
    return reference.winograd_conv2d_q(x.double(), q, None if b is None else b.double(), padding, m)


def _rel(y, ref):
    return float((y.detach().double() - ref.detach()).abs().max() / ref.detach().abs().max())


# ---- construction ------------------------------------------------------------------------------
def test_from_conv2d_dense_matches_conv2d_on_every_backend_choice():
    conv = nn.Conv2d(8, 16, 3, padding=1)
    x = torch.randn(2, 8, 12, 12)
    ref = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
    for backend in ("torch", "auto"):
        mod = SparseWinogradConv2d.from_conv2d(conv, m=4, block=(16, 1), backend=backend)
        with torch.no_grad():
            y = mod(x)
        assert y.shape == ref.shape and y.dtype == torch.float32
        assert _rel(y, ref) < REL_BOUND[(4, torch.float32)]
        assert mod.winograd_sparsity() == 0.0


def test_from_conv2d_uses_spatial_mask_and_exact_zeros():
    model = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1))
    pruner = SpatialPruner(model, m=4, block=(16, 1), keep_dense=None, tol=1e-3, max_iter=25)
    pruner.prune(0.6)
    conv = model[2]
    mod = SparseWinogradConv2d.from_conv2d(conv, m=4, block=(16, 1), backend="torch")
    q = reference.winograd_weight(conv.weight.detach() * conv.spatial_mask, 4)
    sp = float((q == 0).double().mean())
    assert sp > 0.5
    assert mod.winograd_sparsity() == pytest.approx(sp, abs=1e-9)
    # the packed weight skips work: fewer kept channel slots than a dense layer
    assert mod.packed.density < 0.6
    assert mod.spatial_weight() is not None  # spatially pruned: conv2d is an exact alternative
    torch.testing.assert_close(mod.spatial_weight().double(), conv.weight.detach().double() * conv.spatial_mask,
                               atol=1e-5, rtol=0)


def test_from_winograd_conv2d_matches_layer_and_has_no_spatial_equivalent():
    conv = nn.Conv2d(8, 16, 3, padding=1)
    layer = WinogradConv2d.from_conv2d(conv, m=4)
    with torch.no_grad():
        layer.mask.copy_(torch.rand(layer.mask.shape) > 0.7)  # Winograd-domain pruning
        layer.apply_mask()
    mod = SparseWinogradConv2d.from_conv2d(layer, block=(16, 1), backend="auto")
    x = torch.randn(2, 8, 10, 10)
    with torch.no_grad():
        y_ref, y = layer(x), mod(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    assert mod.spatial_weight() is None  # pruned in the Winograd domain: conv2d would be wrong
    assert all(d.path != "conv2d" for d in mod.dispatch_decisions().values())


def test_extra_repr_shows_tile_block_sparsity_backend():
    mod, _, _ = _layer(backend="torch")
    text = repr(mod)
    assert "tile=F(4,3)" in text and "block=(16, 1)" in text and "winograd_sparsity=" in text
    assert "backend=torch" in text


# ---- convert -----------------------------------------------------------------------------------
class _Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                  nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=3)))
        self.head = nn.Conv2d(8, 4, 1)
        self.dil = nn.Conv2d(4, 4, 3, dilation=2, padding=2)

    def forward(self, x):
        return self.dil(self.head(self.body(x)))


def test_convert_nested_sequential_filter_and_log(caplog):
    model = _Nested().eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        y0 = model(x)
    head, strided = model.head, model.body[2][1]
    with caplog.at_level(logging.INFO, logger="tritonwino"):
        out = convert(model, filter_fn=lambda mod, name: name != "body.2.0", backend="torch")
    assert out is model
    assert isinstance(model.body[0], SparseWinogradConv2d)
    assert isinstance(model.body[2][0], nn.Conv2d)  # excluded by filter_fn
    assert model.head is head and model.body[2][1] is strided  # ineligible ones untouched
    log = dict(model.tritonwino_conversion)
    assert log["body.0"] == "swapped" and log["body.2.0"] == "excluded by filter_fn"
    assert "stride" in log["body.2.1"] and "1x1" in log["head"] and "dilation" in log["dil"]
    assert any("swapped 1 of 5 conv layers" in r.getMessage() for r in caplog.records)
    with torch.no_grad():
        torch.testing.assert_close(model(x), y0, rtol=1e-4, atol=1e-4)


def test_convert_root_conv_and_bad_arguments():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    new = convert(conv, backend="torch")
    assert isinstance(new, SparseWinogradConv2d)
    with pytest.raises(ValueError, match="backend"):
        convert(nn.Sequential(nn.Conv2d(4, 4, 3)), backend="cuda")
    with pytest.raises(ValueError, match="bk"):
        convert(nn.Sequential(nn.Conv2d(4, 4, 3)), block=(8, 1))
    with pytest.raises(TypeError, match="nn.Module"):
        convert("model")


# ---- save / load -------------------------------------------------------------------------------
def _converted_pair(seed_a=0, seed_b=1, m=4, k=32):
    def make(seed, sp):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Conv2d(16, k, 3, padding=1), nn.ReLU(), nn.Conv2d(k, k, 3, padding=1))
        pruner = SpatialPruner(model, m=m, block=(16, 1), keep_dense=None, tol=1e-3, max_iter=25)
        pruner.prune(sp)
        return model

    a = convert(make(seed_a, 0.8), m=m, backend="torch")
    b = convert(make(seed_b, 0.5), m=m, backend="torch")
    return a, b


def test_state_dict_holds_packed_arrays_only_and_roundtrips_exactly():
    a, b = _converted_pair()
    sd = a.state_dict()
    assert set(sd) == {f"{i}.{n}" for i in (0, 2) for n in
                       ("packed_values", "packed_indices", "packed_offsets", "bias", "_extra_state")}
    k, c, p = 32, 32, 36
    assert sd["2.packed_values"].numel() < 0.5 * k * c * p  # packed, not dense
    assert sd["2.packed_indices"].dtype == torch.int16  # C < 32768: 2-byte indices
    x = torch.randn(2, 16, 12, 12)
    with torch.no_grad():
        ya = a(x)
        assert not torch.equal(b(x), ya)
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))  # other sparsity, other buffer sizes
    with torch.no_grad():
        assert torch.equal(b(x), ya)
    assert b[2].winograd_sparsity() == pytest.approx(a[2].winograd_sparsity())


def _file_size(sd):
    buf = io.BytesIO()
    torch.save({k: v for k, v in sd.items() if "spatial_mask" not in k}, buf)
    return buf.tell()


def test_compact_file_smaller_than_dense_at_75_percent():
    """F(4,3) has 36 Winograd entries per 9 spatial ones: fp32 packed values break even with the
    dense spatial weight at 75% Winograd sparsity, fp16 values (compact_state_dict) halve that."""
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1))
    SpatialPruner(dense, m=4, block=(16, 1), keep_dense=None, tol=1e-3, max_iter=25).prune(0.75)
    conv = convert(copy.deepcopy(dense), backend="torch")
    assert min(conv[0].winograd_sparsity(), conv[1].winograd_sparsity()) >= 0.74
    d, c16 = _file_size(dense.state_dict()), _file_size(compact_state_dict(conv))
    assert c16 < 0.6 * d, (c16, d)
    # loading the compact file into a fresh converted model: Q rounded to fp16, nothing else changes
    fresh = convert(nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1)), backend="torch")
    fresh.load_state_dict(compact_state_dict(conv))
    assert fresh[0].packed_values.dtype == torch.float32
    x = torch.randn(1, 64, 8, 8)
    rounded = copy.deepcopy(conv)
    for layer in rounded:
        layer.packed_values.copy_(layer.packed_values.half().float())
    with torch.no_grad():
        assert torch.equal(fresh(x), rounded(x))
        assert _rel(fresh(x), conv(x).double()) < REL_BOUND[(4, torch.float16)]
    # fp32 files are smaller than dense above the 75% break-even point
    SpatialPruner(dense, m=4, block=(16, 1), keep_dense=None, tol=1e-3, max_iter=25).prune(0.85)
    conv85 = convert(copy.deepcopy(dense), backend="torch")
    assert _file_size(conv85.state_dict()) < 0.75 * _file_size(dense.state_dict())


def test_load_mismatch_fails_clearly_before_any_wrong_result():
    a, _ = _converted_pair()
    sd = a.state_dict()
    # other tile
    _, other_tile = _converted_pair(m=2)
    with pytest.raises(ValueError, match="tile m"):
        other_tile.load_state_dict(sd)
    # other shape
    _, other_shape = _converted_pair(k=48)
    with pytest.raises(ValueError, match="out_channels"):
        other_shape.load_state_dict(sd)
    # tampered index beyond C
    _, fresh = _converted_pair()
    bad = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in sd.items()}
    bad["2.packed_indices"][0] = 32
    before = fresh[2].packed_values.clone()
    with pytest.raises(ValueError, match="outside"):
        fresh.load_state_dict(bad)
    assert torch.equal(fresh[2].packed_values, before)  # the bad layer was not modified
    # truncated offsets, missing metadata
    bad = dict(sd)
    bad["2.packed_offsets"] = sd["2.packed_offsets"][:-1]
    with pytest.raises(ValueError, match="offsets"):
        fresh.load_state_dict(bad)
    bad = {k: v for k, v in sd.items() if k != "2._extra_state"}
    with pytest.raises(ValueError, match="metadata"):
        fresh.load_state_dict(bad)


# ---- layouts, dtypes, batch --------------------------------------------------------------------
def test_channels_last_in_channels_last_out():
    mod, q, b = _layer()
    x = torch.randn(2, 8, 11, 13).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = mod(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert _rel(y, _oracle(x, q, b)) < REL_BOUND[(4, torch.float32)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes(dtype):
    mod, q, b = _layer()
    x = torch.randn(2, 8, 10, 10).to(dtype)
    with torch.no_grad():
        y = mod(x)
    assert y.dtype == dtype
    assert _rel(y, _oracle(x, q, b)) < REL_BOUND[(4, dtype)]


def test_autocast_follows_conv2d_dtype():
    conv = nn.Conv2d(8, 16, 3, padding=1)
    mod = SparseWinogradConv2d.from_conv2d(conv, backend="torch")
    x = torch.randn(2, 8, 10, 10)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y_ref, y = conv(x), mod(x)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    ref64 = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
    assert _rel(y, ref64) < REL_BOUND[(4, torch.bfloat16)]


@pytest.mark.parametrize("nb", [1, 64])
def test_batch_one_and_large(nb):
    mod, q, b = _layer(k=16, c=4)
    x = torch.randn(nb, 4, 8, 8)
    with torch.no_grad():
        y = mod(x)
    assert y.shape == (nb, 16, 8, 8)
    assert _rel(y, _oracle(x, q, b)) < REL_BOUND[(4, torch.float32)]


def test_empty_batch_and_non_contiguous_view():
    mod, q, b = _layer(backend="auto")
    with torch.no_grad():
        assert mod(torch.randn(0, 8, 10, 10)).shape == (0, 16, 10, 10)
        big = torch.randn(2, 16, 20, 10)
        x = big[:, ::2, ::2, :]  # strided in C and H
        assert not x.is_contiguous()
        y = mod(x)
    assert _rel(y, _oracle(x.contiguous(), q, b)) < REL_BOUND[(4, torch.float32)]


def test_nan_inf_propagate():
    mod, q, b = _layer(bias=False)
    x = torch.randn(1, 8, 16, 16)
    x[0, 0, 2, 2] = float("nan")
    x[0, 1, 13, 13] = float("inf")
    with torch.no_grad():
        y = mod(x)
    bad = ~torch.isfinite(y)
    assert bad[0, :, 2, 2].all() and bad[0, :, 13, 13].any()
    assert torch.isfinite(y[0, :, 6:10, 6:10]).all()  # a tile touching neither stays finite


# ---- bad input ---------------------------------------------------------------------------------
def test_bad_input_errors():
    mod, _, _ = _layer(backend="auto")
    with pytest.raises(ValueError, match="4-D"):
        mod(torch.randn(8, 10, 10))
    with pytest.raises(ValueError, match="channels"):
        mod(torch.randn(1, 7, 10, 10))
    with pytest.raises(TypeError, match="floating"):
        mod(torch.ones(1, 8, 10, 10, dtype=torch.int32))
    with pytest.raises(ValueError, match="same device"):
        mod(torch.empty(1, 8, 10, 10, device="meta"))
    with pytest.raises(ValueError, match="smaller than"):
        SparseWinogradConv2d(mod.packed, None, 0, "torch")(torch.randn(1, 8, 2, 2))
    with pytest.raises(ValueError, match="backend"):
        SparseWinogradConv2d(mod.packed, None, 1, "gpu")


@pytest.mark.kernels
def test_index_limit_refused_on_triton_path_torch_path_still_works(monkeypatch):
    mod, q, b = _layer(backend="triton")
    monkeypatch.setattr(_triton_path, "INDEX_LIMIT", 1000)
    x = torch.randn(1, 8, 10, 10)
    with torch.no_grad(), pytest.raises(ValueError, match="1000 or more elements"):
        mod(x)
    mod.backend = "torch"
    with torch.no_grad():
        assert _rel(mod(x), _oracle(x, q, b)) < REL_BOUND[(4, torch.float32)]
    # and the check itself needs no memory: a meta tensor of 2^33 elements
    monkeypatch.setattr(_triton_path, "INDEX_LIMIT", 2**31)
    with pytest.raises(ValueError, match="input"):
        _triton_path.check_index_range(torch.empty(2**15, 8, 256, 128, device="meta"), 16, 8, 4, 3, (1, 1))


@pytest.mark.kernels
def test_gradients_reach_the_input_on_torch_path_triton_says_inference_only():
    mod, q, b = _layer(backend="torch")
    x = torch.randn(1, 8, 8, 8, requires_grad=True)
    mod(x).square().sum().backward()
    xd = x.detach().double().requires_grad_(True)
    _oracle(xd, q, b).square().sum().backward()
    assert _rel(x.grad, xd.grad) < 1e-4
    mod.backend = "triton"
    with pytest.raises(RuntimeError, match="inference-only"):
        mod(torch.randn(1, 8, 8, 8, requires_grad=True))


@pytest.mark.kernels
def test_triton_path_tiny_matches_torch_path():
    mod, q, b = _layer(k=16, c=4, backend="triton")
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        y = mod(x)
        mod.backend = "torch"
        y_t = mod(x)
    ref = _oracle(x, q, b)
    assert (y.double() - ref).abs().max() <= 2 * (y_t.double() - ref).abs().max() + 1e-6 * ref.abs().max()


def test_caches_filled_in_inference_mode_still_serve_autograd():
    """tune_model / measured dispatch run under inference_mode and fill the weight caches; a later
    forward that autograd records must still work (inference tensors cannot be saved for backward)."""
    from tritonwino.experiments.models import SmallVGG
    from tritonwino.sparse_conv import tune_model

    model = SmallVGG(10, 1, cfg=(8, "M", 16)).eval()
    convert(model, m=4, block=(16, 1), backend="auto")
    x = torch.randn(2, 1, 12, 12)
    tune_model(model, x)  # every path measured (conv2d, dense, sparse) inside inference_mode
    for path in ("conv2d", "dense", "sparse"):
        xin = x.clone().requires_grad_()
        layer = model.features[4]
        y = layer.run_path(torch.relu(model.features[0](xin)), path, "torch")
        y.sum().backward()
        assert xin.grad is not None and torch.isfinite(xin.grad).all()
    model(x.clone().requires_grad_()).sum().backward()  # the dispatched model itself
