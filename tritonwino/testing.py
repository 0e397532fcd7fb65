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

__all__ = ["NORM_FACTOR", "REL_BOUND", "interpreter_rounds_bf16_like_gpu", "max_err", "random_pruned_q", "rms",
           "rule_violations", "worst_element"]


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


# ---------------------------------------------------------------------------------------------
# The accuracy rule (tests/_tolerance.py documents it; the fuzz harness uses it too)

REL_BOUND = {
    (2, torch.float32): 2e-6, (4, torch.float32): 2e-5, (6, torch.float32): 1e-4,
    (2, torch.float16): 5e-3, (4, torch.float16): 3e-2, (6, torch.float16): 6e-2,
    (2, torch.bfloat16): 4e-2, (4, torch.bfloat16): 2.5e-1, (6, torch.bfloat16): 5e-1,
}


# The spread between correct implementations' RMS errors. fp32: the error is rounding in the fp32
# transforms, whose order differs between implementations (kron vs separable transforms: up to 2.24x
# measured, tests/test_tolerance.py). fp16/bf16: the error is the rounding of the operands V and Q,
# the same in every implementation (ratio 1.00; the interpreter's truncating bf16 cast is absorbed by
# the 1-ulp term), so the bar stays at 2x where bugs sit closest to the noise.
NORM_FACTOR = {torch.float32: 3.0, torch.float16: 2.0, torch.bfloat16: 2.0}


def max_err(y: torch.Tensor, oracle: torch.Tensor) -> float:
    d = (y.double() - oracle).abs()
    return float(d.max()) if d.numel() else 0.0


def rms(t: torch.Tensor) -> float:
    return float(t.double().pow(2).mean().sqrt()) if t.numel() else 0.0


def worst_element(y: torch.Tensor, oracle: torch.Tensor) -> str:
    """Where ``y`` is furthest from ``oracle``: index, both values and the error (for messages)."""
    d = (y.double() - oracle).abs()
    if d.numel() == 0:
        return "empty"
    flat = int(torch.nan_to_num(d, nan=float("inf")).flatten().argmax())
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), d.shape))
    return f"worst at {idx}: got {float(y[idx]):.6g}, oracle {float(oracle[idx]):.6g}, |err| {float(d[idx]):.3e}"


def rule_violations(y: torch.Tensor, y_torch: torch.Tensor, oracle: torch.Tensor) -> list[str]:
    """The accuracy rule of the test suite (documented in tests/_tolerance.py): which parts of it a
    result ``y`` breaks, judged against the float64 ``oracle`` and the torch path's ``y_torch``
    (empty list: it passes). With e = y − oracle, e_ref = y_torch − oracle, eps of y's dtype:

    * norm: rms(e) <= NORM_FACTOR[dtype] · rms(e_ref) + eps · rms(oracle)
    * max:  max|e| <= 4 · max(max|e_ref|, rms(e_ref) · sqrt(2 ln N)) + eps · max|oracle|

    Example:
        >>> o = torch.randn(1, 2, 4, 4, dtype=torch.float64)
        >>> rule_violations(o.float(), o.float(), o)
        []
        >>> bool(rule_violations(-o.float(), o.float(), o))
        True
    """
    if y.shape != oracle.shape:
        return [f"shape {tuple(y.shape)} != {tuple(oracle.shape)}"]
    if not bool(torch.isfinite(y).all()) and bool(torch.isfinite(oracle).all()):
        return [f"non-finite output; {worst_element(y, oracle)}"]
    n = oracle.numel()
    if n == 0:
        return []
    eps = float(torch.finfo(y.dtype).eps)
    e, e_ref = y.double() - oracle, y_torch.double() - oracle
    scale = float(oracle.abs().max())
    out = []
    factor = NORM_FACTOR.get(y.dtype, 3.0)
    norm_bar = factor * rms(e_ref) + eps * rms(oracle)
    if rms(e) > norm_bar:
        out.append(f"rms error {rms(e):.3e} > {factor:g} x torch rms error {rms(e_ref):.3e} + 1 ulp x rms(oracle) "
                   f"(bar {norm_bar:.3e})")
    expected_max = rms(e_ref) * math.sqrt(2 * math.log(max(n, 2)))
    max_bar = 4 * max(max_err(y_torch, oracle), expected_max) + eps * scale
    if max_err(y, oracle) > max_bar:
        out.append(f"max error {max_err(y, oracle):.3e} > 4 x max(torch max error {max_err(y_torch, oracle):.3e}, "
                   f"its rms x sqrt(2 ln N) {expected_max:.3e}) + 1 ulp x scale (bar {max_bar:.3e}); "
                   f"{worst_element(y, oracle)}")
    return out


# ---------------------------------------------------------------------------------------------
# The Triton interpreter's fp32 -> bf16 conversion

def interpreter_rounds_bf16_like_gpu() -> bool:
    """Make the Triton interpreter round fp32 -> bf16 conversions to nearest even, as a GPU does.

    A kernel's ``x.to(tl.bfloat16)`` rounds to nearest even when compiled, but the interpreter
    (triton 3.x ``InterpreterBuilder.cast_impl``) truncates: twice the cast error, always towards
    zero, so errors of a V stored in bf16 add up coherently instead of cancelling (the fuzz run
    found a bf16 layer 17x less accurate under the interpreter than the torch path). Tests and the
    fuzz harness call this so that what the interpreter verifies is what the GPU computes. Casts
    that ask for a rounding mode explicitly (``fp_downcast_rounding``) are left alone. Idempotent;
    returns True once installed (False when the interpreter has no such hook).

    Example:
        >>> interpreter_rounds_bf16_like_gpu() in (True, False)
        True
    """
    try:
        import numpy as np
        import triton.language as tl
        from triton.runtime import interpreter as ti
    except ImportError:  # pragma: no cover
        return False
    builder = getattr(ti, "InterpreterBuilder", None)
    if builder is None or not hasattr(builder, "cast_impl") or not hasattr(ti, "TensorHandle"):
        return False
    if getattr(builder.cast_impl, "_tritonwino_rtne", False):
        return True
    truncating = builder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            # round to nearest even on the bit pattern (the interpreter's own RTNE mode misses the
            # carry into the exponent: 1.998 -> 1.0); NaN stays a (quiet) NaN
            f32 = np.ascontiguousarray(src.data, dtype=np.float32)
            bits = f32.view(np.uint32).astype(np.uint64)
            rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
            nan = np.isnan(f32)
            rounded[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
            return ti.TensorHandle(rounded, dst_type.scalar)
        return truncating(self, src, dst_type)

    cast_impl._tritonwino_rtne = True  # type: ignore[attr-defined]
    builder.cast_impl = cast_impl  # create_fp_trunc & co. look cast_impl up on every call
    return True
