"""The one training and evaluation loop shared by the demo, the pruning experiments and the
notebooks: endless shuffled mini-batches, SGD with momentum, an optional cosine schedule, a hook
for a pruner's ``step(optimizer)`` (which scales gradients and re-applies masks), periodic
checkpoints a long run can resume from, light augmentation and a distillation loss."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset
from tqdm import tqdm

__all__ = ["Batches", "accuracy", "distillation_loss", "hooked_eval", "random_crop_flip", "train"]


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


LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def random_crop_flip(pad: int = 2, flip: bool = True) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """An ``augment`` for :class:`Batches`: a random crop of the zero-padded batch (``pad`` pixels
    each side; zero is the mean after normalisation) and, with ``flip``, a random horizontal flip,
    drawn per image from the stream's generator (so a resumed stream repeats them).

    Example:
        >>> aug = random_crop_flip(pad=1)
        >>> tuple(aug(torch.randn(3, 1, 5, 5), torch.Generator().manual_seed(0)).shape)
        (3, 1, 5, 5)
    """
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad must be an int >= 0, got {pad!r}")

    def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        if pad:
            xp = F.pad(x, (pad, pad, pad, pad))
            oy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
            ox = torch.randint(0, 2 * pad + 1, (n,), generator=g)
            rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
            cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
            x = xp[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]
        if flip:
            mirror = torch.rand(n, generator=g) < 0.5
            x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
        return x

    return augment


def distillation_loss(teacher: nn.Module, temperature: float = 4.0, weight: float = 0.5) -> LossFn:
    """A ``loss_fn`` for :func:`train`: ``(1 − weight)·CE(student, y) + weight·T²·KL(softmax(teacher/T)
    ‖ softmax(student/T))`` (Hinton et al. 2015), the teacher run in eval mode without gradients
    on the same (augmented) batch.

    Example:
        >>> teacher = nn.Linear(4, 3)
        >>> loss = distillation_loss(teacher, 2.0, 0.5)(torch.randn(5, 3), torch.randn(5, 4), torch.zeros(5).long())
        >>> float(loss) > 0
        True
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight!r}")
    teacher.eval()

    def loss_fn(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = teacher(x)
        kl = F.kl_div(F.log_softmax(logits / temperature, 1), F.log_softmax(t / temperature, 1),
                      reduction="batchmean", log_target=True)
        return (1.0 - weight) * F.cross_entropy(logits, y) + weight * temperature ** 2 * kl

    return loss_fn


def train(model: nn.Module, batches: Batches, steps: int, lr: float, *,
          step: Callable[[torch.optim.Optimizer], None] | None = None, momentum: float = 0.9,
          weight_decay: float = 5e-4, cosine: bool = False, desc: str = "train", progress: bool = True,
          device: torch.device | str = "cpu", loss_fn: LossFn | None = None, every: int = 0,
          on_checkpoint: Callable[[dict], None] | None = None, resume: dict | None = None) -> float:
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
        loss_fn: ``loss_fn(logits, x, y)`` instead of cross-entropy (e.g. :func:`distillation_loss`).
        every, on_checkpoint: call ``on_checkpoint(state)`` after every ``every`` steps and after
            the last one; ``state`` holds ``step`` (steps done), ``optimizer`` / ``scheduler`` state
            dicts, ``lr`` and ``loss`` (mean since the previous checkpoint). Save it with the model
            and the stream's :meth:`Batches.state` to resume a long run.
        resume: such a ``state``: continue from its step with its optimizer and schedule.

    Example:
        >>> ds = TensorDataset(torch.randn(32, 1, 6, 6), torch.randint(0, 2, (32,)))
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(36, 2))
        >>> loss = train(net, Batches(ds, 8), steps=3, lr=0.1, progress=False)
        >>> loss > 0
        True
        >>> seen = []
        >>> _ = train(net, Batches(ds, 8), steps=5, lr=0.1, progress=False, every=2,
        ...           on_checkpoint=lambda s: seen.append(s["step"]))
        >>> seen
        [2, 4, 5]
    """
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1)) if cosine else None
    start = 0
    if resume is not None:
        start = int(resume["step"])
        opt.load_state_dict(resume["optimizer"])
        if sched is not None:
            sched.load_state_dict(resume["scheduler"])
    tail: list[float] = []
    since: list[float] = []
    for i in tqdm(range(start, steps), desc=desc, leave=False, mininterval=2, file=sys.stderr,
                  disable=not progress, initial=start, total=steps):
        x, y = batches.next()
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss = F.cross_entropy(logits, y) if loss_fn is None else loss_fn(logits, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step is None:
            opt.step()
        else:
            step(opt)
        if sched is not None:
            sched.step()
        value = float(loss.detach())
        since.append(value)
        if i >= steps - max(1, steps // 10):
            tail.append(value)
        if on_checkpoint is not None and ((every > 0 and (i + 1) % every == 0) or i + 1 == steps):
            on_checkpoint({"step": i + 1, "optimizer": opt.state_dict(),
                           "scheduler": None if sched is None else sched.state_dict(),
                           "lr": opt.param_groups[0]["lr"], "loss": sum(since) / len(since)})
            since = []
    return sum(tail) / len(tail) if tail else float("nan")


@contextmanager
def hooked_eval(model: nn.Module, hooks: Sequence[torch.utils.hooks.RemovableHandle]) -> Iterator[None]:
    """Forward passes inside run in eval mode without gradients; afterwards ``hooks`` are removed
    and the model's train/eval mode is restored (also on error).

    Example:
        >>> net, seen = nn.Linear(2, 2), []
        >>> with hooked_eval(net, [net.register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))]):
        ...     _ = net(torch.ones(1, 2))
        >>> seen, net.training, len(net._forward_hooks)
        ([False], True, 0)
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


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
