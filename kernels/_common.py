"""Small helpers shared by the kernel launchers (no kernels here)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

TORCH_TO_TL = {
    torch.float32: tl.float32,
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
}
TL_NAME = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def interpreting() -> bool:
    """Whether Triton kernels run under the interpreter: the library's one check, asking Triton
    itself so that every spelling Triton accepts (1, true, on ...) means the same here."""
    return bool(triton.knobs.runtime.interpret)


def next_pow2(n: int, minimum: int = 16) -> int:
    return max(minimum, triton.next_power_of_2(max(int(n), 1)))


def upcast_dot(dtype: torch.dtype) -> bool:
    """The interpreter multiplies bf16 bit patterns as integers in tl.dot (triton#11584): upcast
    bf16 operands to fp32 there. The products of two bf16 values are exact in fp32, so this
    matches what a tensor core computes."""
    return interpreting() and dtype == torch.bfloat16


def dot_precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    if dtype == torch.float32 and allow_tf32:
        return "tf32"
    return "ieee"


def check_triton_device(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.device.type == "cpu" and not interpreting():
            raise RuntimeError(
                "backend='triton' on CPU tensors needs the Triton interpreter: set "
                "TRITON_INTERPRET=1 in the environment before importing tritonwino "
                "(or use backend='torch'/'auto')"
            )
