"""Model level: pruned SmallVGG / SmallResNet -> convert -> same outputs (torch path, measured
dispatch, and the Triton path under the interpreter at a tiny size); save / load of a whole model."""

import copy
import io

import pytest
import torch

from tritonwino.experiments.models import SmallResNet, SmallVGG
from tritonwino.pruning import SpatialPruner, WinogradPruner, convert_to_winograd
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
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(123)
    fresh = convert(SmallResNet(10, 1).eval(), backend="auto")  # unpruned: other buffer sizes
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    with torch.no_grad():
        assert torch.equal(fresh(x), y)
    # a deep copy keeps working too (buffers, not Python-side caches, hold the weight)
    with torch.no_grad():
        assert torch.equal(copy.deepcopy(fresh)(x), y)
