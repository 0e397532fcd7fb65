"""Argument validation shared by every public entry point (one wording for one mistake), and the
small shape/dtype/layout rules every path applies the same way."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable

import torch

from . import dwm

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def pair(v: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    if isinstance(v, bool):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    if isinstance(v, int):
        v = (v, v)
    if not isinstance(v, tuple | list) or len(v) != 2 or not all(
        isinstance(e, int) and not isinstance(e, bool) for e in v
    ):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return int(v[0]), int(v[1])


def check_padding(padding: object) -> tuple[int, int]:
    if isinstance(padding, str):
        raise ValueError(f"padding={padding!r}: string padding modes are not supported; give ints")
    ph, pw = pair(padding, "padding")  # type: ignore[arg-type]
    if ph < 0 or pw < 0:
        raise ValueError(f"padding must be >= 0, got {(ph, pw)}")
    if max(ph, pw) > MAX_PADDING:
        raise ValueError(f"padding {(ph, pw)} is too large: at most {MAX_PADDING} per side "
                         "(the output alone would not fit in memory)")
    return ph, pw


# Sizes are int64 in the op schemas and int32 in the kernels' index arithmetic; a padding beyond
# this cannot give an output that fits in memory anyway.
MAX_PADDING = 2**31 - 1


def check_conv_unsupported(stride: object = 1, dilation: object = 1, groups: int = 1) -> int:
    """Refuse what no path runs; returns the stride (1 or 2, the same along H and W)."""
    sh, sw = pair(stride, "stride")  # type: ignore[arg-type]
    if sh != sw or sh not in dwm.STRIDES:
        raise ValueError(f"stride={stride!r} is not supported: Winograd convolution here runs strides "
                         f"{dwm.STRIDES} (stride 2 by the decomposable Winograd method), equal along H and W")
    if pair(dilation, "dilation") != (1, 1):  # type: ignore[arg-type]
        raise ValueError(f"dilation={dilation!r} is not supported: Winograd convolution needs dilation 1")
    if groups != 1:
        raise ValueError(f"groups={groups!r} is not supported: only groups=1 is implemented")
    return sh


def check_input(x: torch.Tensor, channels: int | None = None, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} has dtype {x.dtype}; Winograd convolution needs a floating dtype "
            "(float32, float16, bfloat16 or float64)"
        )
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{name} has {x.shape[1]} channels (shape {tuple(x.shape)}) but the weight expects {channels}"
        )


def check_weight(weight: torch.Tensor) -> tuple[int, int, int]:
    """Validate a spatial (K, C, r, r) weight; return (K, C, r)."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 4:
        raise ValueError(f"weight must be 4-D (K, C, r, r), got shape {tuple(weight.shape)}")
    if weight.dtype not in FLOAT_DTYPES:
        raise TypeError(f"weight has dtype {weight.dtype}; a floating dtype is required")
    k, c, kh, kw = weight.shape
    if kh != kw:
        raise ValueError(f"kernel size {kh}x{kw} is not supported: Winograd here needs a square kernel")
    return k, c, kh


def check_same_device(**tensors: torch.Tensor | None) -> torch.device:
    devs = {name: t.device for name, t in tensors.items() if t is not None}
    first = next(iter(devs.values()))
    if any(d != first for d in devs.values()):
        desc = ", ".join(f"{n} on {d}" for n, d in devs.items())
        raise ValueError(f"all tensors must be on the same device: {desc}")
    return first


def check_block(block: object) -> tuple[int, int]:
    """The one granularity rule: ``(bk, bc)`` positive ints ((1, 1) element, (bk, 1) vector,
    (bk, bc) block); a bare int ``bk`` means ``(bk, 1)``. What the sparse kernel can run on top of
    this is ``tritonwino.packing.check_kernel_block``."""
    if isinstance(block, int) and not isinstance(block, bool):
        block = (block, 1)
    if (not isinstance(block, tuple | list) or len(block) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) for b in block)):
        raise ValueError(f"block must be a pair of ints (bk, bc), got {block!r}")
    bk, bc = int(block[0]), int(block[1])
    if bk < 1 or bc < 1:
        raise ValueError(f"block sizes must be >= 1, got {(bk, bc)}")
    return bk, bc


def check_bias(bias: torch.Tensor | None, k: int) -> None:
    if bias is None:
        return
    if not isinstance(bias, torch.Tensor):
        raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
    if bias.shape != (k,):
        raise ValueError(f"bias must have shape ({k},), got {tuple(bias.shape)}")
    if bias.dtype not in FLOAT_DTYPES:
        raise TypeError(f"bias has dtype {bias.dtype}; a floating dtype is required")


