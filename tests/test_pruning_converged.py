"""The converged pruning grid (bench/pruning_converged.py): the paper's models, the CIFAR loader on
synthetic batches, the training-loop pieces it adds (resume, augmentation, distillation), and tiny
runs of the grid that stop, resume, refuse other settings and rebuild their table and plot."""

import argparse
import csv
import gc
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from tritonwino.experiments import converged_grid
from tritonwino.experiments.data import DatasetNotFoundError, load_cifar, load_dataset
from tritonwino.experiments.models import MODELS, build_model, conv_pool_cnn_c, resnet18_max, vgg_nagadomi
from tritonwino.experiments.training import Batches, distillation_loss, random_crop_flip, train
from tritonwino.pruning import SpatialPruner, WinogradPruner, convert_to_winograd, eligible_convs

pytestmark = pytest.mark.slow

REQUIRED = {"method", "recipe", "granularity", "seed", "winograd_sparsity", "top1", "top1_dense", "target",
            "cpu_s", "device", "torch", "triton", "tritonwino", "timestamp", "model", "dense_steps", "stage_steps"}


# ------------------------------------------------------------------------------------------------
# the paper's models
# ------------------------------------------------------------------------------------------------
def _n3x3(model):
    return sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in model.modules())


@pytest.mark.parametrize("build,classes,n3x3", [(vgg_nagadomi, 10, 8), (conv_pool_cnn_c, 100, 7)])
def test_paper_cifar_models_shapes_and_pruning(build, classes, n3x3):
    model = build().double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert model(x).shape == (2, classes)
    assert _n3x3(model) == n3x3 and len(eligible_convs(model, 3)) == n3x3  # every 3x3 conv can run as Winograd
    pruner = SpatialPruner(model, m=4)  # the first conv stays dense
    achieved = pruner.prune(0.5)
    assert len(pruner.layers) == n3x3 - 1
    assert abs(pruner.sparsity()["overall"] - 0.5) < 0.01, achieved
    y = model(x)
    convert_to_winograd(model, m=4)  # the spatial masks become exact zeros of Q, same function
    torch.testing.assert_close(model(x), y, rtol=1e-8, atol=1e-8)
    wp = WinogradPruner(model, method="yu", block=(16, 1), keep_dense=None)
    wp.prune(0.7)
    assert abs(wp.sparsity()["overall"] - 0.7) < 0.01


def test_resnet18_max_cifar_stem_is_all_stride1_3x3():
    model = resnet18_max(num_classes=10, stem="small")
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.stride == (1, 1) for m in convs if m.kernel_size == (3, 3))
    assert len(eligible_convs(model, 3)) == 17  # the 16 block convs + the 3x3 stem
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3  # the stride-2 convs' max-pools
    pruner = SpatialPruner(model, m=4, tol=5e-3)  # a coarse bisection: 11M weights
    pruner.prune(0.4)
    assert len(pruner.layers) == 16 and abs(pruner.sparsity()["overall"] - 0.4) < 0.01


@pytest.mark.parametrize("name", sorted(MODELS))
def test_build_model_every_name_and_one_channel_input(name):
    size = 224 if name == "resnet18-max-imagenet" else 28
    assert build_model(name, 10, 1)(torch.randn(1, 1, size, size)).shape == (1, 10)


def test_build_model_unknown_name():
    with pytest.raises(ValueError, match="smallvgg"):
        build_model("alexnet")


# ------------------------------------------------------------------------------------------------
# CIFAR from a directory the user gives
# ------------------------------------------------------------------------------------------------
def _fake_cifar(parent, nc, n_train=12, n_test=6):
    """The python-pickle layout of the real archives, random uint8 images, under ``parent``."""
    rng = np.random.default_rng(0)
    if nc == 10:
        root = parent / "cifar-10-batches-py"
        files = {f"data_batch_{i}": n_train // 5 + 1 for i in range(1, 6)} | {"test_batch": n_test}
        key = b"labels"
    else:
        root = parent / "cifar-100-python"
        files, key = {"train": n_train, "test": n_test}, b"fine_labels"
    root.mkdir()
    for name, n in files.items():
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 key: rng.integers(0, nc, n).tolist()}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)
    return root


