"""SparseWinogradConv2d and convert(): construction, conversion, save/load, bad input."""

import copy
import io
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests._io import reloaded
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
def _spatially_pruned(seed, sp, m=4, k=32, dtype=torch.float32):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(16, k, 3, padding=1), nn.ReLU(), nn.Conv2d(k, k, 3, padding=1)).to(dtype)
    if sp:
        SpatialPruner(model, m=m, block=(16, 1), keep_dense=None, tol=1e-3, max_iter=25).prune(sp)
    return model


def _winograd_pruned(seed, sp, m=4, k=32, dtype=torch.float32):
    from tritonwino.pruning import WinogradPruner, convert_to_winograd

    model = _spatially_pruned(seed, 0.0, m, k, dtype)
    convert_to_winograd(model, m=m)
    if sp:
        WinogradPruner(model, block=(16, 1), keep_dense=None).prune(sp)
    return model


def _converted_pair(seed_a=0, seed_b=1, m=4, k=32, kind="spatial"):
    make = _spatially_pruned if kind == "spatial" else _winograd_pruned
    a = convert(make(seed_a, 0.8, m, k), m=m, backend="torch")
    b = convert(_spatially_pruned(seed_b, 0.5, m, k), m=m, backend="torch")  # a freshly built converted model
    return a, b


def test_spatially_pruned_layer_stores_its_spatial_weight_and_roundtrips_exactly():
    a, b = _converted_pair(kind="spatial")
    sd = a.state_dict()
    # pruned W: a bit mask of its nonzeros and those values (smaller than the dense W)
    assert set(sd) == {f"{i}.{n}" for i in (0, 2) for n in ("weight_mask", "weight_nonzeros", "bias", "_extra_state")}
    assert sd["2._extra_state"]["storage"] == "spatial_sparse"
    w = a[2].spatial_weight()
    assert sd["2.weight_mask"].dtype == torch.uint8 and sd["2.weight_mask"].numel() == 32 * 32 * 9 // 8
    assert torch.equal(sd["2.weight_nonzeros"], w[w != 0])
    x = torch.randn(2, 16, 12, 12)
    with torch.no_grad():
        ya = a(x)
        assert not torch.equal(b(x), ya)
    b.load_state_dict(reloaded(sd))  # other sparsity, other buffer sizes: Q re-derived from W
    for la, lb in zip(a[::2], b[::2], strict=True):
        for name in ("packed_values", "packed_indices", "packed_offsets"):
            assert torch.equal(getattr(la, name), getattr(lb, name)), name
        assert torch.equal(la.weight, lb.weight)
    with torch.no_grad():
        assert torch.equal(b(x), ya)
    assert b[2].winograd_sparsity() == a[2].winograd_sparsity()
    assert b.state_dict()["2._extra_state"]["storage"] == "spatial_sparse"  # the loaded layer keeps W
    # an unpruned W is stored as it is (a bit mask would only add bytes)
    dense = convert(_spatially_pruned(0, 0.0), backend="torch").state_dict()
    assert dense["2._extra_state"]["storage"] == "spatial" and dense["2.weight"].shape == (32, 32, 3, 3)
    # masking leaves -0.0 in the conv's weight; the layer holds +0.0 there (bitwise what a load rebuilds)
    conv = _spatially_pruned(0, 0.8)[2]
    assert bool(torch.signbit(conv.weight[conv.weight == 0]).any())
    assert not bool(torch.signbit(w[w == 0]).any())


def test_winograd_pruned_layer_stores_packed_arrays_in_the_model_dtype_and_roundtrips_exactly():
    a, b = _converted_pair(kind="winograd")
    sd = a.state_dict()
    assert sd["2._extra_state"]["storage"] == "packed" and "2.weight" not in sd
    assert sd["2.packed_values"].dtype == torch.float32 and sd["2.packed_indices"].dtype == torch.int16
    assert sd["2.packed_values"].numel() < 0.5 * 32 * 32 * 36  # packed, not dense
    x = torch.randn(2, 16, 12, 12)
    with torch.no_grad():
        ya = a(x)
    b.load_state_dict(reloaded(sd))  # a spatially converted layer takes a packed weight too
    with torch.no_grad():
        assert torch.equal(b(x), ya)
    assert b[2].spatial_weight() is None and b[2].weight is None  # no exact spatial form
    # a tritonwino 0.1 checkpoint (format 1: packed arrays, no storage field) still loads
    old = {k: ({kk: vv for kk, vv in v.items() if kk != "storage"} | {"format": 1}) if k.endswith("_extra_state")
           else v for k, v in sd.items()}
    b2 = _converted_pair(kind="spatial")[1]
    b2.load_state_dict(old)
    with torch.no_grad():
        assert torch.equal(b2(x), ya)
    # float64 models keep float64 values
    a64 = convert(_winograd_pruned(0, 0.8, dtype=torch.float64), backend="torch")
    assert a64.state_dict()["2.packed_values"].dtype == torch.float64


