"""Stage 1 of the two-kernel path: padding, tiling and V = Bᵀ X B (+ optional Winograd-domain
ReLU) in one kernel, with the transform generated from the exact matrices (``codegen``).

Each program takes a (BLOCK_T tiles × BLOCK_C channels) block, loads the n² window elements of
each (masked: zero padding and partial tiles), runs the constant-folded separable transform in
fp32 and writes V as (P, C, T) — positions outermost, tiles contiguous — in the GEMM operand dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from ._common import TL_NAME, check_triton_device, interpreting, next_pow2
from .codegen import TileSpec, input_transform_kernel
from .registry import CompileSpec


@dataclass(frozen=True)
class InputConfig:
    block_t: int
    block_c: int
    num_warps: int = 4

    @property
    def label(self) -> str:
        return f"T{self.block_t} C{self.block_c} w{self.num_warps}"


def gpu_config(n: int) -> InputConfig:
    """About two values of each of the ~n² live transform variables per thread for n <= 6, one for
    n = 8 (compile-check proves these spill-free on sm_80 and sm_90)."""
    return InputConfig(32, 8, 4) if n <= 6 else InputConfig(32, 4, 4)


def interpreter_config(t_total: int, c: int) -> InputConfig:
    """Large blocks: the interpreter's cost is per program and per op, not per element."""
    return InputConfig(min(256, next_pow2(t_total)), min(16, next_pow2(c, 1)), 4)


def input_transform(
    x: torch.Tensor,
    spec: TileSpec,
    padding: tuple[int, int],
    tiles: tuple[int, int],
    out_dtype: torch.dtype,
    winograd_relu: bool = False,
    config: InputConfig | None = None,
    wrap=None,
) -> torch.Tensor:
    """Launch stage 1 on x (N, C, H, W), any strides; returns V (P, C, T) in ``out_dtype``.
    ``wrap`` (e.g. ``torch.library.wrap_triton``) wraps the kernel before the launch."""
    check_triton_device(x)
    nb, c, h, w = x.shape
    th, tw = tiles
    n = spec.n
    t_total = nb * th * tw
    v = torch.empty((n * n, c, t_total), device=x.device, dtype=out_dtype)
    if t_total == 0 or c == 0:
        return v
    cfg = config or (interpreter_config(t_total, c) if interpreting() else gpu_config(n))
    grid = (triton.cdiv(t_total, cfg.block_t), triton.cdiv(c, cfg.block_c))
    kern = input_transform_kernel(spec)
    (wrap(kern) if wrap is not None else kern)[grid](
        x, v, c, h, w, tw, th * tw, t_total, padding[0], padding[1],
        x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        BLOCK_T=cfg.block_t, BLOCK_C=cfg.block_c, WINOGRAD_RELU=winograd_relu,
        num_warps=cfg.num_warps,
    )
    return v


def compile_specs(tiles) -> list[CompileSpec]:
    """Every config this launcher can run, for ``tiles``: (name, TileSpec) pairs."""
    specs = []
    for name, spec in tiles:
        for in_dt in (torch.float32, torch.float16, torch.bfloat16):
            cfg = gpu_config(spec.n)
            sig = {
                "x_ptr": f"*{TL_NAME[in_dt]}", "v_ptr": f"*{TL_NAME[in_dt]}",
                **{k: "i32" for k in ("C", "H", "W", "TW", "TILES_PER_IMG", "T", "PAD_H", "PAD_W",
                                      "stride_xn", "stride_xc", "stride_xh", "stride_xw")},
                "BLOCK_T": "constexpr", "BLOCK_C": "constexpr", "WINOGRAD_RELU": "constexpr",
            }
            for relu in (False, True) if in_dt == torch.float16 else (False,):
                specs.append(CompileSpec(
                    kernel="input_transform", fn=input_transform_kernel(spec), signature=sig,
                    constexprs={"BLOCK_T": cfg.block_t, "BLOCK_C": cfg.block_c, "WINOGRAD_RELU": relu},
                    num_warps=cfg.num_warps, num_stages=1,
                    label=f"{name} {cfg.label} {TL_NAME[in_dt]}"
                          f"{' wrelu' if relu else ''}",
                ))
    return specs