@pytest.mark.parametrize("nc", [10, 100])
def test_cifar_loader_reads_the_extracted_dir_or_its_parent(tmp_path, nc):
    root = _fake_cifar(tmp_path, nc)
    a_tr, a_te = load_cifar(root, nc, normalize=False)
    b_tr, b_te = load_cifar(tmp_path, nc, normalize=False)  # the directory above it
    assert a_tr.tensors[0].shape[1:] == (3, 32, 32) and a_tr.tensors[0].dtype == torch.float32
    torch.testing.assert_close(a_tr.tensors[0], b_tr.tensors[0])
    assert torch.equal(a_te.tensors[1], b_te.tensors[1]) and int(a_tr.tensors[1].max()) < nc
    first = pickle.load(open(root / ("data_batch_1" if nc == 10 else "train"), "rb"))[b"data"][0]
    torch.testing.assert_close(a_tr.tensors[0][0], torch.tensor(first.reshape(3, 32, 32) / 255.0, dtype=torch.float32))
    _, _, info = load_dataset(f"cifar{nc}", root=tmp_path)
    assert info == {"name": f"cifar{nc}", "in_channels": 3, "num_classes": nc, "image_size": 32}


def test_cifar_loader_names_the_missing_files(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"data_batch_1.*test_batch.*cifar-10-batches-py"):
        load_cifar(tmp_path, 10)
    with pytest.raises(DatasetNotFoundError, match=r"\['train', 'test'\].*cifar-100-python"):
        load_cifar(tmp_path, 100)


# ------------------------------------------------------------------------------------------------
# the training loop: resume, augmentation, distillation
# ------------------------------------------------------------------------------------------------
def _tiny_data(n=64):
    return TensorDataset(torch.randn(n, 1, 8, 8), torch.randint(0, 3, (n,)))


def _tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))


def test_train_resumed_from_a_checkpoint_matches_an_uninterrupted_run():
    ds, aug = _tiny_data(), random_crop_flip(1)
    straight = _tiny_net()
    train(straight, Batches(ds, 16, seed=3, augment=aug), 6, 0.1, cosine=True, progress=False)

    net, batches, saved = _tiny_net(), Batches(ds, 16, seed=3, augment=aug), {}

    def keep(state):
        if state["step"] == 3:
            saved.update(state=state, model={k: v.clone() for k, v in net.state_dict().items()},
                         batches=batches.state())
            raise KeyboardInterrupt  # stopped right after its checkpoint

    with pytest.raises(KeyboardInterrupt):
        train(net, batches, 6, 0.1, cosine=True, progress=False, every=3, on_checkpoint=keep)
    resumed, stream = _tiny_net(), Batches(ds, 16, seed=999, augment=aug)
    resumed.load_state_dict(saved["model"])
    stream.set_state(saved["batches"])
    train(resumed, stream, 6, 0.1, cosine=True, progress=False, resume=saved["state"])
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_random_crop_flip_moves_pixels_only():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4) + 1
    g = torch.Generator().manual_seed(0)
    flipped = random_crop_flip(0, flip=True)(x, g)
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))
    cropped = random_crop_flip(1, flip=False)(x[:1].repeat(16, 1, 1, 1), g)
    shifts = set()
    for img in cropped:  # each is a 4x4 window of the zero-padded 6x6 image
        padded = F.pad(x[0], (1, 1, 1, 1))
        match = [(dy, dx) for dy in range(3) for dx in range(3) if torch.equal(padded[:, dy:dy + 4, dx:dx + 4], img)]
        assert match
        shifts.add(match[0])
    assert len(shifts) > 1  # different offsets per image