def output_size(h: int, w: int, r: int, padding: tuple[int, int]) -> tuple[int, int]:
    ho, wo = h + 2 * padding[0] - r + 1, w + 2 * padding[1] - r + 1
    if ho < 1 or wo < 1:
        raise ValueError(
            f"input {h}x{w} with padding {padding} is smaller than the {r}x{r} kernel: "
            f"the output would be {ho}x{wo}"
        )
    return ho, wo


def conv_output_size(h: int, w: int, r: int, padding: tuple[int, int],
                     decomposition: dwm.Decomposition | None) -> tuple[int, int]:
    """Output size of a plain F(m, r) convolution (``decomposition`` None) or of the decomposed
    k×k stride-s one (``F.conv2d``'s formula)."""
    if decomposition is None:
        return output_size(h, w, r, padding)
    return dwm.output_size(h, w, decomposition.kernel, decomposition.stride, padding)


def real_channels(virtual: int, decomposition: dwm.Decomposition | None) -> int:
    """Input channels of a convolution whose GEMM reads ``virtual`` channels (C·pieces when decomposed)."""
    if decomposition is None:
        return virtual
    if virtual % decomposition.pieces:
        raise ValueError(f"{virtual} Winograd-domain channels do not split into the {decomposition.pieces} pieces "
                         f"of a {decomposition.kernel}x{decomposition.kernel} stride-{decomposition.stride} kernel")
    return virtual // decomposition.pieces


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """The layout an output of ``x`` is written in: channels_last in gives channels_last out (a
    tensor that is both, e.g. with H = W = 1, counts as NCHW), as ``F.conv2d`` does."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def empty_output(x: torch.Tensor, k: int, ho: int, wo: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialised (N, K, HO, WO) output in ``x``'s device and layout and ``dtype`` (default x's)."""
    return torch.empty((x.shape[0], k, ho, wo), dtype=dtype or x.dtype, device=x.device,
                       memory_format=memory_format_of(x))


def wide_multiply(split_operands: bool, dtype: torch.dtype) -> bool:
    """What ``split_operands`` means for a float32 input: the Winograd-domain multiply, its channel
    sums and the output transform in float64 (half inputs split into hi + lo pairs instead)."""
    return bool(split_operands) and dtype == torch.float32


