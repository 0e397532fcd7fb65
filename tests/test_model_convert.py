"""Model level: pruned SmallVGG / SmallResNet -> convert -> same outputs (torch path, measured
dispatch, and the Triton path under the interpreter at a tiny size); save / load of a whole model;
the layer patterns of models no one here wrote (timm / torchvision style subclasses, string
padding, parametrizations, hooks, fusers, meta-device init, plain training loops)."""

import copy
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tritonwino.sparse_conv as sc
from tests._io import reloaded
from tests._tolerance import REL_BOUND
from tritonwino import ops
from tritonwino.experiments.models import SmallResNet, SmallVGG
from tritonwino.pruning import SpatialPruner, WinogradPruner, convert_to_winograd, model_winograd_sparsity
from tritonwino.sparse_conv import SparseWinogradConv2d, convert

# Several F(4,3) fp32 layers in a row: each adds ~1e-6 relative error (tests/_tolerance.py bounds one
# layer by 2e-5); a wrong mask or channel would give O(1) errors.
MODEL_RTOL = 1e-4


def _rel(y, ref):
    return float((y.double() - ref.double()).abs().max() / ref.double().abs().max())


def _randomize_bn(model):
    # eval-mode BN with non-trivial statistics, so the test would catch a layer fed the wrong input
    gen = torch.Generator().manual_seed(1)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=gen) * 0.1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)


def _pruned(factory, target=0.7, **kw):
    torch.manual_seed(0)
    model = factory(**kw)
    _randomize_bn(model)
    SpatialPruner(model, m=4, block=(16, 1), tol=1e-3, max_iter=25).prune(target)
    return model.eval()


