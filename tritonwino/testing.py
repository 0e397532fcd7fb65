"""Helpers for tests and benchmarks: the one factory of randomly pruned Winograd-domain weights.

Benchmarks, ``tritonwino tune`` and the test suite all build their stand-in pruned layers here, so
"75 % sparsity at (16, 1)" means the same pattern statistics everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from . import _checks, reference
from .transforms import tile_size

__all__ = ["random_pruned_q"]


def random_pruned_q(
    k: int,
    c: int,
    m: int = 4,
    r: int = 3,
    sparsity: float = 0.75,
    block: Sequence[int] = (1, 1),
    *,
    weight: torch.Tensor | None = None,
    points: Sequence[object] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A Winograd-domain weight ``Q = G W Gᵀ`` (K, C, n, n), float64, with a random keep-mask.

    Each (output-channel group of ``bk``, input-channel group of ``bc``, position) is kept with
    probability ``1 − sparsity``, so the exact zeros of Q follow the granularity ``block`` (the
    packed density is then about ``1 − sparsity`` for ``bk`` matching the packing's group). Tuning
    keys depend on a pattern only through its density, so such a mask stands in for a real pruning
    run in benchmarks.

    Args:
        k, c: output and input channels.
        m, r: the tile F(m, r).
        sparsity: probability that a group is pruned, in [0, 1].
        block: granularity (bk, bc).
        weight: the spatial weight (K, C, r, r) to transform; default ``randn / sqrt(r² C)``.
        points: interpolation points (default: the library's standard set).
        generator: random source for the weight and the mask.

    Example:
        >>> q = random_pruned_q(16, 8, m=4, sparsity=0.5, block=(16, 1), generator=torch.Generator().manual_seed(0))
        >>> tuple(q.shape)
        (16, 8, 6, 6)
    """
    bk, bc = _checks.check_block(block)
    if not 0.0 <= float(sparsity) <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity!r}")
    if weight is None:
        weight = torch.randn(k, c, r, r, generator=generator, dtype=torch.float64) / math.sqrt(r * r * max(c, 1))
    elif tuple(weight.shape) != (k, c, r, r):
        raise ValueError(f"weight must have shape {(k, c, r, r)}, got {tuple(weight.shape)}")
    q = reference.winograd_weight(weight.detach().to(torch.float64).cpu(), m, points)
    n = tile_size(m, r)
    keep = torch.rand(math.ceil(k / bk), math.ceil(c / bc), n, n, generator=generator) >= sparsity
    keep = keep.repeat_interleave(bk, 0)[:k].repeat_interleave(bc, 1)[:, :c]
    return q * keep
