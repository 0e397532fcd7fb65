"""Stage 2 (+3): the Winograd-domain multiply with the output transform fused into its epilogue.

Grid = (tile blocks, output-channel groups). A program owns BLOCK_T tiles × BLOCK_K output
channels and walks the n² positions in generated straight-line code: for each position it runs the
channel loop (the kept channels of the packed weight, or all of them for a dense Q) with
`tl.dot` into an fp32 accumulator, then folds that accumulator into the output transform at once
(``codegen.output_transform_program``: m row accumulators, m² output accumulators). The epilogue
adds the bias, applies ReLU and stores Y with any strides (NCHW or channels_last). M never exists
in memory.

Two sources of the left operand:

* ``source="v"`` (two-kernel path): gathers rows of V (P, C, T) written by ``input_transform``;
* ``source="x"`` (one-kernel path): recomputes V_p for the kept channels straight from X with the
  generated per-position transform (``codegen.position_v_program``), so V never exists either;
  the input transform is recomputed once per output-channel group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from ._common import TL_NAME, check_triton_device, dot_precision, interpreting, next_pow2, upcast_dot
from .codegen import TileSpec, fused_kernel
from .registry import CompileSpec


@dataclass(frozen=True)
class FusedConfig:
    block_t: int
    block_c: int
    num_warps: int = 4
    num_stages: int = 2

    @property
    def label(self) -> str:
        return f"T{self.block_t} C{self.block_c} w{self.num_warps} s{self.num_stages}"


# F(6, r) would need m² + m + 2 = 44 fp32 accumulator tiles; at the mma.sync floor of 4 registers
# per thread per tile that is 176 registers before operands and addresses, and every config tried
# spills (700-3000 bytes, sm_80 and sm_90). GPU launches stop at F(4, r): larger tiles run on the
# torch path on CUDA (``tritonwino._triton_path.check_gpu_tile``) and on the interpreter for tests.
GPU_MAX_M = 4

# ptxas, left alone, caps some of these kernels at 128 or 168 registers to fit more blocks per SM and
# spills 8-72 bytes to do it; an explicit .maxnreg of the hardware limit (not a tighter cap) lets it
# use what it needs. Every launch and every compile-check spec passes it.
MAXNREG = 255


def accumulators(m: int) -> int:
    """fp32 (BLOCK_T × BLOCK_K) accumulators live in the epilogue: m² outputs, the m row values of
    the current position row, the product being built and one held for its mirrored partner."""
    return m * m + m + 2


def gpu_configs(m: int, block_k: int, dtype: torch.dtype, precision: str, source: str) -> tuple[FusedConfig, ...]:
    """Candidates for the autotuner (compile-check proves each spill-free on sm_80 and sm_90).

    A tensor-core accumulator tile of 16 × 8 is spread over one warp (4 fp32 values per thread), so
    a (16 × BLOCK_K) block with one warp per 16 × 8 tile keeps each of the ``accumulators(m)`` at 4
    registers per thread: BLOCK_T = 16 and BLOCK_K / 8 warps. The two-kernel path's multiply with
    half operands at m <= 4 also offers the 32-tile block with twice the warps (same registers per
    thread, half the programs); the one-kernel kernel, 5-10x larger and slower to compile, has one."""
    warps = max(4, block_k // 8)
    if source == "x" and block_k == 16:
        # the one-kernel program also holds the recomputed transform's temporaries: with 4 warps
        # (the 16 × 16 accumulators replicated over 2 warp pairs) F(4,3) with the accurate points
        # needs more than 255 registers and spills 48 bytes on sm_80; 8 warps fit (255 / 243)
        warps = 8
    out = [FusedConfig(16, 16, warps, 2)]
    if source == "v" and dtype != torch.float32 and m <= 4 and block_k <= 32:
        out.append(FusedConfig(32, 16, 2 * warps, 2))
    return tuple(out)


# The one-kernel path recomputes the input transform per output-channel group; it is offered (and
# compile-checked) for half operands and tiles up to F(4, r), the case it exists for. fp32 layers
# and larger tiles take the two-kernel path.
ONE_KERNEL_DTYPES = (torch.float16, torch.bfloat16)
ONE_KERNEL_MAX_M = 4


def one_kernel_supported(m: int, dtype: torch.dtype) -> bool:
    """Whether the one-kernel path is offered for F(m, r) with ``dtype`` operands."""
    return dtype in ONE_KERNEL_DTYPES and m <= ONE_KERNEL_MAX_M


def dense_block_k(k: int) -> int:
    return 32 if k >= 32 else 16


def interpreter_config(t_total: int) -> FusedConfig:
    return FusedConfig(min(256, next_pow2(t_total)), 32, 4, 1)


def fused_multiply(
    src: torch.Tensor,
    spec: TileSpec,
    source: str,
    weight: tuple[torch.Tensor, ...],
    block_k: int,
    c: int,
    tiles: tuple[int, int],
    y: torch.Tensor,
    bias: torch.Tensor | None = None,
    relu: bool = False,
    padding: tuple[int, int] = (0, 0),
    allow_tf32: bool = False,
    winograd_relu: bool = False,
    config: FusedConfig | None = None,
    wrap=None,
    wide: bool = False,
) -> torch.Tensor:
    """Launch the fused multiply into the preallocated ``y`` (N, K, HO, WO), any strides.

    ``src`` is V (P, C, T) for ``source="v"`` or X (N, C, H, W) for ``source="x"``. ``weight`` is
    ``(values, indices, offsets)`` of a packed weight (group size ``block_k``) or ``(q,)`` with q
    (P, C, K) dense (output channels in blocks of ``block_k``), both in the operand dtype.
    ``padding`` and ``winograd_relu`` concern X only. ``wrap`` (e.g. ``torch.library.wrap_triton``)
    wraps the kernel before the launch. ``wide``: fp32 operands multiplied and summed in float64,
    the output transform in float64 too (the Triton interpreter only: no compiled kernel has it).
    """
    check_triton_device(src, y, *weight)
    nb, k, ho, wo = y.shape
    th, tw = tiles
    t_total = nb * th * tw
    sparse = len(weight) == 3
    if t_total == 0 or k == 0:
        return y
    operand = weight[0].dtype
    if wide and (operand != torch.float32 or not interpreting()):
        raise ValueError("the wide (float64) multiply takes fp32 operands and runs under the Triton interpreter only")
    precision = dot_precision(operand, allow_tf32 and not wide)
    cfg = config or interpreter_config(t_total)
    g = triton.cdiv(k, block_k)
    kern = fused_kernel(spec, source, "sparse" if sparse else "dense")
    args = [src, *weight, bias if bias is not None else y, y, c, k, t_total, g, ho, wo, tw, th * tw]
    if source == "x":
        args += [src.shape[2], src.shape[3], padding[0], padding[1], *src.stride()]
    args += [*y.stride(), bias.stride(0) if bias is not None else 0]
    extra = {"WINOGRAD_RELU": winograd_relu} if source == "x" else {}
    if wrap is not None:
        kern = wrap(kern)
    kern[(triton.cdiv(t_total, cfg.block_t), g)](
        *args, HAS_BIAS=bias is not None, RELU=relu, BLOCK_T=cfg.block_t, BLOCK_K=block_k, BLOCK_C=cfg.block_c,
        PRECISION=precision, UPCAST=upcast_dot(operand), ACC64=wide, **extra,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, maxnreg=MAXNREG,
    )
    return y


def choose_config(m: int, block_k: int, dtype: torch.dtype, precision: str, source: str, t_total: int
                  ) -> FusedConfig:
    """The default launch config (the autotuner may pick another candidate on a GPU)."""
    if interpreting():
        return interpreter_config(t_total)
    return gpu_configs(m, block_k, dtype, precision, source)[0]


def compile_specs(tiles) -> list[CompileSpec]:
    """Every config this launcher can run, for ``tiles``: (name, TileSpec) pairs."""
    specs = []
    all_dts = ((torch.float16, "ieee"), (torch.bfloat16, "ieee"), (torch.float32, "tf32"), (torch.float32, "ieee"))
    for name, spec in tiles:
        for source, weight in (("v", "sparse"), ("x", "sparse"), ("v", "dense")):
            # other point sets generate the same code shape: fp16 is enough for them; the one-kernel
            # path exists where one_kernel_supported() says so
            dts = all_dts if "accurate" not in name else all_dts[:1]
            if source == "x":
                dts = tuple(d for d in dts if one_kernel_supported(spec.m, d[0]))
            gks = (16, 32, 64) if weight == "sparse" else (32,)
            for (dt, prec), gk in ((d, gk) for d in dts for gk in gks):
                for cfg in gpu_configs(spec.m, gk, dt, prec, source):
                    sig = {"x_ptr" if source == "x" else "v_ptr": f"*{TL_NAME[dt]}", "w_ptr": f"*{TL_NAME[dt]}"}
                    if weight == "sparse":
                        sig.update({"idx_ptr": "*i16", "off_ptr": "*i32"})
                    sig.update({"bias_ptr": f"*{TL_NAME[dt]}", "y_ptr": f"*{TL_NAME[dt]}"})
                    ints = ["C", "K", "T", "G", "HO", "WO", "TW", "TILES_PER_IMG"]
                    if source == "x":
                        ints += ["H", "W", "PAD_H", "PAD_W", "stride_xn", "stride_xc", "stride_xh", "stride_xw"]
                    ints += ["stride_yn", "stride_yk", "stride_yh", "stride_yw", "stride_b"]
                    sig.update({a: "i32" for a in ints})
                    consts = {"HAS_BIAS": True, "RELU": True, "BLOCK_T": cfg.block_t, "BLOCK_K": gk,
                              "BLOCK_C": cfg.block_c, "PRECISION": prec, "UPCAST": False, "ACC64": False}
                    if source == "x":
                        consts["WINOGRAD_RELU"] = False
                    sig.update({a: "constexpr" for a in consts})
                    specs.append(CompileSpec(
                        kernel=f"fused_{source}_{weight}", fn=fused_kernel(spec, source, weight), signature=sig,
                        constexprs=consts, num_warps=cfg.num_warps, num_stages=cfg.num_stages, maxnreg=MAXNREG,
                        label=f"{name} {cfg.label} K{gk} {TL_NAME[dt]}{'/tf32' if prec == 'tf32' else ''}",
                        expects_mma=not (dt == torch.float32 and prec == "ieee"),
                    ))
    return specs
