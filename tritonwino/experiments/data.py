"""Dataset loaders. Nothing is downloaded: every loader reads local files and says how to get them.

- Fashion-MNIST: IDX files (gzipped or not) from the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``) or a directory you give.
- digits: scikit-learn's bundled 8×8 digits, resized to ``size``×``size`` — always available.
- CIFAR-10 / CIFAR-100: the "python version" pickle batches in a directory you give.

Images come back as float32 tensors (N, C, H, W) scaled to [0, 1] and normalised with the
training split's per-channel mean/std; labels as int64.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = [
    "FASHION_MNIST_DIR",
    "DatasetNotFoundError",
    "read_idx",
    "load_fashion_mnist",
    "load_digits",
    "load_cifar",
    "load_dataset",
    "fashion_mnist_available",
]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where the loader looked; the message says how to get them."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (``.gz`` or raw) into a numpy array."""
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    code, ndim = data[2], data[3]
    if code not in dtypes:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x}")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=dtypes[code], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {int(np.prod(dims))} values for shape {dims}, found {arr.size}")
    return arr.reshape(dims)


def _find(root: str, stem: str) -> str | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        p = os.path.join(root, name)
        if os.path.exists(p):
            return p
    return None


def fashion_mnist_available(root: str | os.PathLike | None = None) -> bool:
    root = os.fspath(root) if root is not None else FASHION_MNIST_DIR
    return all(_find(root, s) is not None for pair in _FASHION_FILES.values() for s in pair)


