"""Model definitions: shapes, the ResNet.max structure, Winograd eligibility."""

import pytest
import torch
from torch import nn

from tritonwino.experiments.models import SmallResNet, SmallVGG, resnet18_max, vgg16
from tritonwino.pruning import SpatialPruner, convert_to_winograd, eligible_convs


@pytest.mark.parametrize("cin,size", [(1, 28), (3, 32)])
def test_small_models_forward(cin, size):
    for model in (SmallVGG(10, cin), SmallResNet(10, cin)):
        y = model(torch.randn(2, cin, size, size))
        assert y.shape == (2, 10)


def test_small_models_all_3x3_convs_are_winograd_eligible_and_convert():
    model = SmallResNet(10, 1).double().eval()
    convs3 = [n for n, mod in model.named_modules() if isinstance(mod, nn.Conv2d) and mod.kernel_size == (3, 3)]
    assert set(eligible_convs(model, 3)) == set(convs3)
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    y = model(x)
    layers = convert_to_winograd(model)
    assert set(layers) == set(convs3)
    torch.testing.assert_close(model(x), y, rtol=1e-9, atol=1e-9)


def _count(model, ks, stride=None):
    return sum(1 for mod in model.modules() if isinstance(mod, nn.Conv2d) and mod.kernel_size == (ks, ks)
               and (stride is None or mod.stride == (stride, stride)))


def test_resnet18_max_layer_shapes():
    model = resnet18_max(num_classes=7, in_channels=3)
    assert _count(model, 3) == 16 and _count(model, 3, stride=1) == 16  # all 3x3 convs stride 1
    assert _count(model, 7) == 1 and _count(model, 1) == 3  # stem + three 1x1 downsample convs
    assert len(eligible_convs(model, 3)) == 16  # the authors' prune list
    n_params = sum(p.numel() for p in model.parameters())
    # torchvision's resnet18 has 11,689,512 parameters with a 1000-way fc; the max-pool change adds none
    assert n_params == 11_689_512 - (512 * 1000 + 1000) + (512 * 7 + 7)
    assert model.fc.out_features == 7
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7)


def test_vgg16_layer_shapes():
    model = vgg16(num_classes=10, in_channels=1)
    convs = [mod for mod in model.modules() if isinstance(mod, nn.Conv2d)]
    assert len(convs) == 13 and convs[0].in_channels == 1
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert len(eligible_convs(model, 3)) == 13
    assert model.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 10)


def test_model_arg_errors():
    with pytest.raises(ValueError):
        SmallVGG(num_classes=0)
    with pytest.raises(ValueError):
        resnet18_max(in_channels=0)
    with pytest.raises(ValueError):
        SmallVGG(cfg=("M",))


def test_pruner_on_small_vgg_keeps_first_conv():
    model = SmallVGG(10, 1)
    p = SpatialPruner(model)
    assert p.dense_layers == ["features.0"] and "features.0" not in p.layers
