"""The accuracy rule every kernel test uses.

Oracle: ``F.conv2d`` in float64 on the same (already rounded) inputs.

Rule: ``max|y_triton - oracle| <= 2 * max|y_torch - oracle| + atol`` where y_torch is the pure-torch
reference path with the same numerics (fp32 transforms and accumulation, V and Q rounded to the
input's half type). Both paths make the same kinds of rounding errors in a different order, so
their errors are of the same size; a factor 2 absorbs the order while still catching any real
mistake (a wrong mask, a missed channel, a wrong matrix gives errors of the size of the output).
``atol`` is one unit in the last place of the output dtype at the output's scale: the final
rounding to the output dtype that both paths make but may make in opposite directions.

Independently of the rule, the relative error (max abs error / max |oracle|) must be below
``REL_BOUND[(m, dtype)]``: the algorithm's real error for that tile and dtype (bench/accuracy.py
measures it; bounds are about 3-5x the measured maxima over random normal data), so that the
two paths cannot be wrong together.
"""

from __future__ import annotations

import torch

REL_BOUND = {
    (2, torch.float32): 2e-6, (4, torch.float32): 2e-5, (6, torch.float32): 1e-4,
    (2, torch.float16): 5e-3, (4, torch.float16): 3e-2, (6, torch.float16): 6e-2,
    (2, torch.bfloat16): 4e-2, (4, torch.bfloat16): 2.5e-1, (6, torch.bfloat16): 5e-1,
}


def ulp(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


def max_err(y: torch.Tensor, oracle: torch.Tensor) -> float:
    d = (y.double() - oracle).abs()
    return float(d.max()) if d.numel() else 0.0


def worst_element(y: torch.Tensor, oracle: torch.Tensor) -> str:
    """Where ``y`` is furthest from ``oracle``: index, both values and the error (for messages)."""
    d = (y.double() - oracle).abs()
    if d.numel() == 0:
        return "empty"
    flat = int(torch.nan_to_num(d, nan=float("inf")).flatten().argmax())
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), d.shape))
    return f"worst at {idx}: got {float(y[idx]):.6g}, oracle {float(oracle[idx]):.6g}, |err| {float(d[idx]):.3e}"


def assert_close_rule(y: torch.Tensor, y_torch: torch.Tensor, oracle: torch.Tensor, m: int) -> None:
    assert y.shape == oracle.shape, (y.shape, oracle.shape)
    assert y.dtype == y_torch.dtype
    scale = float(oracle.abs().max()) if oracle.numel() else 0.0
    err, err_ref = max_err(y, oracle), max_err(y_torch, oracle)
    atol = ulp(y.dtype) * max(scale, 1.0)
    assert err <= 2 * err_ref + atol, (f"triton err {err:.3e} > 2 x torch err {err_ref:.3e} + {atol:.1e}; "
                                       f"{worst_element(y, oracle)}")
    bound = REL_BOUND.get((m, y.dtype))
    if bound is not None and scale > 0:
        assert err / scale <= bound, (f"relative error {err / scale:.3e} above the F({m},3) bound {bound}; "
                                      f"{worst_element(y, oracle)}")
