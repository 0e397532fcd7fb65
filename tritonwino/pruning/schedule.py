"""Gradual pruning schedules and the stage loop.

The authors step through a hand-written list of targets, each stage starting from the previous
stage's weights [code: e.g. 20, 30, 40, 50, 55, … % for step 1; 63, 66, 69, 72, 75 % for step 2].
``cubic_schedule`` (Zhu & Gupta's ramp ``s_t = s_f + (s_i − s_f)(1 − t/T)³``) is offered as an
alternative [ours].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .helpers import check_target

__all__ = ["LIU_DENSITIES", "cubic_schedule", "linear_schedule", "liu_schedule", "check_schedule", "run_schedule"]

# Liu et al.'s iterative density steps [code, xingyul/sparse-winograd-cnn prune_script.py: "0.7 -> 0.6 ->
# 0.5 -> 0.4 -> 0.35 -> ... -> 0.12 -> 0.1"; the elided middle steps 0.3 ... 0.15 are ours].
LIU_DENSITIES = (0.7, 0.6, 0.5, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.12, 0.1)


def cubic_schedule(initial: float, final: float, stages: int) -> list[float]:
    """``stages`` targets rising from ``initial`` to ``final`` on a cubic ramp (fast first, slow last)."""
    initial, final = check_target(initial, "initial"), check_target(final, "final")
    if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
        raise ValueError(f"stages must be a positive int, got {stages!r}")
    if final < initial:
        raise ValueError(f"final ({final}) must be >= initial ({initial})")
    if stages == 1:
        return [final]
    return [final + (initial - final) * (1 - t / (stages - 1)) ** 3 for t in range(stages)]


def liu_schedule(final_density: float = 0.1) -> list[float]:
    """Liu et al.'s schedule as sparsity targets (``1 − density``) down to ``final_density``: each
    stage prunes the layer's smallest-|Q| entries (``WinogradPruner(method="liu")``, the new mask
    computed on ``Q ⊙ previous mask``) and retrains with the mask fixed.

    Example:
        >>> liu_schedule(0.4)
        [0.3, 0.4, 0.5, 0.6]
    """
    if isinstance(final_density, bool) or not isinstance(final_density, int | float) or not 0.0 < final_density <= 1.0:
        raise ValueError(f"final_density must be a number in (0, 1], got {final_density!r}")
    out = [round(1.0 - d, 10) for d in LIU_DENSITIES if d > final_density + 1e-12]
    return out + [round(1.0 - final_density, 10)]


def linear_schedule(initial: float, final: float, stages: int) -> list[float]:
    """``stages`` evenly spaced targets from ``initial`` to ``final``."""
    initial, final = check_target(initial, "initial"), check_target(final, "final")
    if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
        raise ValueError(f"stages must be a positive int, got {stages!r}")
    if stages == 1:
        return [final]
    return [initial + (final - initial) * t / (stages - 1) for t in range(stages)]


def check_schedule(targets: Sequence[float]) -> list[float]:
    """Validate a list of targets: each in [0, 1), non-decreasing."""
    if isinstance(targets, str) or not isinstance(targets, Sequence) or len(targets) == 0:
        raise ValueError(f"a schedule must be a non-empty sequence of targets, got {targets!r}")
    out = [check_target(t, f"targets[{i}]") for i, t in enumerate(targets)]
    for a, b in zip(out, out[1:], strict=False):
        if b < a:
            raise ValueError(f"schedule targets must not decrease: {out}")
    return out


def run_schedule(pruner, targets: Sequence[float], retrain: Callable[[int, float], object] | None = None,
                 log: Callable[[str], None] | None = print) -> list[dict]:
    """For each stage: ``pruner.prune(target)`` then ``retrain(stage, target)`` (which should call
    ``pruner.step(optimizer)`` each step). Returns one record per stage with the per-layer
    sparsity after retraining and whatever ``retrain`` returned (e.g. accuracy)."""
    records = []
    for i, t in enumerate(check_schedule(targets)):
        pruner.prune(t)
        result = retrain(i, t) if retrain is not None else None
        sp = pruner.sparsity()
        records.append({"stage": i, "target": t, "sparsity": sp, "result": result})
        if log is not None:
            log(f"stage {i}: target {t:.3f} -> overall Winograd sparsity {sp['overall']:.4f}; result {result}")
    return records
