"""Stage 1 of the two-kernel path: padding, tiling and V = Bᵀ X B (+ optional Winograd-domain
ReLU) in one kernel, with the transform generated from the exact matrices (``codegen``).

Each program takes a (BLOCK_T tiles × BLOCK_C channels) block, loads the n² window elements of
each (masked: zero padding and partial tiles), runs the constant-folded separable transform in
fp32 and writes V as (P, C, T) — positions outermost, tiles contiguous — in the GEMM operand dtype.

Decomposed convolutions (``tritonwino.dwm``: stride 2, even and large kernels) run the generated
kernel's ``decomposed`` variant, which reads x in place: V channel c is the virtual channel
``piece·C_IN + c_in``, whose window element (a, b) of tile row ty is
``x[c_in, STRIDE·(ty·m + a) + oy − PAD_H, ...]`` with the piece's (oy, ox) from a small int32
table; rows/columns past the expanded input's extent HX × WX read zero, as in the torch twin
(``dwm.expand_input``).
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
    offsets: torch.Tensor | None = None,
    stride: int = 1,
    extent: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Launch stage 1 on x (N, C, H, W), any strides; returns V (P, C, T) in ``out_dtype``.
    ``wrap`` (e.g. ``torch.library.wrap_triton``) wraps the kernel before the launch.

    A decomposed convolution passes ``offsets`` (int32 (pieces, 2), contiguous, on x's device: per
    piece the (row, column) offset into the padded input), ``stride`` and ``extent`` = (HX, WX),
    the expanded input's size; V then has C = C_in · pieces channels."""
    check_triton_device(x)
    nb, c_in, h, w = x.shape
    th, tw = tiles
    n = spec.n
    t_total = nb * th * tw
    decomposed = offsets is not None
    if decomposed:
        check_triton_device(x, offsets)
        if offsets.dtype != torch.int32 or offsets.dim() != 2 or offsets.shape[1] != 2 or not offsets.is_contiguous():
            raise ValueError(f"offsets must be a contiguous int32 (pieces, 2) tensor, got {offsets.dtype} "
                             f"{tuple(offsets.shape)}")
        if extent is None or stride < 1:
            raise ValueError("a decomposed input transform needs the stride (>= 1) and the extent (HX, WX)")
        c = c_in * offsets.shape[0]
    else:
        c = c_in
    v = torch.empty((n * n, c, t_total), device=x.device, dtype=out_dtype)
    if t_total == 0 or c == 0:
        return v
    cfg = config or (interpreter_config(t_total, c) if interpreting() else gpu_config(n))
    grid = (triton.cdiv(t_total, cfg.block_t), triton.cdiv(c, cfg.block_c))
    kern = input_transform_kernel(spec, decomposed)
    if decomposed:
        head = (x, v, offsets, c, c_in, h, w, extent[0], extent[1], tw, th * tw, t_total, padding[0], padding[1],
                stride)
    else:
        head = (x, v, c, h, w, tw, th * tw, t_total, padding[0], padding[1])
    (wrap(kern) if wrap is not None else kern)[grid](
        *head,
        x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        BLOCK_T=cfg.block_t, BLOCK_C=cfg.block_c, WINOGRAD_RELU=winograd_relu,
        num_warps=cfg.num_warps,
    )
    return v


def compile_specs(tiles) -> list[CompileSpec]:
    """Every config this launcher can run, for ``tiles``: (name, TileSpec) pairs; each tile in the
    plain and in the decomposed variant (DWM pieces run as F(m, 2) or F(m, 3))."""
    specs = []
    for name, spec in tiles:
        for decomposed in (False, True):
            for in_dt in (torch.float32, torch.float16, torch.bfloat16):
                cfg = gpu_config(spec.n)
                ints = (("C", "C_IN", "H", "W", "HX", "WX", "TW", "TILES_PER_IMG", "T", "PAD_H", "PAD_W", "STRIDE")
                        if decomposed else ("C", "H", "W", "TW", "TILES_PER_IMG", "T", "PAD_H", "PAD_W"))
                sig = {
                    "x_ptr": f"*{TL_NAME[in_dt]}", "v_ptr": f"*{TL_NAME[in_dt]}",
                    **({"off_ptr": "*i32"} if decomposed else {}),
                    **{k: "i32" for k in (*ints, "stride_xn", "stride_xc", "stride_xh", "stride_xw")},
                    "BLOCK_T": "constexpr", "BLOCK_C": "constexpr", "WINOGRAD_RELU": "constexpr",
                }
                for relu in (False, True) if in_dt == torch.float16 else (False,):
                    specs.append(CompileSpec(
                        kernel="input_transform_dwm" if decomposed else "input_transform",
                        fn=input_transform_kernel(spec, decomposed), signature=sig,
                        constexprs={"BLOCK_T": cfg.block_t, "BLOCK_C": cfg.block_c, "WINOGRAD_RELU": relu},
                        num_warps=cfg.num_warps, num_stages=1,
                        label=f"{name}{' dwm' if decomposed else ''} {cfg.label} {TL_NAME[in_dt]}"
                              f"{' wrelu' if relu else ''}",
                    ))
    return specs