def operand_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the Winograd-domain GEMM operands: half types stay half, everything else fp32 or fp64.

    The transforms and the accumulation always run in fp32 (fp64 for fp64 inputs); only the
    stored V and Q are rounded to the input's half type, as a tensor-core kernel must.
    """
    if dtype in (torch.float16, torch.bfloat16):
        return dtype
    if dtype == torch.float64:
        return torch.float64
    return torch.float32


def accum_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _computes_plain_conv2d(conv: torch.nn.Conv2d) -> str | None:
    """Why ``conv`` might not compute ``F.conv2d(x, conv.weight, conv.bias, ...)`` (None if it
    provably does): its class (or the instance) overrides ``forward`` / ``_conv_forward`` (weight
    standardisation, padding inside forward, ...), or a weight_norm / spectral_norm forward
    pre-hook recomputes the weight on every call. A parametrization (torch.nn.utils.parametrize)
    is fine: ``conv.weight`` is then the weight the forward uses."""
    cls = type(conv)
    for name in ("forward", "_conv_forward"):
        if getattr(cls, name) is not getattr(torch.nn.Conv2d, name) or name in vars(conv):
            return (f"{cls.__name__} overrides {name}, so it may compute something other than F.conv2d with its "
                    "weight (e.g. weight standardisation, padding in forward): left as it is")
    for hook in conv._forward_pre_hooks.values():
        if type(hook).__name__ in ("WeightNorm", "SpectralNorm"):
            return (f"its weight is recomputed by a {type(hook).__name__} forward pre-hook: remove it first "
                    "(torch.nn.utils.remove_weight_norm / remove_spectral_norm) or use torch.nn.utils.parametrizations")
    return None


def conv_padding(conv: torch.nn.Conv2d) -> tuple[int, int]:
    """``conv.padding`` as ints: ``"valid"`` is 0 and ``"same"`` is k // 2 (exact for the odd
    kernels, stride 1 and dilation 1 that Winograd runs)."""
    if conv.padding == "valid":
        return 0, 0
    if conv.padding == "same":
        kh, kw = conv.kernel_size
        return kh // 2, kw // 2
    return pair(tuple(conv.padding), "padding")


def conv_ineligible_reason(conv: torch.nn.Conv2d, r: int | None = None) -> str | None:
    """Why an ``nn.Conv2d`` cannot run as a Winograd convolution (None if it can): the one
    eligibility rule shared by conversion and pruning. ``r`` additionally requires that kernel size.

    Eligible: a square kernel > 1, stride 1 or 2 (stride 2, even kernels and kernels larger than 3
    run by the decomposable Winograd method, ``tritonwino.dwm``), dilation 1, groups 1, zero
    padding (ints, ``"same"`` for odd kernels, or ``"valid"``), and a module that provably computes
    ``F.conv2d`` with its weight (``nn.Conv2d.forward`` and ``_conv_forward`` not overridden)."""
    kh, kw = conv.kernel_size
    if kh != kw:
        return f"kernel {kh}x{kw} (needs a square kernel)"
    if kh == 1:
        return "1x1 kernel (Winograd gives no saving)"
    if r is not None and kh != r:
        return f"kernel {kh}x{kw} is not {r}x{r}"
    sh, sw = conv.stride
    if sh != sw or sh not in dwm.STRIDES:
        return f"stride {tuple(conv.stride)} (Winograd here needs stride 1 or 2, equal along H and W)"
    if dwm.decomposition(kh, sh).r == 1:
        return f"kernel {kh}x{kw} with stride {sh}: every piece is 1x1 (Winograd gives no saving)"
    if tuple(conv.dilation) != (1, 1):
        return f"dilation {tuple(conv.dilation)}"
    if conv.groups != 1:
        return f"groups={conv.groups}"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} (Winograd here pads with zeros)"
    if isinstance(conv.padding, str) and conv.padding not in ("same", "valid"):
        return f"padding {conv.padding!r}"
    if conv.padding == "same" and kh % 2 == 0:
        # torch pads an even kernel's "same" asymmetrically; the paths here pad symmetrically
        return f"padding 'same' with the even kernel {kh}x{kw} (asymmetric padding)"
    if conv.weight.dtype not in FLOAT_DTYPES:
        return f"weight dtype {conv.weight.dtype}"
    return _computes_plain_conv2d(conv)


_NAME_PARAMS = {"name", "fqn", "n", "layer_name", "qualname", "path", "key"}
_MODULE_PARAMS = {"module", "mod", "m", "conv", "layer", "submodule"}


def module_filter(fn: object, where: str) -> Callable[[torch.nn.Module, str], bool] | None:
    """``fn`` as a ``filter(module, name) -> bool``: the one argument order of every filter in the
    library (as torchao's ``filter_fn(module, fqn)``). A filter written for the older
    ``(name, module)`` order, recognised by its parameter names or annotations (``lambda name,
    mod: ...``), still works for one release, with a DeprecationWarning."""
    if fn is None:
        return None
    if not callable(fn):
        raise TypeError(f"{where} must be callable as {where}(module, name) -> bool, got {type(fn).__name__}")
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:2]
    except (TypeError, ValueError):  # builtins without a signature: take them as (module, name)
        params = []
    if len(params) == 2:
        first, second = params
        ann = str(first.annotation)
        old = (first.name in _NAME_PARAMS or ann in ("str", "<class 'str'>")
               or (second.name in _MODULE_PARAMS and first.name not in _MODULE_PARAMS))
        if old:
            warnings.warn(f"{where}({first.name}, {second.name}): filters now take (module, name), as torchao's "
                          f"filter_fn(module, fqn); the (name, module) order is accepted until the next release",
                          DeprecationWarning, stacklevel=3)
            return lambda module, name: bool(fn(name, module))
    return lambda module, name: bool(fn(module, name))


BACKENDS = ("auto", "triton", "torch", "cpu")


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


# Largest input tile n = m + r - 1 that gives a usable result, per dtype of the Winograd-domain
# operands (measured, bench/accuracy.py and tests/test_no_silent_errors.py): fp16/bf16 V and Q lose
# every digit from n = 10 (F(6,5), F(8,3), F(4,7): relative error 0.5 to 10^3); fp32 from n = 14
# (relative error ~1); float64 up to transforms.MAX_TILE.
MAX_TILE_FOR_DTYPE = {torch.float16: 8, torch.bfloat16: 8, torch.float32: 12, torch.float64: 16}


def check_tile_dtype(m: int, r: int, *dtypes: torch.dtype) -> None:
    """Refuse (ValueError) F(m, r) with operands of a dtype whose rounding makes that tile's result
    garbage (``MAX_TILE_FOR_DTYPE``); ``dtypes`` are the input's and any stored weight's dtype."""
    n = m + r - 1
    for dtype in dtypes:
        limit = MAX_TILE_FOR_DTYPE.get(dtype)
        if limit is not None and n > limit:
            ok = [d for d, lim in MAX_TILE_FOR_DTYPE.items() if lim >= n]
            names = ", ".join(str(d).removeprefix("torch.") for d in ok) or "none"
            raise ValueError(
                f"F({m},{r}) (input tile n = {n}) is not supported in {str(dtype).removeprefix('torch.')}: "
                f"its Winograd-domain values lose every significant digit at this precision (results would be "
                f"garbage). Use a dtype that supports n = {n} ({names}), or a smaller tile with "
                f"n = m + r - 1 <= {limit} (e.g. F({max(1, limit - r + 1)},{r}))"
            )
