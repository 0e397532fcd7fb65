"""What `tritonwino compile-check` compiles: every kernel with every config it can launch.

Each kernel module exposes ``compile_specs() -> list[CompileSpec]``; ``all_compile_specs()``
collects them. A spec is exactly what ``triton.compile(ASTSource(fn, signature, constexprs))``
needs plus the launch options, so the AOT gate compiles what the launcher launches.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# Modules under tritonwino.kernels that hold @triton.jit kernels and a compile_specs() function.
KERNEL_MODULES = (
    "input_transform",
    "fused_multiply",
    "adder_conv",
    "winograd_adder",
    "adder_output_transform",
)


@dataclass(frozen=True)
class CompileSpec:
    kernel: str                    # human name, e.g. "winograd_gemm"
    fn: Any                        # the @triton.jit function
    signature: dict[str, str]      # arg name -> triton type ("*fp32", "i32", "constexpr", ...)
    constexprs: dict[str, Any]     # constexpr arg name -> value
    num_warps: int = 4
    num_stages: int = 2
    maxnreg: int | None = None     # the launch's .maxnreg (None: ptxas chooses)
    label: str = ""                # config label shown in the table, e.g. "T64 K64 C32 fp16"
    expects_mma: bool = False      # whether tensor-core instructions must appear
    extra: dict[str, Any] = field(default_factory=dict)


def all_compile_specs(tiles: Sequence[tuple[str, Any]]) -> list[CompileSpec]:
    """Every shipped config of every kernel module, generated for ``tiles``: (name, ``TileSpec``)
    pairs (the Python layer owns the matrices: ``tritonwino._triton_path.shipped_tiles()``)."""
    specs: list[CompileSpec] = []
    for name in KERNEL_MODULES:
        try:
            mod = importlib.import_module(f"tritonwino.kernels.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"tritonwino.kernels.{name}":
                continue  # kernel module not written yet
            raise
        specs.extend(mod.compile_specs(tiles))
    return specs