MODELS = {
    "vgg": lambda: _pruned(SmallVGG, num_classes=10, in_channels=1),
    "resnet": lambda: _pruned(SmallResNet, num_classes=10, in_channels=1),
}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_converted_model_matches_pruned_model(name, backend):
    model = MODELS[name]()
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        y_ref = model(x)
    n_convs = sum(1 for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    convert(model, m=4, block=(16, 1), backend=backend)
    swapped = [n for n, s in model.tritonwino_conversion if s == "swapped"]
    assert len(swapped) == n_convs
    with torch.no_grad():
        y = model(x)
    assert _rel(y, y_ref) < MODEL_RTOL
    assert (y.argmax(1) == y_ref.argmax(1)).all()
    sparse = [m for m in model.modules() if isinstance(m, SparseWinogradConv2d)]
    assert sum(m.winograd_sparsity() > 0.5 for m in sparse) >= len(sparse) - 1  # first layer stays dense


@pytest.mark.parametrize("factory,kw", [
    (SmallVGG, {"cfg": (16, "M", 16)}),
    (SmallResNet, {"widths": (16, 16)}),
])
def test_triton_path_under_interpreter_tiny(factory, kw):
    model = _pruned(factory, 0.6, num_classes=4, in_channels=1, **kw)
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        y_ref = model(x)
        convert(model, backend="triton")
        y = model(x)
    assert _rel(y, y_ref) < MODEL_RTOL


def test_winograd_direct_pruned_model_converts():
    torch.manual_seed(0)
    model = SmallVGG(10, 1, cfg=(16, "M", 32, 32))
    _randomize_bn(model)
    convert_to_winograd(model, m=4)
    WinogradPruner(model, block=(16, 1)).prune(0.6)
    model.eval()
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        y_ref = model(x)
        convert(model, block=(16, 1))
        y = model(x)
    assert sum(isinstance(m, SparseWinogradConv2d) for m in model.modules()) == 3
    assert _rel(y, y_ref) < MODEL_RTOL
    for mod in model.modules():
        if isinstance(mod, SparseWinogradConv2d) and mod.winograd_sparsity() > 0.5:
            assert all(d.path != "conv2d" for d in mod.dispatch_decisions().values())


def test_whole_model_save_load_into_fresh_conversion():
    model = convert(MODELS["resnet"](), backend="auto")
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        y = model(x)
    sd = reloaded(model.state_dict())
    torch.manual_seed(123)
    fresh = convert(SmallResNet(10, 1).eval(), backend="auto")  # unpruned: other buffer sizes
    fresh.load_state_dict(sd)
    with torch.no_grad():
        assert torch.equal(fresh(x), y)
    # a deep copy keeps working too (buffers, not Python-side caches, hold the weight)
    with torch.no_grad():
        assert torch.equal(copy.deepcopy(fresh)(x), y)


# ------------------------------------------------------------------------------------------------
# Models no one here wrote (issue 11 item 15): the layer patterns of timm / torchvision models,
# recreated here (torchvision does not import next to this torch).
# ------------------------------------------------------------------------------------------------


class StdConv2d(nn.Conv2d):
    """Weight-standardised conv (timm / BiT): standardises the weight inside forward."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Conv2dSame(nn.Conv2d):
    """TF-style "same" conv (timm): pads inside forward, its padding attribute says 0."""

    def forward(self, x):
        return super().forward(F.pad(x, (1, 1, 1, 1)))


class ScaledConv(nn.Conv2d):
    """Overrides only _conv_forward (as some quantisation wrappers do)."""

    def _conv_forward(self, x, weight, bias):
        return super()._conv_forward(x, 0.5 * weight, bias)


class PlainSubclass(nn.Conv2d):
    """A subclass that changes nothing about the computation: converted like nn.Conv2d."""


def _rel64(y, ref):
    return float((y.double() - ref.double()).abs().max() / ref.double().abs().max())


def test_convert_leaves_subclasses_that_override_forward_and_says_why():
    torch.manual_seed(0)
    model = nn.Sequential(StdConv2d(4, 8, 3, padding=1), Conv2dSame(8, 8, 3), ScaledConv(8, 8, 3, padding=1),
                          PlainSubclass(8, 8, 3, padding=1), nn.utils.weight_norm(nn.Conv2d(8, 8, 3, padding=1))).eval()
    x = torch.randn(2, 4, 10, 10)
    with torch.no_grad():
        y0 = model(x)
    convert(model, backend="torch")
    log = dict(model.tritonwino_conversion)
    assert "overrides forward" in log["0"] and "overrides forward" in log["1"]
    assert "overrides _conv_forward" in log["2"] and "WeightNorm" in log["4"]
    assert log["3"] == "swapped" and isinstance(model[3], SparseWinogradConv2d)
    assert type(model[0]) is StdConv2d and type(model[1]) is Conv2dSame and type(model[2]) is ScaledConv
    with torch.no_grad():
        assert _rel64(model(x), y0) < MODEL_RTOL  # was 0.945 / 0.202 relative error


def test_parametrized_conv_converts_with_the_weight_its_forward_uses():
    from torch.nn.utils import parametrize

    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    conv = nn.Conv2d(4, 8, 3, padding=1)
    parametrize.register_parametrization(conv, "weight", Double())
    model = nn.Sequential(conv).eval()
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        y0 = model(x)
        convert(model, backend="torch")
        assert isinstance(model[0], SparseWinogradConv2d)
        assert _rel64(model(x), y0) < MODEL_RTOL


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_string_padding_converts(padding):
    conv = nn.Conv2d(4, 8, 3, padding=padding)
    model = nn.Sequential(conv).eval()
    x = torch.randn(1, 4, 9, 7)
    with torch.no_grad():
        y0 = model(x)
        convert(model, backend="torch")
        y = model(x)
    assert isinstance(model[0], SparseWinogradConv2d) and model[0].padding == ((1, 1) if padding == "same" else (0, 0))
    assert y.shape == y0.shape and _rel64(y, y0) < MODEL_RTOL


# ---- memory format: outputs dense in the input's layout, as the fake kernels promise ----------
@pytest.mark.parametrize("h,w,bias", [(4, 4, True), (4, 4, False), (7, 5, False), (6, 10, False)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_outputs_are_dense_in_the_input_layout(h, w, bias, channels_last):
    """One tile per side (4x4 at F(4,3)), bias=False, H / W not multiples of m: the torch path used
    to return strides like (1, 2, 128, 32) while the fake promised NCHW."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1, bias=bias)
    layer = SparseWinogradConv2d.from_conv2d(conv, backend="torch")
    x = torch.randn(2, 8, h, w)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    with torch.no_grad():
        for path in ("sparse", "dense", "conv2d"):
            y = layer.run_path(x, path, "torch")
            assert y.is_contiguous(memory_format=fmt), (path, y.stride())
            if not channels_last:
                assert y.view(2, -1).shape == (2, 16 * h * w)  # works where F.conv2d's output works
    p = layer.packed
    bias = None if conv.bias is None else conv.bias.detach()
    args = (x, p.values, p.indices, p.offsets, bias, [1, 1], [4, 3], [16, 8], list(p.block),
            ops.points_str(p.points), "torch", False, False)
    torch.library.opcheck(ops.sparse_winograd_conv2d_op, args)


class _Layer3Pattern(nn.Module):
    """ResNet-18's layer3 at a 64x64 input: 4x4 feature maps (one F(4,3) tile per side), convs
    without bias, batch norm, a residual add and a flatten-by-view head."""

    def __init__(self, c=16):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)) + x)
        return y.view(y.shape[0], -1)


