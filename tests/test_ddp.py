"""Pruning and retraining under DistributedDataParallel: 2 ranks, gloo on CPU (torch.multiprocessing).

Both steps run (spatial structured pruning + retraining, then conversion to WinogradConv2d,
Winograd-direct pruning + retraining with gradient scaling). Each rank trains on its half of the
batch; the result must equal a single-process run on the whole batch, with identical masks.
"""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from tritonwino.pruning import SpatialPruner, WinogradPruner, convert_to_winograd

pytestmark = pytest.mark.slow

WORLD = 2


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(1, 4, 3, padding=1)
        self.c1 = nn.Conv2d(4, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.c0(x))
        x = F.relu(self.c1(x))
        return self.fc(F.relu(self.c2(x)).mean((2, 3)))


def _data():
    g = torch.Generator().manual_seed(123)
    return torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)


def _train(model, x, y, wrap):
    torch.manual_seed(0)
    net = wrap(model)
    sp = SpatialPruner(net, m=4)
    sp.prune(0.5)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        sp.step(opt)
    spatial_masks = {k: v.clone() for k, v in sp.masks("spatial").items()}
    convert_to_winograd(model, m=4)
    net = wrap(model)
    wp = WinogradPruner(net, method="yu")
    wp.prune(0.7)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        wp.step(opt)
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items() if torch.is_tensor(v)},
            "spatial_masks": spatial_masks, "winograd_masks": wp.masks("winograd"),
            "thresholds": dict(wp.thresholds)}


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        model = Net()
        x, y = _data()
        xs, ys = x.chunk(WORLD)[rank], y.chunk(WORLD)[rank]
        res = _train(model, xs, ys, lambda mdl: nn.parallel.DistributedDataParallel(mdl))
        # unsynchronised weights (different per rank): the masks must still agree (broadcast from rank 0)
        torch.manual_seed(100 + rank)
        lone = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 4, 3))
        SpatialPruner(lone).prune(0.5)
        res["bcast_mask"] = lone[1].spatial_mask.clone()
        res["bcast_weight"] = lone[1].weight.detach().clone()
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
        # Both ranks reach teardown together: gloo aborts a rank whose peer tears down while it is
        # still finishing (seen as SIGABRT "terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")
def test_ddp_two_ranks_match_single_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)

    torch.manual_seed(0)
    model = Net()
    x, y = _data()
    single = _train(model, x, y, lambda mdl: mdl)

    for kind in ("spatial_masks", "winograd_masks"):
        assert set(r0[kind]) == {"c1", "c2"}
        for name in r0[kind]:
            assert torch.equal(r0[kind][name], r1[kind][name]), (kind, name)
            assert torch.equal(r0[kind][name], single[kind][name]), (kind, name)
    assert r0["thresholds"] == r1["thresholds"]
    assert not torch.equal(r0["bcast_weight"], r1["bcast_weight"])
    assert torch.equal(r0["bcast_mask"], r1["bcast_mask"])
    assert not bool(r0["bcast_mask"].all())
    assert set(r0["state"]) == set(single["state"])
    for k in single["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
        if single["state"][k].is_floating_point():
            torch.testing.assert_close(r0["state"][k], single["state"][k], rtol=1e-5, atol=1e-6, msg=k)
        else:
            assert torch.equal(r0["state"][k], single["state"][k]), k
    assert bool((r0["state"]["c1.q"][~r0["winograd_masks"]["c1"]] == 0).all())