def _param_bytes(model):
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _file_size(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.tell()


@pytest.mark.parametrize("kind", ["spatial", "winograd"])
def test_default_checkpoint_at_75_percent_is_within_10_percent_of_dense_parameter_bytes(kind):
    """Issue 11 item 14: a converted model's default state_dict at >= 75% Winograd sparsity costs
    at most 1.1x the dense model's parameter bytes (it was 3.2x), and round-trips exactly into a
    freshly built, converted model."""
    from tritonwino.pruning import model_winograd_sparsity

    def build():
        return nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1))

    torch.manual_seed(0)
    dense = build()
    dense_bytes = _param_bytes(dense)
    pruned = copy.deepcopy(dense)
    if kind == "spatial":
        SpatialPruner(pruned, m=4, block=(16, 1), keep_dense=None).prune(0.75)
    else:
        from tritonwino.pruning import WinogradPruner, convert_to_winograd

        convert_to_winograd(pruned, m=4)
        WinogradPruner(pruned, block=(16, 1), keep_dense=None).prune(0.75)
    conv = convert(pruned, backend="torch")
    assert model_winograd_sparsity(conv, m=None)["overall"] >= 0.75 - 1e-3
    sd = conv.state_dict()
    tensor_bytes = sum(v.numel() * v.element_size() for v in sd.values() if isinstance(v, torch.Tensor))
    assert tensor_bytes <= 1.10 * dense_bytes, (tensor_bytes / dense_bytes)
    assert _file_size(sd) <= 1.10 * _file_size(dense.state_dict()) + 4096  # + pickled metadata
    fresh = convert(build(), backend="torch")
    fresh.load_state_dict(reloaded(sd))
    x = torch.randn(2, 64, 9, 9)
    with torch.no_grad():
        assert torch.equal(fresh(x), conv(x))


def test_compact_state_dict_rounds_the_stored_weight_and_loads_into_a_fresh_model():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1))
    SpatialPruner(dense, m=4, block=(16, 1), keep_dense=None, tol=1e-3, max_iter=25).prune(0.75)
    conv = convert(copy.deepcopy(dense), backend="torch")
    c16 = compact_state_dict(conv)
    assert c16["0.weight_nonzeros"].dtype == torch.float16  # the pruned W, stored sparse
    assert _file_size(c16) < 0.6 * _file_size(dense.state_dict())
    fresh = convert(nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1)), backend="torch")
    fresh.load_state_dict(compact_state_dict(conv))
    assert fresh[0].packed_values.dtype == torch.float32
    rounded = copy.deepcopy(conv)
    for layer in rounded:
        layer.weight = layer.weight.half().float()  # W rounded to fp16, Q re-derived
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        assert torch.equal(fresh(x), rounded(x))
        assert _rel(fresh(x), conv(x).double()) < REL_BOUND[(4, torch.float16)]
    # a packed layer's values are rounded instead
    wino = convert(_winograd_pruned(0, 0.8), backend="torch")
    assert compact_state_dict(wino)["2.packed_values"].dtype == torch.float16


def test_load_mismatch_fails_clearly_before_any_wrong_result():
    a, _ = _converted_pair(kind="winograd")
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
    # truncated offsets, missing metadata, a weight of the wrong shape, both forms at once
    bad = dict(sd)
    bad["2.packed_offsets"] = sd["2.packed_offsets"][:-1]
    with pytest.raises(ValueError, match="offsets"):
        fresh.load_state_dict(bad)
    bad = {k: v for k, v in sd.items() if k != "2._extra_state"}
    with pytest.raises(ValueError, match="metadata"):
        fresh.load_state_dict(bad)
    dense_sd = convert(_spatially_pruned(0, 0.0), backend="torch").state_dict()
    bad = dict(dense_sd)
    bad["2.weight"] = bad["2.weight"][:, :16]
    with pytest.raises(ValueError, match="shape"):
        fresh.load_state_dict(bad)
    bad = {**sd, "2.weight": dense_sd["2.weight"]}
    with pytest.raises(ValueError, match="more than one form"):
        fresh.load_state_dict(bad)
    # a sparse spatial weight whose mask and values disagree
    sparse_sd = _converted_pair()[0].state_dict()
    bad = {**sparse_sd, "2.weight_nonzeros": sparse_sd["2.weight_nonzeros"][:-1]}
    with pytest.raises(ValueError, match="weight_nonzeros"):
        fresh.load_state_dict(bad)