def test_layer3_pattern_compiles_and_flattens(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch.manual_seed(0)
    model = _Layer3Pattern()
    _randomize_bn(model)
    model.eval()
    x = torch.randn(2, 16, 4, 4)
    with torch.no_grad():
        y0 = model(x)
        convert(model, backend="torch")
        y = model(x)
        assert _rel64(y, y0) < MODEL_RTOL
        try:
            yc = torch.compile(model, fullgraph=True)(x)  # inductor checks sizes and strides
        finally:
            torch._dynamo.reset()
    torch.testing.assert_close(yc, y, rtol=1e-5, atol=1e-5)


# ---- dtype, metric, masks, meta ------------------------------------------------------------------
def test_float64_model_keeps_float64_winograd_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1)).double().eval()
    x = torch.randn(2, 8, 10, 10, dtype=torch.float64)
    with torch.no_grad():
        y0 = model(x)
        convert(model, backend="torch")
        assert model[0].packed_values.dtype == torch.float64
        for path in ("sparse", "dense", "conv2d"):
            assert _rel64(model[0].run_path(x, path, "torch"), y0) < 1e-12  # was 4.8e-7 (float32 Q)


def test_model_winograd_sparsity_counts_converted_layers():
    model = MODELS["vgg"]()
    before = model_winograd_sparsity(model, m=4)
    convert(model, backend="torch")
    after = model_winograd_sparsity(model, m=4)
    assert after["overall"] > 0.5  # was 0.0
    assert after["overall"] == pytest.approx(before["overall"], abs=1e-12)
    assert set(after) == set(before)