def _normalize(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return [(t - mean) / std for t in (train, *others)]


def _subset(x: torch.Tensor, y: torch.Tensor, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    if limit is None:
        return x, y
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    return x[:limit], y[:limit]


def load_fashion_mnist(
    root: str | os.PathLike | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    normalize: bool = True,
) -> tuple[TensorDataset, TensorDataset]:
    """Fashion-MNIST train/test as ``TensorDataset``s of (N, 1, 28, 28) float32 and int64 labels.

    ``root`` defaults to ``FASHION_MNIST_DIR``. ``*_limit`` keep the first N examples.
    """
    root = os.fspath(root) if root is not None else FASHION_MNIST_DIR
    out = {}
    for split, (img, lab) in _FASHION_FILES.items():
        pi, pl = _find(root, img), _find(root, lab)
        if pi is None or pl is None:
            raise DatasetNotFoundError(
                f"Fashion-MNIST {split} files ({img}[.gz], {lab}[.gz]) not found in {root!r}. "
                "Install them with `apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu; files land in "
                f"{FASHION_MNIST_DIR}) or pass root= a directory holding the IDX files. "
                "load_dataset('digits') works without any download."
            )
        x = torch.from_numpy(read_idx(pi).astype(np.float32) / 255.0).unsqueeze(1)
        y = torch.from_numpy(read_idx(pl).astype(np.int64))
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"Fashion-MNIST {split}: {x.shape[0]} images but {y.shape[0]} labels")
        out[split] = _subset(x, y, train_limit if split == "train" else test_limit)
    (xtr, ytr), (xte, yte) = out["train"], out["test"]
    if normalize:
        xtr, xte = _normalize(xtr, xte)
    return TensorDataset(xtr, ytr), TensorDataset(xte, yte)


def load_digits(
    size: int = 16, test_fraction: float = 0.25, seed: int = 0, normalize: bool = True
) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's bundled 8×8 digits (1797 images, 10 classes) resized to ``size``×``size``
    (bilinear), split with a fixed seed."""
    from sklearn.datasets import load_digits as _sk_digits

    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    d = _sk_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size != 8:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.tensor(d.target, dtype=torch.int64)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(x.shape[0], generator=g)
    nte = int(round(test_fraction * x.shape[0]))
    te, tr = perm[:nte], perm[nte:]
    xtr, xte = x[tr], x[te]
    if normalize:
        xtr, xte = _normalize(xtr, xte)
    return TensorDataset(xtr, y[tr]), TensorDataset(xte, y[te])


def _unpickle(path: str) -> dict:
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def load_cifar(
    root: str | os.PathLike,
    num_classes: int = 10,
    train_limit: int | None = None,
    test_limit: int | None = None,
    normalize: bool = True,
) -> tuple[TensorDataset, TensorDataset]:
    """CIFAR-10 (``data_batch_1..5``, ``test_batch``) or CIFAR-100 (``train``, ``test``, fine labels)
    from the "python version" pickle batches in ``root``: the extracted ``cifar-10-batches-py`` /
    ``cifar-100-python`` directory, or the directory holding it. Returns (N, 3, 32, 32) float32
    datasets."""
    if num_classes not in (10, 100):
        raise ValueError(f"num_classes must be 10 or 100, got {num_classes!r}")
    if root is None:
        raise ValueError("root is required: the directory holding the CIFAR python batches")
    root = os.fspath(root)
    if num_classes == 10:
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_files = ["test_batch"]
        key = "labels"
        url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    else:
        train_files, test_files, key = ["train"], ["test"], "fine_labels"
        url = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    subdir = "cifar-10-batches-py" if num_classes == 10 else "cifar-100-python"

    def missing_in(d: str) -> list[str]:
        return [f for f in train_files + test_files if not os.path.exists(os.path.join(d, f))]

    missing = missing_in(root)
    if missing and not missing_in(os.path.join(root, subdir)):
        root, missing = os.path.join(root, subdir), []  # the user gave the directory above the batches
    if missing:
        raise DatasetNotFoundError(
            f"CIFAR-{num_classes} files {missing} not found in {root!r} (nor in {subdir}/ below it). Download "
            f"{url} yourself, extract it and pass the extracted {subdir}/ directory, or the one holding it "
            f"(nothing is downloaded by tritonwino)."
        )

    def read(files: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for f in files:
            d = _unpickle(os.path.join(root, f))
            if "data" not in d or key not in d:
                raise ValueError(f"{os.path.join(root, f)} lacks 'data' or {key!r}: not a CIFAR-{num_classes} batch")
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[key], dtype=np.int64))
        return (torch.from_numpy(np.concatenate(xs).astype(np.float32) / 255.0),
                torch.from_numpy(np.concatenate(ys)))

    xtr, ytr = _subset(*read(train_files), train_limit)
    xte, yte = _subset(*read(test_files), test_limit)
    if normalize:
        xtr, xte = _normalize(xtr, xte)
    return TensorDataset(xtr, ytr), TensorDataset(xte, yte)


def load_dataset(
    name: str = "auto",
    root: str | os.PathLike | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
) -> tuple[TensorDataset, TensorDataset, dict]:
    """``(train, test, info)``. ``name``: ``"auto"`` (Fashion-MNIST if its files exist, else digits),
    ``"fashion-mnist"``, ``"digits"``, ``"cifar10"``, ``"cifar100"`` (these two need ``root``).
    ``info`` has ``name``, ``in_channels``, ``num_classes``, ``image_size``."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    key = name.lower().replace("_", "-")
    if key == "auto":
        key = "fashion-mnist" if fashion_mnist_available(root) else "digits"
    if key in ("fashion-mnist", "fashionmnist"):
        tr, te = load_fashion_mnist(root, train_limit, test_limit)
        info = {"name": "fashion-mnist", "in_channels": 1, "num_classes": 10, "image_size": 28}
    elif key == "digits":
        tr, te = load_digits()
        tr, te = (TensorDataset(*_subset(*d.tensors, lim)) for d, lim in ((tr, train_limit), (te, test_limit)))
        info = {"name": "digits", "in_channels": 1, "num_classes": 10, "image_size": 16}
    elif key in ("cifar10", "cifar-10", "cifar100", "cifar-100"):
        nc = 100 if "100" in key else 10
        if root is None:
            raise ValueError(f"{name}: give root= the directory holding the CIFAR python batches")
        tr, te = load_cifar(root, nc, train_limit, test_limit)
        info = {"name": f"cifar{nc}", "in_channels": 3, "num_classes": nc, "image_size": 32}
    else:
        raise ValueError(f"unknown dataset {name!r}; choose auto, fashion-mnist, digits, cifar10 or cifar100")
    return tr, te, info
