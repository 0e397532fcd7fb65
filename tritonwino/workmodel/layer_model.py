"""Count the Triton paths of one convolution layer and put them through the roofline.

Used by ``bench/work_model.py``. Every launch runs under the interpreter with the launch config a
GPU would use (not the interpreter's large blocks), so the counts are those of the GPU program.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .counter import LaunchCount, count_work

__all__ = ["PATHS", "TITLE", "LayerCase", "count_path", "ideal_bytes", "layer_inputs"]

PATHS = ("one-kernel", "two-kernel", "dense")
TITLE = "model, not a measurement"


@dataclass(frozen=True)
class LayerCase:
    """One layer shape and sparsity: N×C×H×W input, K outputs, 3×3 (r×r) kernel, padding 1."""

    n: int
    c: int
    k: int
    h: int
    w: int
    sparsity: float
    block: tuple[int, int] = (32, 1)
    m: int = 4
    r: int = 3
    pad: int = 1
    dtype: str = "float16"

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def label(self) -> str:
        return f"{self.c}x{self.k}x{self.h}x{self.w} N={self.n}"


def layer_inputs(case: LayerCase, seed: int = 0):
    """x, the packed weight (``testing.random_pruned_q``: each (group, channel, position) kept with
    probability 1 − sparsity at the case's block granularity) and the dense Q (P, C, K)."""
    from tritonwino.packing import pack_winograd_weight
    from tritonwino.testing import random_pruned_q

    gen = torch.Generator().manual_seed(seed)
    n = case.m + case.r - 1
    q = random_pruned_q(case.k, case.c, case.m, case.r, case.sparsity, case.block, generator=gen)
    packed = pack_winograd_weight(q, case.block, r=case.r, dtype=case.torch_dtype)
    x = torch.randn(case.n, case.c, case.h, case.w, generator=gen).to(case.torch_dtype)
    q_pck = q.permute(2, 3, 1, 0).reshape(n * n, case.c, case.k).to(case.torch_dtype).contiguous()
    return x, packed, q_pck


def count_path(case: LayerCase, path: str, x=None, packed=None, q_pck=None) -> list[LaunchCount]:
    """The launches of ``path`` on ``case``, counted under the interpreter with GPU launch configs."""
    from tritonwino import _checks, _triton_path
    from tritonwino.kernels._common import dot_precision
    from tritonwino.kernels.fused_multiply import dense_block_k, fused_multiply, gpu_configs
    from tritonwino.kernels.input_transform import gpu_config, input_transform
    from tritonwino.reference import tile_grid

    if x is None:
        x, packed, q_pck = layer_inputs(case)
    pad = (case.pad, case.pad)
    prec = dot_precision(_checks.operand_dtype(x.dtype), False)
    with torch.no_grad(), count_work() as launches:
        if path == "dense":
            spec = _triton_path.tile_spec(case.m, case.r, packed.points_fractions())
            ho, wo = _checks.output_size(case.h, case.w, case.r, pad)
            tiles = tile_grid(ho, wo, case.m)
            v = input_transform(x, spec, pad, tiles, x.dtype, config=gpu_config(spec.n))
            y = torch.empty(case.n, case.k, ho, wo, dtype=x.dtype)
            bk = dense_block_k(case.k)
            fused_multiply(v, spec, "v", (q_pck,), bk, case.c, tiles, y, config=gpu_configs(case.m, bk, x.dtype, prec,
                                                                                           "v")[0])
        else:
            call = _triton_path.SparseCall(x, packed, packed.values_as(x.dtype), None, pad, False, False, False)
            src = "v" if path == "two-kernel" else "x"
            cfg = gpu_configs(case.m, packed.group_k, x.dtype, prec, src)[0]
            call.run(path, cfg, gpu_config(case.m + case.r - 1))
    return list(launches)


def ideal_bytes(case: LayerCase, packed) -> int:
    """X + packed W (values, indices, offsets) + Y: what any implementation must move once."""
    es = torch.finfo(case.torch_dtype).bits // 8
    ho, wo = case.h + 2 * case.pad - case.r + 1, case.w + 2 * case.pad - case.r + 1
    return es * (case.n * case.c * case.h * case.w + case.n * case.k * ho * wo) + packed.nbytes
