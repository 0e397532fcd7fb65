"""Winograd-ReLU (Liu et al. 2018): Aᵀ[Q ⊙ ReLU(Bᵀ X B)]A on both paths against its formula, the
trainable WinogradReLUConv2d, the model rewrite, Liu's pruning schedule, pack / convert /
state_dict / torch.compile, and the experiment's counting and resumable run."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tritonwino import ops, reference
from tritonwino.experiments import winograd_relu_experiment as wre
from tritonwino.experiments.models import SmallVGG
from tritonwino.packing import pack_winograd_weight
from tritonwino.pruning import (
    WinogradConv2d,
    WinogradPruner,
    WinogradReLUConv2d,
    convert_to_winograd_relu,
    liu_schedule,
    load_pruned_state_dict,
    run_schedule,
)
from tritonwino.sparse_conv import SparseWinogradConv2d, convert, sparse_winograd_conv2d, winograd_conv2d
from tritonwino.transforms import winograd_matrices


def formula(x, q, bias, pad, m, r=3):
    """Aᵀ[Σ_c Q[k, c] ⊙ ReLU(Bᵀ X_c B)]A tile by tile in float64 (zero padding, zero beyond the edge)."""
    at, _, bt = winograd_matrices(m, r)
    n = m + r - 1
    nb, c, h, w = x.shape
    ho, wo = h + 2 * pad - r + 1, w + 2 * pad - r + 1
    th, tw = -(-ho // m), -(-wo // m)
    xp = F.pad(x.double(), (pad, pad + tw * m + r - 1 - (w + 2 * pad), pad, pad + th * m + r - 1 - (h + 2 * pad)))
    y = torch.zeros(nb, q.shape[0], th * m, tw * m, dtype=torch.float64)
    for i in range(th):
        for j in range(tw):
            tile = xp[:, :, i * m: i * m + n, j * m: j * m + n]  # (N, C, n, n)
            v = torch.relu(bt @ tile @ bt.t())
            mm = torch.einsum("kcab,ncab->nkab", q.double(), v)
            y[:, :, i * m: (i + 1) * m, j * m: (j + 1) * m] = at @ mm @ at.t()
    y = y[:, :, :ho, :wo]
    return y if bias is None else y + bias.double().view(1, -1, 1, 1)


@pytest.mark.parametrize("m", [2, 4])
def test_torch_path_is_the_formula(m):
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    b = torch.randn(5, dtype=torch.float64)
    q = reference.winograd_weight(w, m)
    y = winograd_conv2d(x, w, b, 1, m, backend="torch", winograd_relu=True)
    torch.testing.assert_close(y, formula(x, q, b, 1, m), rtol=1e-10, atol=1e-10)
    assert (y - F.conv2d(x, w, b, padding=1)).abs().max() > 1e-3  # it is not the spatial convolution
    packed = pack_winograd_weight(q, (16, 1))
    ys = sparse_winograd_conv2d(x, packed, b, 1, backend="torch", winograd_relu=True)
    torch.testing.assert_close(ys, y, rtol=1e-10, atol=1e-10)


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_triton_path_is_the_formula(dtype, device):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 7, device=device).to(dtype)
    w = (torch.randn(16, 3, 3, 3, device=device) / 5).to(dtype)
    oracle = formula(x.cpu(), reference.winograd_weight(w.cpu(), 4), None, 1, 4)
    y = winograd_conv2d(x, w, None, 1, 4, backend="triton", winograd_relu=True)
    y_t = winograd_conv2d(x, w, None, 1, 4, backend="torch", winograd_relu=True)
    tol = 2e-5 if dtype == torch.float32 else 3e-2
    scale = float(oracle.abs().max())
    assert float((y.cpu().double() - oracle).abs().max()) <= 2 * float((y_t.cpu().double() - oracle).abs().max()) \
        + torch.finfo(dtype).eps * scale
    assert float((y.cpu().double() - oracle).abs().max()) / scale < tol
    q = reference.winograd_weight(w, 4)
    q[:, 1] = 0
    packed = pack_winograd_weight(q.float(), (16, 1))
    ys = sparse_winograd_conv2d(x, packed, None, 1, backend="triton", winograd_relu=True)
    ys_t = sparse_winograd_conv2d(x, packed, None, 1, backend="torch", winograd_relu=True)
    torch.testing.assert_close(ys.float(), ys_t.float(), rtol=tol, atol=tol * scale)


def test_opcheck_with_winograd_relu_and_decomposition():
    q = reference.winograd_weight(torch.randn(16, 8, 3, 3), 4).float()
    q_pck = q.permute(2, 3, 1, 0).reshape(36, 8, 16).contiguous()
    args = (torch.randn(2, 8, 9, 9), q_pck, None, [1, 1], [4, 3], "0,1,-1,2,-2", "torch", False, False, True, None)
    torch.library.opcheck(ops.winograd_conv2d_pck_op, args)
    x = torch.randn(2, 2, 9, 9)
    q2 = reference.winograd_weight(torch.randn(16, 8, 2, 2), 4).float()  # 3x3/2 pieces: C' = 2 · 4
    q2_pck = q2.permute(2, 3, 1, 0).reshape(25, 8, 16).contiguous()
    args = (x, q2_pck, None, [1, 1], [4, 2], "0,1,-1,2", "torch", False, False, True, [3, 2])
    torch.library.opcheck(ops.winograd_conv2d_pck_op, args)


# ---- the trainable layer and the rewrite ---------------------------------------------------------
def test_layer_forward_backward_and_rewrite():
    torch.manual_seed(0)
    net = SmallVGG()
    x = torch.randn(2, 1, 28, 28)
    new = convert_to_winograd_relu(net, m=2)
    assert sorted(new) == ["features.11", "features.4", "features.7"]
    assert isinstance(net.features[6], nn.Identity) and isinstance(net.features[2], nn.Identity)
    assert isinstance(net.features[13], nn.ReLU)  # not followed by a conv: stays
    layer = net.features[4]
    inputs = {}
    layer.register_forward_pre_hook(lambda mod, a: inputs.__setitem__("x", a[0].detach()))
    out = net(x)
    torch.testing.assert_close(layer(inputs["x"]).double(), formula(inputs["x"], layer.q.detach(), layer.bias, 1, 2),
                               rtol=1e-4, atol=1e-4)
    out.sum().backward()
    assert layer.q.grad is not None and float(layer.q.grad.abs().sum()) > 0


def test_liu_schedule_prunes_iteratively_in_the_winograd_domain():
    assert liu_schedule(0.1)[:4] == [0.3, 0.4, 0.5, 0.6] and liu_schedule(0.1)[-1] == 0.9
    with pytest.raises(ValueError):
        liu_schedule(0.0)
    torch.manual_seed(0)
    net = SmallVGG()
    convert_to_winograd_relu(net, m=4)
    pruner = WinogradPruner(net, method="liu", keep_dense=None)
    prev = None
    for rec in run_schedule(pruner, liu_schedule(0.6), log=None):
        mask = net.features[7].mask.clone()
        if prev is not None:
            assert not bool((mask & ~prev).any())  # what an earlier stage pruned stays pruned
        prev = mask
        assert rec["sparsity"]["overall"] == pytest.approx(rec["target"], abs=2e-3)


def test_pack_convert_state_dict_and_compile(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    net = SmallVGG().eval()
    convert_to_winograd_relu(net, m=4)
    WinogradPruner(net, method="liu", keep_dense=None).prune(0.5)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        ref = net(x)
        conv = convert(copy.deepcopy(net), backend="auto")
        y = conv(x)
    layer = conv.features[4]
    assert isinstance(layer, SparseWinogradConv2d) and layer.winograd_relu
    assert layer.spatial_weight() is None  # no conv2d path for a Winograd-ReLU layer
    assert {d.path for d in layer.dispatch_decisions().values()} <= {"dense", "sparse"}
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    z = torch.randn(1, 16, 7, 7)
    with torch.no_grad():
        for path in ("dense", "sparse"):
            torch.testing.assert_close(layer.run_path(z, path, "torch"), net.features[4](z), rtol=1e-4, atol=1e-4)
    # state_dict round trips: the trainable layer and the converted model
    fresh = SmallVGG().eval()
    convert_to_winograd_relu(fresh, m=4)
    fresh.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), ref)
    conv2 = convert(copy.deepcopy(fresh), backend="torch")
    conv2.load_state_dict(conv.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(conv2(x), y, rtol=1e-5, atol=1e-5)
    # a plain Winograd layer or model refuses a Winograd-ReLU state
    plain = WinogradConv2d(16, 32, 3, padding=1)
    with pytest.raises(ValueError, match="Winograd-ReLU"):
        plain.load_state_dict(net.features[4].state_dict())
    with pytest.raises(ValueError, match="convert_to_winograd_relu"):
        load_pruned_state_dict(SmallVGG(), net.state_dict())
    sd = {k.removeprefix("features.4."): v for k, v in conv.state_dict().items() if k.startswith("features.4.")}
    spatial = SparseWinogradConv2d.from_conv2d(nn.Conv2d(16, 32, 3, padding=1, bias=False), m=4)
    with pytest.raises(ValueError, match="winograd_relu"):
        spatial.load_state_dict(sd)
    with torch.no_grad():
        yc = torch.compile(convert(copy.deepcopy(net), backend="torch"), fullgraph=True, backend="aot_eager")(x)
    torch._dynamo.reset()
    torch.testing.assert_close(yc, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.kernels
def test_converted_winograd_relu_model_on_triton(device):
    torch.manual_seed(0)
    net = SmallVGG().eval()
    convert_to_winograd_relu(net, m=2)
    WinogradPruner(net, method="liu", keep_dense=None).prune(0.5)
    net = net.to(device)
    x = torch.randn(1, 1, 12, 12, device=device)
    with torch.no_grad():
        ref = net(x)
        y = convert(copy.deepcopy(net), backend="triton")(x)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)


def test_winograd_relu_layer_from_q_and_bad_args():
    q = torch.randn(4, 2, 6, 6)
    layer = WinogradReLUConv2d.from_q(q, padding=1, m=4)
    assert layer.winograd_relu and torch.equal(layer.q.detach(), q)
    assert layer.to_packed((16, 1)).density == 1.0
    with pytest.raises(ValueError):
        WinogradReLUConv2d(0, 4)


# ---- the experiment ---------------------------------------------------------------------------
def test_multiplication_count_sees_the_sparse_transformed_activations():
    torch.manual_seed(0)
    spatial = SmallVGG().eval()
    wrelu = copy.deepcopy(spatial)
    convert_to_winograd_relu(wrelu, m=4)
    x = torch.randn(4, 1, 28, 28)
    names = wre.pruned_layer_names(spatial)
    assert names == ["features.4", "features.7", "features.11"]
    a = wre.count_multiplications(spatial, names, x, 4)
    b = wre.count_multiplications(wrelu, names, x, 4)
    direct = 14 * 14 * 32 * 16 * 9 + 14 * 14 * 32 * 32 * 9 + 7 * 7 * 64 * 32 * 9  # per image
    assert a["mults_direct"] == b["mults_direct"] == direct
    assert a["mults_weight_sparse"] == a["mults_winograd_dense"]  # nothing pruned yet
    assert b["act_density"] < 0.7 < a["act_density"]  # ReLU(BᵀXB) zeroes a large part of V
    assert b["mults_weight_act_sparse"] < a["mults_weight_act_sparse"]


@pytest.mark.slow
def test_experiment_runs_and_resumes(tmp_path):
    # a stem with a dot keeps its whole name (with_suffix turned wr0.5 into wr0.csv, shared by wr0.7)
    argv = ["--out", str(tmp_path / "wr0.5"), "--dense-steps", "2", "--stage-steps", "1", "--train-limit", "256",
            "--test-limit", "64", "--act-images", "8", "--spatial-targets", "0.3", "--winograd-targets", "0.6"]
    assert wre.main(argv) == 0
    rows = (tmp_path / "wr0.5.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 3  # header + (dense, 2 stages) x 3 arms
    assert (tmp_path / "wr0.5.png").exists() and "Winograd-ReLU" in (tmp_path / "wr0.5.md").read_text()
    assert not (tmp_path / "wr0.csv").exists()
    logs = []
    assert wre.run(wre.parse_args(argv), log=logs.append) == 0  # everything done: only resumes
    assert sum("resuming after stage 1" in line for line in logs) == 3
    with pytest.raises(SystemExit):
        wre.main(argv + ["--stage-steps", "2"])  # other settings into the same state: refused