def test_distillation_loss_limits():
    teacher, logits = nn.Linear(5, 3), torch.randn(4, 3)
    x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
    torch.testing.assert_close(distillation_loss(teacher, 3.0, 0.0)(logits, x, y), F.cross_entropy(logits, y))
    with torch.no_grad():
        same = teacher(x)
    assert float(distillation_loss(teacher, 3.0, 1.0)(same, x, y)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        distillation_loss(teacher, 0.0)


# ------------------------------------------------------------------------------------------------
# the grid
# ------------------------------------------------------------------------------------------------
def _args(out, *extra):
    # digits (always there, 16x16): 128 train images, bs 32 -> 4 steps an epoch
    return ["--out", str(out), "--dataset", "digits", "--train-limit", "128", "--test-limit", "64",
            "--batch-size", "32", "--dense-epochs", "1", "--eval-every", "2", "--stage-epochs", "0.5",
            "--spatial-targets", "0.5", "--winograd-targets", "0.7", "--seeds", "0", "--no-progress",
            "--methods", "yu,li+distill", "--granularities", "1x1,16x1", *extra]


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


class _Stop(Exception):
    pass


def _spy(monkeypatch, calls, stop_at=None, stop_after_checkpoint=None):
    """Record each training call (its label and the step it resumed from); optionally stop the run
    at the call labelled ``stop_at`` or after the first checkpoint of ``stop_after_checkpoint``."""
    def spy(model, batches, steps, lr, **kw):
        calls.append((kw["desc"], None if kw.get("resume") is None else kw["resume"]["step"]))
        if kw["desc"] == stop_at:
            raise _Stop
        if kw["desc"] == stop_after_checkpoint:
            inner = kw["on_checkpoint"]

            def stop(state):
                inner(state)
                raise _Stop

            kw["on_checkpoint"] = stop
        return train(model, batches, steps, lr, **kw)

    monkeypatch.setattr(converged_grid, "train", spy)


def test_grid_runs_stops_resumes_and_never_retrains_a_finished_stage(tmp_path, monkeypatch, capsys):
    out = tmp_path / "grid"
    calls = []
    # 1) stopped in the middle of the dense training (after its step-2 checkpoint)
    _spy(monkeypatch, calls, stop_after_checkpoint="seed 0 dense")
    with pytest.raises(_Stop):
        converged_grid.main(_args(out))
    assert (tmp_path / "grid.state" / "seed0" / "dense.partial.pt").exists()
    # 2) continues the dense model from step 2, then stops before yu's second (Winograd) stage
    calls.clear()
    _spy(monkeypatch, calls, stop_at="seed 0 yu-plain-1x1 0.7")
    with pytest.raises(_Stop):
        converged_grid.main(_args(out))
    assert calls[0] == ("seed 0 dense", 2)
    first_rows = _rows(f"{out}.csv")
    assert [(r["method"], r["stage"]) for r in first_rows] == [("dense", "-1"), ("yu", "0")]
    # 3) finishes: yu 1x1 resumes at its Winograd stage, nothing finished is trained again
    calls.clear()
    _spy(monkeypatch, calls)
    assert converged_grid.main(_args(out)) == 0
    assert [c[0] for c in calls] == ["seed 0 yu-plain-1x1 0.7", "seed 0 yu-plain-16x1 0.5", "seed 0 yu-plain-16x1 0.7",
                                     "seed 0 li-distill-1x1 0.5", "seed 0 li-distill-1x1 0.7",
                                     "seed 0 li-distill-16x1 0.5", "seed 0 li-distill-16x1 0.7"]
    rows = _rows(f"{out}.csv")
    assert rows[:2] == first_rows  # the finished rows, timestamps included, untouched
    assert REQUIRED <= set(rows[0])
    keys = [(r["method"], r["recipe"], r["granularity"], r["stage"]) for r in rows]
    assert keys == [("dense", "plain", "-", "-1"), ("yu", "plain", "1x1", "0"), ("yu", "plain", "1x1", "1"),
                    ("yu", "plain", "16x1", "0"), ("yu", "plain", "16x1", "1"), ("li", "distill", "1x1", "0"),
                    ("li", "distill", "1x1", "1"), ("li", "distill", "16x1", "0"), ("li", "distill", "16x1", "1")]
    dense = rows[0]
    assert dense["dense_steps"] == "4" and rows[1]["stage_steps"] == "2"
    for r in rows[1:]:
        assert r["top1_dense"] == dense["top1"]  # against the dense model of the same seed
        assert float(r["top1_loss"]) == pytest.approx(float(r["top1_dense"]) - float(r["top1"]), abs=0.011)
        assert 0.0 <= float(r["top1"]) <= 100.0 and float(r["cpu_s"]) >= 0.0
        assert abs(float(r["winograd_sparsity"]) - float(r["target"])) < 0.02
        assert r["device"] and r["torch"] and r["tritonwino"]
    curve = _rows(f"{out}_curve.csv")
    assert [(c["network"], c["step"]) for c in curve] == [("dense", "2"), ("dense", "4")]
    assert float(curve[-1]["top1"]) == pytest.approx(float(dense["top1"]))
    md = (tmp_path / "grid.md").read_text()
    assert "±" in md and "CPU-hours" in md and "16x1" in md
    # 4) a rerun of the finished grid trains nothing and leaves the rows as they are
    before = (tmp_path / "grid.csv").read_bytes()
    calls.clear()
    assert converged_grid.main(_args(out)) == 0
    assert calls == [] and (tmp_path / "grid.csv").read_bytes() == before
    # 5) --plot-only rebuilds the table and the plot from the rows alone
    (tmp_path / "grid.md").unlink()
    (tmp_path / "grid.png").unlink()
    assert converged_grid.main(["--out", str(out), "--plot-only"]) == 0
    assert (tmp_path / "grid.md").read_text() == md
    assert os.path.getsize(tmp_path / "grid.png") > 10_000
    # 6) the closing line names only files that exist (regression: it named a curve file never written)
    (tmp_path / "grid_curve.csv").unlink()
    capsys.readouterr()
    assert converged_grid.main(_args(out)) == 0
    said = capsys.readouterr()
    closing = [line for line in (said.out + said.err).splitlines() if line.startswith("wrote ")]
    assert closing and "grid.csv" in closing[-1] and "grid_curve.csv" not in closing[-1]


def _free(path):
    lock, owner = converged_grid._try_lock(path)
    assert lock is not None, f"{path.name} still held by {owner}"
    lock.close()


@pytest.mark.parametrize("stop", [{"stop_after_checkpoint": "seed 0 dense"}, {"stop_at": "seed 0 yu-plain-1x1 0.7"}])
def test_grid_lets_its_locks_go_when_a_run_stops(tmp_path, monkeypatch, stop):
    # regression: the locks lived on in the stopped run's frame, which the exception's traceback
    # keeps alive until the cyclic garbage collector runs; a later run in the same process was refused
    _spy(monkeypatch, [], **stop)
    gc.disable()
    try:
        with pytest.raises(_Stop) as stopped:
            converged_grid.main(_args(tmp_path / "grid"))
        seed0 = tmp_path / "grid.state" / "seed0"
        _free(seed0 / "dense.lock")
        if "stop_at" in stop:
            _free(seed0 / "yu-plain-1x1.lock")
    finally:
        gc.enable()
    assert stopped.traceback  # still held here, and the locks were free anyway


def test_grid_seeds_in_parallel_processes_share_one_out(tmp_path):
    # one process per seed (a core each) on the same OUT: every row lands, none is overwritten by the
    # other process's stale copy of the file
    out = tmp_path / "grid"
    code = "import sys; from tritonwino.experiments.converged_grid import main; sys.exit(main(sys.argv[1:]))"
    procs = [subprocess.Popen([sys.executable, "-c", code, *_args(out, "--seeds", s, "--methods", "yu,liu")])
             for s in ("0", "1")]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    rows = _rows(f"{out}.csv")
    for seed in ("0", "1"):
        mine = sorted((r["method"], r["granularity"], r["stage"]) for r in rows if r["seed"] == seed)
        assert mine == sorted([("dense", "-", "-1")] + [(m, g, k) for m in ("yu", "liu") for g in ("1x1", "16x1")
                                                        for k in ("0", "1")])
    assert {(c["network"], c["seed"], c["step"]) for c in _rows(f"{out}_curve.csv")} == {
        ("dense", s, st) for s in ("0", "1") for st in ("2", "4")}
    assert converged_grid.main(["--out", str(out), "--plot-only"]) == 0
    assert "| yu | plain | 1x1 | 0 | 0.5 | 2 |" in (tmp_path / "grid.md").read_text()  # two seeds per mean


def test_grid_config_is_never_read_half_written(tmp_path, monkeypatch):
    # regression: two seeds started together, one read config.json while the other was writing it
    # (JSONDecodeError). The file is now written once, to a private name, then renamed into place.
    state = tmp_path / "grid.state"
    cfg = {"dense_lr": 0.05, "m": 4}
    writes = []
    real = os.replace
    monkeypatch.setattr(converged_grid.os, "replace", lambda a, b: (writes.append((a, b)), real(a, b))[1])
    converged_grid._check_config(state, cfg)
    assert [Path(b).name for _, b in writes] == ["config.json"] and str(os.getpid()) in Path(writes[0][0]).name
    converged_grid._check_config(state, cfg)  # same settings: read, not written again
    assert len(writes) == 1 and json.loads((state / "config.json").read_text()) == cfg
    assert sorted(p.name for p in state.iterdir()) == ["config.json"]  # no temporary left behind


_HOLD = ("import sys, time; from pathlib import Path; from tritonwino.experiments.converged_grid import _try_lock; "
         "f, _ = _try_lock(Path(sys.argv[1])); print('held', flush=True); time.sleep(float(sys.argv[2]))")


def _holder(path, seconds):
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_grid_leaves_a_cell_another_process_is_running_and_does_the_rest(tmp_path, monkeypatch, capsys):
    out = tmp_path / "grid"
    holder = _holder(tmp_path / "grid.state" / "seed0" / "yu-plain-16x1.lock", 120)
    calls = []
    try:
        _spy(monkeypatch, calls)
        assert converged_grid.main(_args(out)) == 0
        said = capsys.readouterr()
        said = said.out + said.err
        assert f"seed 0 yu-plain-16x1: being run by pid {holder.pid}; left to it" in said
        assert f"1 cell(s) left to the processes running them: seed 0 yu-plain-16x1 (pid {holder.pid})" in said
        assert [c[0] for c in calls] == ["seed 0 dense", "seed 0 yu-plain-1x1 0.5", "seed 0 yu-plain-1x1 0.7",
                                         "seed 0 li-distill-1x1 0.5", "seed 0 li-distill-1x1 0.7",
                                         "seed 0 li-distill-16x1 0.5", "seed 0 li-distill-16x1 0.7"]
        assert not any(r["granularity"] == "16x1" and r["method"] == "yu" for r in _rows(f"{out}.csv"))
    finally:
        holder.kill()
        holder.wait()
    # the holder's death lets the cell go: the next run trains that cell and nothing else
    calls.clear()
    assert converged_grid.main(_args(out)) == 0
    assert [c[0] for c in calls] == ["seed 0 yu-plain-16x1 0.5", "seed 0 yu-plain-16x1 0.7"]
    assert "left to" not in "".join(capsys.readouterr())


def test_grid_waits_for_a_dense_model_another_process_is_training(tmp_path, monkeypatch, capsys):
    out = tmp_path / "grid"
    holder = _holder(tmp_path / "grid.state" / "seed0" / "dense.lock", 3)
    calls = []
    try:
        _spy(monkeypatch, calls)
        assert converged_grid.main(_args(out, "--methods", "yu", "--granularities", "1x1")) == 0
    finally:
        holder.kill()
        holder.wait()
    said = "".join(capsys.readouterr())
    assert f"seed 0 dense is being trained by pid {holder.pid}: waiting for it" in said
    # the holder left no model behind, so this run trained it once the lock was free
    assert [c[0] for c in calls] == ["seed 0 dense", "seed 0 yu-plain-1x1 0.5", "seed 0 yu-plain-1x1 0.7"]
    # regression: the waiter took the lock without writing its pid, so a third process named the dead holder
    assert (tmp_path / "grid.state" / "seed0" / "dense.lock").read_text() == f"pid {os.getpid()}\n"


def test_grid_two_processes_on_one_seed_share_its_cells(tmp_path):
    # the same command started twice: one trains the dense model while the other waits, then they
    # split the cells; every stage's row lands exactly once and nothing is left undone
    out = tmp_path / "grid"
    code = "import sys; from tritonwino.experiments.converged_grid import main; sys.exit(main(sys.argv[1:]))"
    procs = [subprocess.Popen([sys.executable, "-c", code, *_args(out, "--methods", "yu,liu")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    keys = [(r["method"], r["granularity"], r["stage"]) for r in _rows(f"{out}.csv")]
    assert sorted(keys) == sorted([("dense", "-", "-1")] + [(m, g, k) for m in ("yu", "liu")
                                                            for g in ("1x1", "16x1") for k in ("0", "1")])
    assert sum("top-1" in line and "dense" in line.split(":")[0] for log in logs for line in log.splitlines()) == 1


def test_grid_refuses_other_settings_but_may_grow(tmp_path, monkeypatch):
    out = tmp_path / "grid"
    calls = []
    _spy(monkeypatch, calls, stop_at="seed 0 dense")  # stops at once: only the config is written
    with pytest.raises(_Stop):
        converged_grid.main(_args(out))
    with pytest.raises(SystemExit, match=r"dense_lr: 0\.05 there, 0\.1 now"):
        converged_grid.main(_args(out, "--dense-lr", "0.1"))
    with pytest.raises(SystemExit, match="winograd_targets"):
        converged_grid.main(_args(out, "--winograd-targets", "0.8"))
    # more seeds, methods or granularities extend the same run
    with pytest.raises(_Stop):
        converged_grid.main(_args(out, "--seeds", "0,1", "--methods", "yu,liu,spatial", "--granularities", "32x1"))


def test_grid_wrelu_and_spatial_cells(tmp_path):
    out = tmp_path / "g"
    assert converged_grid.main(_args(out, "--methods", "wrelu,spatial", "--granularities", "1x1,16x1",
                                     "--eval-every", "0")) == 0
    rows = _rows(f"{out}.csv")
    keys = [(r["method"], r["granularity"], r["stage"]) for r in rows]
    # spatial magnitude has no vector granularity; wrelu trains its own dense network
    assert keys == [("dense", "-", "-1"), ("dense-wrelu", "-", "-1"), ("wrelu", "1x1", "0"), ("wrelu", "1x1", "1"),
                    ("wrelu", "16x1", "0"), ("wrelu", "16x1", "1"), ("spatial", "1x1", "0"), ("spatial", "1x1", "1")]
    dense, wrelu = rows[0], rows[1]
    assert wrelu["top1_dense"] == dense["top1"]
    for r in rows[2:6]:
        assert r["top1_start"] == wrelu["top1"] and r["top1_dense"] == dense["top1"]
    spatial = rows[-1]
    assert float(spatial["winograd_sparsity"]) < float(spatial["target"])  # spatial zeros are not Winograd zeros


def test_grid_on_cifar_with_a_paper_model(tmp_path):
    _fake_cifar(tmp_path, 100, n_train=16, n_test=8)
    out = tmp_path / "c100"
    assert converged_grid.main([
        "--out", str(out), "--dataset", "cifar100", "--data-dir", str(tmp_path), "--model", "convpool-cnn-c",
        "--batch-size", "8", "--dense-epochs", "0.5", "--stage-epochs", "0.5", "--spatial-targets", "0.3",
        "--winograd-targets", "", "--seeds", "0", "--methods", "yu", "--granularities", "1x1", "--no-progress"]) == 0
    rows = _rows(f"{out}.csv")
    assert [(r["method"], r["dataset"], r["model"]) for r in rows] == [("dense", "cifar100", "convpool-cnn-c"),
                                                                      ("yu", "cifar100", "convpool-cnn-c")]
    assert abs(float(rows[1]["winograd_sparsity"]) - 0.3) < 0.01


def test_grid_cli_errors():
    with pytest.raises(SystemExit):
        converged_grid.parse_args(["--out", "x", "--dataset", "cifar10"])  # no --data-dir
    with pytest.raises(SystemExit):
        converged_grid.parse_args(["--out", "x", "--methods", "yu+prune-harder"])
    with pytest.raises(SystemExit):
        converged_grid.parse_args(["--out", "x", "--methods", "spatial", "--granularities", "16x1"])  # no cell
    with pytest.raises(SystemExit):
        converged_grid.parse_args(["--out", "x", "--granularities", "16"])
    a = converged_grid.parse_args(["--out", "x"])
    assert [c.key for c in converged_grid.cells(a)][:3] == ["yu-plain-1x1", "yu-plain-16x1", "yu-plain-32x1"]
    assert (a.train_limit, a.test_limit, a.seeds, a.dataset) == (None, None, "0,1,2", "fashion-mnist")


def test_grid_winograd_stage_length_and_a_dense_model_carried_to_a_new_out(tmp_path, monkeypatch):
    # another retraining schedule needs another OUT; the converged dense model (same dense settings)
    # may be carried over: its row comes back from the checkpoint and it is not trained again
    a, b = tmp_path / "a", tmp_path / "b"
    assert converged_grid.main(_args(a, "--methods", "yu", "--granularities", "1x1")) == 0
    (tmp_path / "b.state" / "seed0").mkdir(parents=True)
    shutil.copy(tmp_path / "a.state" / "seed0" / "dense.pt", tmp_path / "b.state" / "seed0" / "dense.pt")
    calls = []
    _spy(monkeypatch, calls)
    assert converged_grid.main(_args(b, "--methods", "yu", "--granularities", "1x1", "--winograd-stage-epochs", "1",
                                     "--winograd-lr", "1e-4")) == 0
    assert [c[0] for c in calls] == ["seed 0 yu-plain-1x1 0.5", "seed 0 yu-plain-1x1 0.7"]
    rows_a, rows_b = _rows(f"{a}.csv"), _rows(f"{b}.csv")
    assert rows_b[0]["method"] == "dense" and rows_b[0]["top1"] == rows_a[0]["top1"]
    assert rows_b[0]["winograd_lr"] == "0.0001"  # the row carries this run's settings
    # spatial stages retrain --stage-epochs (0.5 epoch = 2 steps), Winograd ones --winograd-stage-epochs (4)
    assert [(r["phase"], r["steps"]) for r in rows_b[1:]] == [("spatial", "2"), ("winograd", "4")]
    assert rows_b[1]["winograd_stage_steps"] == "4" and rows_a[1]["winograd_stage_steps"] == "2"


def test_grid_recipes_parse_and_refuse_by_name():
    a = converged_grid.parse_args(["--out", "x", "--methods", "yu+reparam+distill,li+reparam,liu", "--granularities",
                                   "1x1"])
    assert [(c.key, c.distill, c.reparam) for c in converged_grid.cells(a)] == [
        ("yu-distill+reparam-1x1", True, True), ("li-reparam-1x1", False, True), ("liu-plain-1x1", False, False)]
    # reparam retrains the Winograd-domain stages through spatial kernels, at the spatial lr
    yu = converged_grid.cells(a)[0]
    assert [lr for _, _, lr in yu.stages(a)] == [a.spatial_lr] * 5
    plain = converged_grid.Cell("yu", "plain", (1, 1))
    assert [lr for _, _, lr in plain.stages(a)] == [a.spatial_lr] * 2 + [a.winograd_lr] * 3
    for spec, match in (("wrelu+reparam", "Winograd-ReLU"), ("spatial+reparam", "no Winograd-domain stage"),
                        ("yu+reparam+reparam", "twice"), ("yu+distil", "unknown recipe 'distil'")):
        with pytest.raises(ValueError, match=match):
            converged_grid.cells(_ns(spec))
    assert "yu+distill+reparam" in converged_grid.parse_args(["--out", "x"]).methods  # in the default grid


def _ns(methods):
    return argparse.Namespace(methods=methods, granularities="1x1")


def test_grid_reparam_cell_runs_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "grid"
    calls = []
    # stopped at its second Winograd stage; the checkpoint in between holds a plain Q
    _spy(monkeypatch, calls, stop_at="seed 0 yu-reparam-1x1 0.8")
    args = _args(out, "--methods", "yu+reparam", "--granularities", "1x1", "--winograd-targets", "0.7,0.8")
    with pytest.raises(_Stop):
        converged_grid.main(args)
    state = torch.load(tmp_path / "grid.state" / "seed0" / "yu-reparam-1x1.pt", weights_only=False)
    assert state["stage"] == 1 and not any("parametrizations" in k for k in state["model"])
    calls.clear()
    _spy(monkeypatch, calls)
    assert converged_grid.main(args) == 0
    assert [c[0] for c in calls] == ["seed 0 yu-reparam-1x1 0.8"]
    rows = [r for r in _rows(f"{out}.csv") if r["method"] == "yu"]
    assert [(r["recipe"], r["phase"], r["target"]) for r in rows] == [
        ("reparam", "spatial", "0.5"), ("reparam", "winograd", "0.7"), ("reparam", "winograd", "0.8")]
    for r in rows:
        assert abs(float(r["winograd_sparsity"]) - float(r["target"])) < 0.02


def test_grid_baselines_with_reparam_reach_their_targets(tmp_path):
    # li+reparam / liu+reparam are in the default grid: every stage is Winograd-domain, pruned by the
    # baseline's own criterion and retrained through the spatial kernels
    assert "li+reparam" in converged_grid.parse_args(["--out", "x"]).methods
    out = tmp_path / "g"
    assert converged_grid.main(_args(out, "--methods", "li+reparam,liu+reparam", "--granularities", "1x1,16x1")) == 0
    rows = [r for r in _rows(f"{out}.csv") if r["method"] != "dense"]
    assert [(r["method"], r["recipe"], r["granularity"], r["phase"], r["target"]) for r in rows] == [
        (m, "reparam", g, "winograd", t) for m in ("li", "liu") for g in ("1x1", "16x1") for t in ("0.5", "0.7")]
    for r in rows:
        assert abs(float(r["winograd_sparsity"]) - float(r["target"])) < 0.02
    assert not any("parametrizations" in k for k in torch.load(
        tmp_path / "g.state" / "seed0" / "liu-reparam-16x1.pt", weights_only=False)["model"])


def test_grid_dense_from_another_out_is_checked_and_never_retrained(tmp_path, monkeypatch):
    # a longer pruning schedule on the same converged dense models: --dense-from copies them (and
    # their curve points) after checking the dense settings, instead of training them again
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert converged_grid.main(_args(a, "--methods", "yu", "--granularities", "1x1")) == 0
    calls = []
    _spy(monkeypatch, calls)
    assert converged_grid.main(_args(b, "--methods", "yu", "--granularities", "1x1", "--stage-epochs", "1",
                                     "--dense-from", str(a))) == 0
    assert [c[0] for c in calls] == ["seed 0 yu-plain-1x1 0.5", "seed 0 yu-plain-1x1 0.7"]  # no dense training
    rows_a, rows_b = _rows(f"{a}.csv"), _rows(f"{b}.csv")
    assert rows_b[0]["method"] == "dense" and rows_b[0]["top1"] == rows_a[0]["top1"]
    assert rows_b[1]["top1_dense"] == rows_a[0]["top1"] and rows_b[1]["stage_steps"] == "4"
    assert _rows(f"{b}_curve.csv") == _rows(f"{a}_curve.csv")  # the convergence curve travels too
    # rerunning b with --dense-from again is a no-op for the dense models
    calls.clear()
    assert converged_grid.main(_args(b, "--methods", "yu", "--granularities", "1x1", "--stage-epochs", "1",
                                     "--dense-from", str(a))) == 0
    assert calls == []
    # other dense settings, a missing OUT, or its own OUT: refused by name, before any training
    with pytest.raises(SystemExit, match=r"dense_lr: 0\.05 there, 0\.1 now"):
        converged_grid.main(_args(c, "--dense-lr", "0.1", "--dense-from", str(a)))
    with pytest.raises(SystemExit, match="no .*config.json"):
        converged_grid.main(_args(tmp_path / "d", "--dense-from", str(tmp_path / "nowhere")))
    with pytest.raises(SystemExit, match="this run's own --out"):
        converged_grid.main(_args(b, "--stage-epochs", "1", "--methods", "yu", "--dense-from", str(b)))
    assert calls == [] and not (tmp_path / "c.state").exists()  # nothing written: the fixed command can run