@pytest.mark.parametrize("missing", ["2.packed_values", "2.packed_indices", "2.packed_offsets"])
def test_failed_strict_load_leaves_the_layer_untouched_and_usable(missing):
    """Issue 11 item 8: the offsets used to be copied before the missing values were noticed."""
    a, b = _converted_pair(kind="winograd")
    sd = {k: v for k, v in a.state_dict().items() if k != missing}
    before = {k: v.clone() for k, v in b.state_dict().items() if isinstance(v, torch.Tensor) and k[0] == "2"}
    x = torch.randn(1, 32, 8, 8)
    with torch.no_grad():
        y_before = b[2](x)
    with pytest.raises(RuntimeError, match=f"Missing key.*{missing}"):
        b.load_state_dict(sd)
    after = b.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    with torch.no_grad():
        assert torch.equal(b[2](x), y_before)
    # non-strict: reported, and the layer is still untouched
    result = b.load_state_dict(sd, strict=False)
    assert missing in result.missing_keys
    with torch.no_grad():
        assert torch.equal(b[2](x), y_before)
    # a bias of the wrong shape is refused before the weight is replaced
    bad = dict(a.state_dict())
    bad["2.bias"] = torch.zeros(7)
    with pytest.raises(ValueError, match="bias"):
        b.load_state_dict(bad)
    with torch.no_grad():
        assert torch.equal(b[2](x), y_before)


def test_dense_conv_state_dict_loads_into_a_converted_model():
    """A plain nn.Conv2d checkpoint (weight + bias, no metadata) is a spatial weight: it loads
    into a converted model (Q derived at the layer's tile and block)."""
    dense = _spatially_pruned(3, 0.7)
    conv = convert(_spatially_pruned(4, 0.0), backend="torch")
    sd = {k: v for k, v in dense.state_dict().items() if "spatial_mask" not in k}
    conv.load_state_dict(sd)
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        assert _rel(conv(x), dense(x).double()) < REL_BOUND[(4, torch.float32)]
    assert conv[2].winograd_sparsity() > 0.6


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
    mod.to(dtype)  # as with nn.Conv2d, the model takes the input's dtype
    q = q.to(dtype).double()
    b = b.to(dtype)
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
        mod(torch.randn(8, 10))
    with pytest.raises(ValueError, match="4-D"):
        mod(torch.randn(1, 1, 8, 10, 10))
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


# ---- stale caches (issue 11 item 5) --------------------------------------------------------------
def test_torch_path_sees_an_in_place_edit_of_the_indices():
    """The padded-slab cache of a PackedWinogradWeight was keyed on the values only."""
    q = _pruned_q(16, 8, sparsity=0.5)
    packed = pack_winograd_weight(q, (16, 1), dtype=torch.float64)
    x = torch.randn(1, 8, 8, 8, dtype=torch.float64)
    reference.sparse_winograd_conv2d(x, packed, None, 1)  # fills the padded-slab cache
    # a valid edit: the first group's last kept slot now reads the last channel (still ascending)
    end = int(packed.offsets[1])
    assert end >= 1 and int(packed.indices[end - 1]) < 7
    packed.indices[end - 1] = 7
    packed.validate()
    y = reference.sparse_winograd_conv2d(x, packed, None, 1)
    ref = reference.winograd_conv2d_q(x, packed.unpack(), None, 1, 4)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", ["conv2d", "dense", "sparse"])
