"""The one training and evaluation loop shared by the demo, the pruning experiments and the
notebooks: endless shuffled mini-batches, SGD with momentum, an optional cosine schedule, and a
hook for a pruner's ``step(optimizer)`` (which scales gradients and re-applies masks)."""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset
from tqdm import tqdm

__all__ = ["Batches", "accuracy", "train"]


class Batches:
    """Endless shuffled mini-batches of a ``TensorDataset`` with their own generator, so every
    method of an experiment sees the same stream for the same seed.

    Args:
        data: a ``TensorDataset`` of (inputs, labels).
        batch_size: examples per batch.
        seed: seed of the shuffling generator.
        augment: optional callable ``(x, generator) -> x`` applied to each batch.

    Example:
        >>> ds = TensorDataset(torch.randn(10, 1, 4, 4), torch.arange(10))
        >>> x, y = Batches(ds, 4, seed=0).next()
        >>> tuple(x.shape)
        (4, 1, 4, 4)
    """

    def __init__(self, data: TensorDataset, batch_size: int, seed: int = 0,
                 augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None):
        self.x, self.y = data.tensors
        if batch_size < 1 or batch_size > len(self.y):
            raise ValueError(f"batch_size must be in [1, {len(self.y)}], got {batch_size}")
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.augment = augment
        self._perm: torch.Tensor | None = None
        self._pos = 0

    def state(self) -> dict:
        """Where the stream is (generator state, current permutation and position): with
        :meth:`set_state` a resumed experiment continues the same stream."""
        return {"generator": self.generator.get_state(), "perm": self._perm, "pos": self._pos}

    def set_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._perm, self._pos = state["perm"], int(state["pos"])

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._perm is None or self._pos + self.batch_size > len(self.y):
            self._perm, self._pos = torch.randperm(len(self.y), generator=self.generator), 0
        idx = self._perm[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        x = self.x[idx]
        if self.augment is not None:
            x = self.augment(x, self.generator)
        return x, self.y[idx]


def train(model: nn.Module, batches: Batches, steps: int, lr: float, *,
          step: Callable[[torch.optim.Optimizer], None] | None = None, momentum: float = 0.9,
          weight_decay: float = 5e-4, cosine: bool = False, desc: str = "train", progress: bool = True,
          device: torch.device | str = "cpu") -> float:
    """``steps`` SGD steps on cross-entropy; returns the mean loss of the last 10% of steps.

    Args:
        model: trained in place (put in train mode).
        batches: the mini-batch stream.
        steps: optimizer steps.
        lr: learning rate (the start of the cosine decay with ``cosine=True``).
        step: called instead of ``optimizer.step()`` — e.g. a pruner's ``step`` that scales
            gradients, steps and re-applies masks.
        momentum, weight_decay: SGD settings.
        cosine: cosine-anneal the learning rate to 0 over ``steps``.
        desc, progress: progress bar label, and whether to show it (stderr).
        device: where the batches are moved.

    Example:
        >>> ds = TensorDataset(torch.randn(32, 1, 6, 6), torch.randint(0, 2, (32,)))
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(36, 2))
        >>> loss = train(net, Batches(ds, 8), steps=3, lr=0.1, progress=False)
        >>> loss > 0
        True
    """
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1)) if cosine else None
    tail: list[float] = []
    for i in tqdm(range(steps), desc=desc, leave=False, mininterval=2, file=sys.stderr, disable=not progress):
        x, y = batches.next()
        loss = F.cross_entropy(model(x.to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step is None:
            opt.step()
        else:
            step(opt)
        if sched is not None:
            sched.step()
        if i >= steps - max(1, steps // 10):
            tail.append(float(loss.detach()))
    return sum(tail) / len(tail) if tail else float("nan")


def accuracy(model: nn.Module, data: TensorDataset, device: torch.device | str = "cpu", batch: int = 500) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on ``data`` (eval mode, no gradients).

    Example:
        >>> ds = TensorDataset(torch.randn(8, 4), torch.zeros(8, dtype=torch.long))
        >>> accuracy(nn.Linear(4, 1), ds)
        1.0
    """
    was_training = model.training
    model.eval()
    x_all, y_all = data.tensors
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y_all), batch):
            pred = model(x_all[i:i + batch].to(device)).argmax(1).cpu()
            correct += int((pred == y_all[i:i + batch]).sum())
    model.train(was_training)
    return correct / max(1, len(y_all))