def _plain_training(model, steps=4, lr=0.5):
    """What Lightning / the HF Trainer do: optimizer.step(), never the pruner's step."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(4, 1, 12, 12, generator=gen)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("kind", ["spatial", "winograd"])
def test_masks_hold_under_a_plain_optimizer_loop(kind):
    torch.manual_seed(0)
    model = SmallVGG(10, 1, cfg=(16, "M", 32, 32))
    if kind == "spatial":
        pruner = SpatialPruner(model, m=4, block=(16, 1), tol=1e-3, max_iter=25)
    else:
        convert_to_winograd(model, m=4)
        pruner = WinogradPruner(model, block=(16, 1))
    pruner.prune(0.7)
    target = pruner.sparsity()
    _plain_training(model)
    model.eval()
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        y = model(x)  # the forward computes with masked weights
    for name, mod in pruner.layers.items():
        if kind == "spatial":
            assert bool((mod.weight[~mod.spatial_mask] == 0).all()), name
    assert pruner.sparsity()["overall"] == pytest.approx(target["overall"], abs=1e-9)
    with torch.no_grad():
        convert(model, block=(16, 1), backend="torch")
        assert _rel64(model(x), y) < MODEL_RTOL  # convert changes nothing (it used to re-mask: 1.5-5%)


def test_masks_hold_over_gradient_accumulation_across_forwards():
    """The mask hook must not modify a weight in place between two forwards of one backward."""
    torch.manual_seed(0)
    model = SmallVGG(10, 1, cfg=(16, "M", 16))
    SpatialPruner(model, m=4, block=(16, 1), tol=1e-3, max_iter=25).prune(0.6)
    x = torch.randn(2, 1, 8, 8)
    (model(x).sum() + model(2 * x).sum()).backward()  # would raise "modified by an inplace operation"


def test_meta_device_model_converts_and_loads():
    torch.manual_seed(0)
    real = convert(MODELS["vgg"](), backend="torch")
    with torch.device("meta"):
        skeleton = SmallVGG(num_classes=10, in_channels=1)
    convert(skeleton.eval(), backend="torch")  # no .item() on meta tensors
    layers = [m for m in skeleton.modules() if isinstance(m, SparseWinogradConv2d)]
    assert layers and all(m.packed_values.is_meta for m in layers)
    assert skeleton(torch.empty(2, 1, 16, 16, device="meta")).shape == (2, 10)  # shape inference
    skeleton.to_empty(device="cpu")
    skeleton.load_state_dict(real.state_dict())
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(skeleton(x), real(x))


# ---- friction -----------------------------------------------------------------------------------
def test_convert_warns_when_the_mask_is_finer_than_the_block():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1))
    SpatialPruner(model, m=4, keep_dense=None).prune(0.7)  # the pruner's default: element (1, 1)
    with pytest.warns(UserWarning, match="finer granularity than block"):
        convert(copy.deepcopy(model), backend="torch")  # convert's default block: (16, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert(copy.deepcopy(model), block=(1, 1), backend="torch")  # element granularity asked for
    coarse = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1))
    SpatialPruner(coarse, m=4, block=(16, 1), keep_dense=None).prune(0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert(coarse, backend="torch")  # pruned at the block it is packed with: no warning


def test_filter_fn_takes_module_then_name_everywhere_old_order_deprecated():
    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m1 = convert(build(), filter_fn=lambda module, fqn: fqn == "1", backend="torch")
        w1 = convert_to_winograd(build(), filter_fn=lambda module, name: name == "1")
        p1 = SpatialPruner(build(), keep_dense=None, layers=lambda module, name: name == "1")
    assert [n for n, s in m1.tritonwino_conversion if s == "swapped"] == ["1"]
    assert list(w1) == ["1"] and list(p1.layers) == ["1"]
    with pytest.warns(DeprecationWarning, match=r"\(module, name\)"):
        m2 = convert(build(), filter_fn=lambda name, mod: name == "1", backend="torch")
    with pytest.warns(DeprecationWarning):
        w2 = convert_to_winograd(build(), filter_fn=lambda name, conv: name == "1")
    with pytest.warns(DeprecationWarning):
        p2 = SpatialPruner(build(), keep_dense=None, layers=lambda name, mod: name == "1")
    assert [n for n, s in m2.tritonwino_conversion if s == "swapped"] == ["1"]
    assert list(w2) == ["1"] and list(p2.layers) == ["1"]


def test_converted_layer_reads_like_conv2d_for_tools_and_fusers():
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1, bias=False)
    SpatialPruner(nn.Sequential(conv), m=4, block=(16, 1), keep_dense=None, tol=1e-3, max_iter=25).prune(0.6)
    bn = nn.BatchNorm2d(16)
    _randomize_bn(bn)
    bn.eval()
    layer = convert(nn.Sequential(copy.deepcopy(conv)).eval(), backend="torch")[0]
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                 "padding_mode"):
        assert getattr(layer, attr) == getattr(conv, attr), attr
    torch.testing.assert_close(layer.weight, conv.weight.detach() * conv.spatial_mask, rtol=0, atol=0)
    assert not layer.training
    fused = fuse_conv_bn_eval(layer, bn)  # assigns .weight and .bias
    assert isinstance(fused, SparseWinogradConv2d)
    assert fused.winograd_sparsity() == pytest.approx(layer.winograd_sparsity())  # zeros survive the scaling
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        ref = bn(conv(x))
        assert _rel64(fused(x), ref) < MODEL_RTOL
    # a Q outside the range of W -> G W Gᵀ (as Winograd-domain pruning leaves it) has no spatial weight
    direct = convert(nn.Sequential(copy.deepcopy(conv)), backend="torch")[0]
    direct.packed_values.mul_(1.0 + torch.rand_like(direct.packed_values))  # no longer G W Gᵀ for any W
    assert direct.weight is None


def test_unbatched_input_hooks_and_dtype_mismatch_behave_like_conv2d():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, padding=1)
    seen = []
    conv.register_forward_pre_hook(lambda mod, args: seen.append("pre"))
    conv.register_forward_hook(lambda mod, args, out: seen.append(tuple(out.shape)))
    model = nn.Sequential(conv).eval()
    layer = convert(model, backend="torch")[0]
    x = torch.randn(4, 10, 10)
    with torch.no_grad():
        y = layer(x)
        assert y.shape == conv(x).shape == (8, 10, 10)
        assert _rel64(y, conv(x)) < REL_BOUND[(4, torch.float32)]
        assert torch.equal(y, layer(x[None])[0])
    assert seen.count("pre") == 4 and (8, 10, 10) in seen  # the hooks ran on the converted layer too
    with pytest.raises(RuntimeError):
        conv(x.double())
    with pytest.raises(RuntimeError, match="should be the same"):
        layer(x.double())
    with pytest.raises(RuntimeError, match="should be the same"):
        layer(x.half())


def test_torch_export_works_and_torch_jit_script_says_it_is_not_supported():
    model = MODELS["vgg"]()
    convert(model, backend="torch")
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        y = model(x)
    with pytest.raises(RuntimeError, match="torch.export"):
        torch.jit.script(model)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), y, rtol=1e-5, atol=1e-5)


def test_docs_point_at_real_files_and_names():
    root = Path(__file__).resolve().parents[1]
    for doc in (root / "docs").glob("*.md"):
        text = doc.read_text()
        for path in re.findall(r"`([\w./-]+/[\w.-]+\.(?:py|md|csv|png|json|ipynb))`", text):
            assert (root / path).exists(), f"{doc.name} names {path}, which does not exist"
        for link in re.findall(r"\]\(([^)#:]+)\)", text):
            assert (doc.parent / link).exists(), f"{doc.name} links {link}, which does not exist"
    assert sc.compact_state_dict.__module__ == "tritonwino.modules"
    assert "tritonwino.sparse_conv" in (root / "docs" / "integration.md").read_text()