def test_module_paths_follow_in_place_edits_of_the_buffers(path):
    conv = nn.Conv2d(8, 16, 3, padding=1).double()
    layer = SparseWinogradConv2d.from_conv2d(conv, backend="torch")
    x = torch.randn(1, 8, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        layer.run_path(x, path, "torch")  # builds the derived form of that path
        layer.packed_values.mul_(2)  # an in-place edit (version counter bumped)
        if path == "conv2d":
            w = layer.spatial_weight()
            assert w is not None  # recovered from the edited Q, not the stale W
            torch.testing.assert_close(w, 2 * conv.weight.detach(), rtol=1e-10, atol=1e-10)
        y = layer.run_path(x, path, "torch")
    ref = F.conv2d(x, 2 * conv.weight.detach(), conv.bias.detach(), padding=1)
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
    assert layer.state_dict()["_extra_state"]["storage"] == "packed"  # W no longer describes the arrays


def test_module_revalidates_after_data_reassignment():
    """``t.data = other`` bypasses the version counter; the storage change is still noticed."""
    mod, q, b = _layer()
    x = torch.randn(1, 8, 8, 8)
    with torch.no_grad():
        mod(x)
        bad = mod.packed_indices.clone()
        bad[0] = 8  # == C: outside [0, C)
        mod.packed_indices.data = bad
        with pytest.raises(ValueError, match="outside"):
            mod(x)
        fresh, _, _ = _layer(sparsity=0.5)  # another valid weight, other sizes
        for name in ("packed_indices", "packed_values", "packed_offsets", "bias"):
            getattr(mod, name).data = getattr(fresh, name).detach().clone()
        assert torch.equal(mod(x), fresh(x))


def test_second_backward_through_the_functional_with_trainable_packed_values():
    from tritonwino.functional import sparse_winograd_conv2d

    q = _pruned_q(16, 8, sparsity=0.5)
    packed = pack_winograd_weight(q, (16, 1), dtype=torch.float64)
    packed.values.requires_grad_(True)
    x = torch.randn(1, 8, 8, 8, dtype=torch.float64)
    grads = []
    for _ in range(2):
        sparse_winograd_conv2d(x, packed, None, 1, "torch").square().sum().backward()
        grads.append(packed.values.grad.clone())
        packed.values.grad = None
    assert torch.equal(grads[0], grads[1])
    # and the gradient is right: d/dvalues of the same loss through the dense oracle
    v = packed.values.detach().clone().requires_grad_(True)
    ref = pack_winograd_weight(q, (16, 1), dtype=torch.float64)
    ref.values = v
    reference.winograd_conv2d_q(x, ref.unpack(), None, 1, 4).square().sum().backward()
    torch.testing.assert_close(grads[0], v.grad, rtol=1e-10, atol=1e-10)


# ---- inference mode (issue 11 item 10) -----------------------------------------------------------
def test_layer_packed_converted_or_loaded_in_inference_mode_runs_outside_it():
    conv = nn.Conv2d(8, 16, 3, padding=1)
    x = torch.randn(1, 8, 8, 8)
    with torch.inference_mode():
        q = reference.winograd_weight(conv.weight, 4).float()
        packed = pack_winograd_weight(q, (16, 1))
        made = SparseWinogradConv2d(packed, conv.bias, 1, "torch")
        converted = convert(nn.Sequential(copy.deepcopy(conv)), backend="auto")
        loaded = convert(nn.Sequential(nn.Conv2d(8, 16, 3, padding=1)), backend="torch")
        loaded.load_state_dict(converted.state_dict())
    ref = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
    for layer in (made, converted, loaded):
        with torch.no_grad():
            assert _rel(layer(x), ref) < REL_BOUND[(4, torch.float32)]
        xg = x.clone().requires_grad_()
        layer(xg).sum().backward()  # autograd records the forward: no inference tensor may be saved
        assert xg.grad is not None


# ---- PackedWinogradWeight.to (issue 11 item 13) ---------------------------------------------------
def test_packed_to_takes_arguments_like_tensor_to():
    packed = pack_winograd_weight(_pruned_q(16, 8), (16, 1), dtype=torch.float32)
    for args, kwargs in [((torch.float16,), {}), (("cpu", torch.float16), {}), ((), {"dtype": torch.float16}),
                         ((torch.empty(0, dtype=torch.float16),), {})]:
        half = packed.to(*args, **kwargs)
        assert half.values.dtype == torch.float16 and half.indices.dtype == packed.indices.dtype
        assert half.offsets.dtype == torch.int32
        assert torch.equal(half.values, packed.values.half())
    assert packed.to("cpu").values.dtype == torch.float32
    with pytest.raises(TypeError, match="floating"):
        packed.to(torch.int32)
