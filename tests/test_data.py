"""Dataset loaders: IDX parsing, Fashion-MNIST, digits, CIFAR pickle batches (synthetic files)."""

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from tritonwino.experiments.data import (
    DatasetNotFoundError,
    fashion_mnist_available,
    load_cifar,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    read_idx,
)


def _write_idx(path, arr, gz=True):
    arr = np.asarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    data = header + arr.tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(data)


def _fake_fashion(root, n_train=6, n_test=4):
    rng = np.random.default_rng(0)
    imgs = {"train": rng.integers(0, 256, (n_train, 28, 28)), "t10k": rng.integers(0, 256, (n_test, 28, 28))}
    for split, x in imgs.items():
        _write_idx(os.path.join(root, f"{split}-images-idx3-ubyte.gz"), x)
        _write_idx(os.path.join(root, f"{split}-labels-idx1-ubyte.gz"), np.arange(len(x)) % 10)
    return imgs


def test_read_idx_roundtrip(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", arr)
    _write_idx(tmp_path / "b", arr, gz=False)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr)
    assert np.array_equal(read_idx(tmp_path / "b"), arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")


def test_fashion_mnist_from_root_override(tmp_path):
    imgs = _fake_fashion(tmp_path)
    assert fashion_mnist_available(tmp_path)
    tr, te = load_fashion_mnist(tmp_path, normalize=False)
    x, y = tr.tensors
    assert x.shape == (6, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    torch.testing.assert_close(x[2, 0], torch.tensor(imgs["train"][2], dtype=torch.float32) / 255)
    assert y.tolist() == [0, 1, 2, 3, 4, 5]
    tr2, te2 = load_fashion_mnist(tmp_path, train_limit=3, test_limit=2)
    assert len(tr2) == 3 and len(te2) == 2
    assert abs(float(tr2.tensors[0].mean())) < 1e-5  # normalised with the training mean


def test_fashion_mnist_missing_gives_clear_message(tmp_path):
    assert not fashion_mnist_available(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


@pytest.mark.skipif(not fashion_mnist_available(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_subset():
    tr, te, info = load_dataset("fashion-mnist", train_limit=100, test_limit=50)
    assert info["in_channels"] == 1 and len(tr) == 100 and len(te) == 50
    assert tr.tensors[0].shape[1:] == (1, 28, 28)
    assert set(tr.tensors[1].tolist()) <= set(range(10))


def test_digits_fallback():
    tr, te = load_digits(size=16)
    assert tr.tensors[0].shape[1:] == (1, 16, 16)
    assert len(tr) + len(te) == 1797
    assert abs(len(te) - 0.25 * 1797) < 1
    tr2, te2, info = load_dataset("digits", train_limit=10)
    assert len(tr2) == 10 and info["image_size"] == 16
    with pytest.raises(ValueError):
        load_digits(size=4)


def test_auto_falls_back_to_digits(tmp_path):
    _, _, info = load_dataset("auto", root=tmp_path)  # empty dir: no Fashion-MNIST there
    assert info["name"] == "digits"


def _fake_cifar(root, nc=10, n=5):
    rng = np.random.default_rng(1)
    if nc == 10:
        names, key = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels"
    else:
        names, key = ["train", "test"], b"fine_labels"
    for name in names:
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), key: list(range(n))}
        with open(os.path.join(root, name), "wb") as f:
            pickle.dump(d, f)
    return names


def test_cifar10_from_synthetic_batches(tmp_path):
    _fake_cifar(tmp_path)
    tr, te = load_cifar(tmp_path, 10, normalize=False)
    assert tr.tensors[0].shape == (25, 3, 32, 32) and te.tensors[0].shape == (5, 3, 32, 32)
    with open(tmp_path / "data_batch_1", "rb") as f:
        raw = pickle.load(f)[b"data"]
    torch.testing.assert_close(tr.tensors[0][0], torch.tensor(raw[0].reshape(3, 32, 32) / 255.0, dtype=torch.float32))
    _, _, info = load_dataset("cifar10", root=tmp_path, train_limit=7)
    assert info["in_channels"] == 3 and info["num_classes"] == 10


def test_cifar100_and_errors(tmp_path):
    _fake_cifar(tmp_path, 100)
    tr, te = load_cifar(tmp_path, 100)
    assert len(tr) == 5 and tr.tensors[1].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(DatasetNotFoundError, match="cifar-10-python.tar.gz"):
        load_cifar(tmp_path / "nope", 10)
    with pytest.raises(ValueError, match="root"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet-22k")
    with pytest.raises(ValueError):
        load_cifar(tmp_path, 20)
