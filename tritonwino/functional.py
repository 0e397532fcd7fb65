"""Functional forms of the dense and sparse Winograd convolution (re-exported by
``tritonwino.sparse_conv``).

``backend``: ``"auto"`` (Triton kernels for CUDA tensors; the fused C++ kernels of
``tritonwino._cpu_path`` for float32 CPU tensors, the torch path for other CPU dtypes or where no
C++ compiler is found), ``"triton"`` (force the kernels; on CPU tensors this needs the Triton
interpreter, enabled with ``TRITON_INTERPRET=1`` before import), ``"cpu"`` (force the C++ kernels:
float32 CPU tensors, inference only), ``"torch"`` (the pure-torch path of ``tritonwino.reference``).
The C++ kernels run plain F(m, r) convolutions only: a Winograd-ReLU or decomposed (stride 2,
even or large kernel) call that resolves to ``"cpu"`` runs the torch path (``ops.cpu_runs``).

Every inference call goes through one ``tritonwino::`` custom op (``tritonwino.ops``), the same
node a converted model's layers produce, so ``torch.compile(fullgraph=True)`` sees one opaque
node per convolution. A call that needs gradients runs the differentiable torch path directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _checks, _cpu_path, dwm, ops, reference
from .kernels.fused_multiply import GPU_MAX_M
from .packing import PackedWinogradWeight, check_decomposition, packed_from_arrays
from .transforms import normalize_points, tile_size

__all__ = ["BACKENDS", "resolve_backend", "sparse_winograd_conv2d", "winograd_conv2d", "winograd_conv2d_pck"]

BACKENDS = _checks.BACKENDS


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def resolve_backend(backend: str, x: torch.Tensor, *params: torch.Tensor | None, m: int | None = None,
                    split_operands: bool = False) -> str:
    """The path to run: ``"torch"``, ``"triton"`` or ``"cpu"``.

    The Triton and C++ kernels have no backward, so when autograd needs gradients ``"auto"`` takes
    the differentiable torch path and ``"triton"`` / ``"cpu"`` refuse instead of silently returning
    a result without a gradient.

    Args:
        backend: ``"auto"``, ``"triton"``, ``"cpu"`` or ``"torch"``.
        x: the input (its device decides ``"auto"``).
        *params: other tensors whose gradients autograd may need (weight, bias, packed values).
        m: the output tile side, when the call is a Winograd convolution: ``"auto"`` on a GPU runs
            tiles with m > ``GPU_MAX_M`` (which have no spill-free kernel) on the torch path.
        split_operands: the call's; with a float32 input ``"auto"`` on a GPU takes the torch path,
            the only one with a float64 multiply there.
    """
    _checks.check_backend(backend)
    needs_grad = _needs_grad(x, *params)
    if backend == "auto":
        if needs_grad:
            return "torch"
        if x.is_cuda:
            # _checks.wide_multiply, short-circuited: x's dtype is read only for a split call
            wide = bool(split_operands) and _checks.wide_multiply(True, x.dtype)
            return "triton" if (m is None or m <= GPU_MAX_M) and not wide else "torch"
        return "cpu" if _cpu_path.runs(x) else "torch"
    if backend in ("triton", "cpu") and needs_grad:
        raise RuntimeError(f"backend={backend!r} is inference-only (no backward): run under torch.no_grad() / "
                           "inference_mode, or use backend='torch' (or 'auto') to train")
    if backend == "cpu":
        if x.device.type != "cpu":
            raise ValueError(f"backend='cpu' runs CPU tensors, got x on {x.device}")
        _cpu_path.check_cpu_dtype(x.dtype)
        reason = None if torch.compiler.is_compiling() else _cpu_path.unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"backend='cpu' is unavailable: {reason}")
    return backend


def winograd_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    padding: int | tuple[int, int] = 0,
    m: int = 4,
    backend: str = "auto",
    *,
    points: Sequence[object] | None = None,
    stride: int | tuple[int, int] = 1,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    relu: bool = False,
    allow_tf32: bool = False,
    winograd_relu: bool = False,
    decompose: bool | None = None,
    split_operands: bool = False,
) -> torch.Tensor:
    """Dense Winograd convolution: F(m×m, r×r) with r taken from ``weight``, or, for stride 2 and
    kernels larger than 3×3, the decomposable Winograd method (``tritonwino.dwm``): the kernel
    split into ≤3×3 stride-1 pieces that run as one F(m, r_piece) convolution.

    Same result as ``F.conv2d(x, weight, bias, stride, padding)`` up to the tile's rounding error
    (``Q = G W Gᵀ`` is computed in float64 on every call, then cast); with ``winograd_relu`` it is
    Liu et al.'s ``Aᵀ[Q ⊙ ReLU(Bᵀ X B)]A`` instead.

    Args:
        x: input (N, C, H, W), float32/float16/bfloat16 (float64 on the torch path), NCHW or
            channels_last (the output follows).
        weight: spatial weight (K, C, k, k), square.
        bias: optional (K,).
        padding: int or (ph, pw), zero padding.
        m: output tile side; F(m, r) uses n = m + r − 1 input tiles (r the piece size when decomposed).
        backend: ``"auto"``, ``"triton"``, ``"cpu"`` or ``"torch"`` (module docstring).
        points: the n − 1 finite interpolation points (default: the library's standard set).
        stride: 1 or 2 (2 runs decomposed).
        dilation, groups: only 1 and 1 are supported (others raise ValueError).
        relu: apply a ReLU to the output (fused into the output transform on Triton).
        allow_tf32: let fp32 GEMMs use tf32 tensor cores on a GPU.
        winograd_relu: ReLU on the transformed input tiles, ``ReLU(Bᵀ X B)`` (Liu et al. 2018; fused
            into the input transform on Triton). Not a spatial convolution: the result depends on
            the tile grid.
        decompose: ``None`` (auto: decomposed for stride 2, even kernels and kernels > 3),
            ``True`` or ``False`` (a stride-1 kernel as one F(m, k) tile); see ``tritonwino.dwm.plan``.
        split_operands: for float16/bfloat16 inputs, carry V and Q as half hi + lo pairs and
            multiply hi·hi + lo·hi + hi·lo (3× the Winograd-domain products; on Triton three
            launches into fp32 outputs): the error of the fp16 operand rounding is gone (F(4,3)
            accurate 4.2× → 1.0× a direct convolution's, F(6,3) 15.4× → 1.0×; README, Accuracy).
            For float32 inputs: the Winograd-domain products, their channel sums and the output
            transform in float64 (fp32 products are exact there; F(6,3) 12.6× → 8.2× on the torch
            path, 10.5× → 4.7× on Triton; the multiply then costs what a float64 GEMM costs).
            The compiled Triton kernels have no float64 accumulator: on a GPU ``"auto"`` takes
            the torch path for it and ``"triton"`` is refused; the C++ CPU kernels hand it to the
            torch path. No effect for float64 inputs.

    Returns:
        (N, K, HO, WO) in ``x``'s dtype and layout.

    Example:
        >>> x, w = torch.randn(1, 8, 10, 10), torch.randn(16, 8, 3, 3)
        >>> y = winograd_conv2d(x, w, padding=1, m=4, backend="torch")
        >>> bool(torch.allclose(y, torch.nn.functional.conv2d(x, w, padding=1), atol=1e-4))
        True
        >>> w7 = torch.randn(16, 8, 7, 7)  # a ResNet-style 7x7 stride-2 stem: nine 3x3 pieces
        >>> y = winograd_conv2d(x, w7, padding=3, stride=2, backend="torch")
        >>> bool(torch.allclose(y, torch.nn.functional.conv2d(x, w7, stride=2, padding=3), atol=1e-3))
        True
    """
    s = _checks.check_conv_unsupported(stride, dilation, groups)
    k, c, ks = _checks.check_weight(weight)
    _checks.check_input(x, c)
    _checks.check_bias(bias, k)
    _checks.check_same_device(x=x, weight=weight, bias=bias)
    pad = _checks.check_padding(padding)
    d = dwm.plan(ks, s, decompose)
    r = ks if d is None else d.r
    try:
        pts = normalize_points(m, r, points)
    except ValueError as e:
        if d is None or points is None or isinstance(points, str):
            raise
        raise ValueError(f"{e}. This {ks}x{ks} stride-{s} kernel runs decomposed into F({m},{r}) pieces "
                         f"(tritonwino.dwm); points for a single F({m},{ks}) tile need decompose=False") from None
    be = resolve_backend(backend, x, weight, bias, m=m, split_operands=split_operands)
    if _needs_grad(x, weight, bias):
        return reference.winograd_conv2d(x, weight, bias, pad, m, pts, relu, winograd_relu=winograd_relu,
                                         stride=s, decompose=decompose, split_operands=split_operands)
    n = tile_size(m, r)
    w = weight.detach() if d is None else dwm.expand_weight(weight.detach(), d)
    cv = w.shape[1]
    q = reference.winograd_weight(w, m, pts)  # float64, then cast once
    # cast straight from float64 to what the GEMM reads (no double rounding through fp32); a split
    # keeps fp32 so that Q has a lo part
    q_dtype = _checks.accum_dtype(x.dtype) if split_operands else _checks.operand_dtype(x.dtype)
    q_pck = q.permute(2, 3, 1, 0).reshape(n * n, cv, k).to(q_dtype).contiguous()
    return ops.winograd_conv2d_pck_call(x, q_pck, bias, list(pad), [m, r], ops.points_str(pts), be, relu, allow_tf32,
                                        winograd_relu, None if d is None else d.key(), split_operands)


def winograd_conv2d_pck(
    x: torch.Tensor,
    q_pck: torch.Tensor,
    bias: torch.Tensor | None,
    padding: int | tuple[int, int],
    m: int,
    r: int,
    points: Sequence[object] | None = None,
    backend: str = "auto",
    *,
    relu: bool = False,
    allow_tf32: bool = False,
    winograd_relu: bool = False,
    decomposition: tuple[int, int] | None = None,
    split_operands: bool = False,
) -> torch.Tensor:
    """Dense Winograd convolution from a Winograd-domain weight already laid out position-major,
    ``q_pck`` (P, C, K) with P = n², built for F(m, r) with ``points`` (what a converted layer
    keeps, so no per-call transform of the weight). ``decomposition = (kernel, stride)`` when
    ``q_pck`` is a decomposed convolution's (C = input channels · pieces, ``tritonwino.dwm``).
    ``split_operands`` as in :func:`winograd_conv2d`; Q gains only if ``q_pck`` is kept in fp32.

    Example:
        >>> from tritonwino import reference
        >>> w = torch.randn(4, 2, 3, 3)
        >>> q_pck = reference.winograd_weight(w, 2).permute(2, 3, 1, 0).reshape(16, 2, 4).float()
        >>> y = winograd_conv2d_pck(torch.randn(1, 2, 6, 6), q_pck, None, 1, 2, 3, backend="torch")
        >>> tuple(y.shape)
        (1, 4, 6, 6)
    """
    pad = _checks.check_padding(padding)
    pts = normalize_points(m, r, points)
    if not isinstance(q_pck, torch.Tensor) or q_pck.dim() != 3 or q_pck.dtype not in _checks.FLOAT_DTYPES:
        raise TypeError(f"q_pck must be a floating (P, C, K) tensor, got "
                        f"{tuple(q_pck.shape) if isinstance(q_pck, torch.Tensor) else type(q_pck).__name__}")
    n = tile_size(m, r)
    if q_pck.shape[0] != n * n:
        raise ValueError(f"q_pck has {q_pck.shape[0]} positions; F({m},{r}) has {n * n}")
    d = None if decomposition is None else dwm.decomposition(*check_decomposition(decomposition, r, q_pck.shape[1]))
    _checks.check_input(x, _checks.real_channels(q_pck.shape[1], d))
    _checks.check_bias(bias, q_pck.shape[2])
    _checks.check_same_device(x=x, q=q_pck, bias=bias)
    be = resolve_backend(backend, x, q_pck, bias, m=m, split_operands=split_operands)
    if _needs_grad(x, q_pck, bias):
        return reference.winograd_conv2d_pck(x, q_pck, bias, pad, m, r, pts, relu, winograd_relu, d, split_operands)
    return ops.winograd_conv2d_pck_call(x, q_pck, bias, list(pad), [m, r], ops.points_str(pts), be, relu, allow_tf32,
                                        winograd_relu, None if d is None else d.key(), split_operands)


def sparse_winograd_conv2d(
    x: torch.Tensor,
    packed: PackedWinogradWeight,
    bias: torch.Tensor | None = None,
    padding: int | tuple[int, int] = 0,
    backend: str = "auto",
    *,
    relu: bool = False,
    allow_tf32: bool = False,
    winograd_relu: bool = False,
    split_operands: bool = False,
) -> torch.Tensor:
    """Sparse Winograd convolution: input transform -> multiply that skips pruned weights -> output
    transform.

    Args:
        x: input (N, C, H, W); float32/float16/bfloat16 (float64 on the torch path).
        packed: from :func:`tritonwino.sparse_conv.pack_winograd_weight`; its tile, kernel size and
            interpolation points are used, so a weight built with one point set never runs with another.
            A packed weight with a ``decomposition`` runs its k×k stride-s convolution (``tritonwino.dwm``).
        bias: optional (K,).
        padding: int or (ph, pw).
        backend: ``"auto"``, ``"triton"``, ``"cpu"`` or ``"torch"`` (module docstring).
        relu: fuse a ReLU into the output transform.
        allow_tf32: let fp32 GEMMs use tf32 tensor cores on a GPU.
        winograd_relu: ``Aᵀ[Q ⊙ ReLU(Bᵀ X B)]A`` (Liu et al.; fused into the input transform on Triton).
        split_operands: as in :func:`winograd_conv2d` (half inputs; the packed values gain a lo part
            only when ``packed`` holds fp32 values; on Triton the two-kernel path, three launches).

    Example:
        >>> from tritonwino.sparse_conv import pack_winograd_weight
        >>> from tritonwino import reference
        >>> w = torch.randn(16, 8, 3, 3)
        >>> q = reference.winograd_weight(w, 4)
        >>> q[:, :4] = 0  # prune half of the input channels everywhere
        >>> packed = pack_winograd_weight(q.float(), block=(16, 1))
        >>> y = sparse_winograd_conv2d(torch.randn(1, 8, 12, 12), packed, padding=1, backend="torch")
        >>> tuple(y.shape)
        (1, 16, 12, 12)
    """
    if not isinstance(packed, PackedWinogradWeight):
        raise TypeError(f"packed must be a PackedWinogradWeight (see pack_winograd_weight), "
                        f"got {type(packed).__name__}")
    # Types, shapes, dtypes and devices here (no host sync); the arrays' contents are validated in
    # the op, once per array version (packing.packed_from_arrays).
    packed.check_fields()
    _checks.check_input(x, packed.in_channels)
    _checks.check_bias(bias, packed.K)
    _checks.check_same_device(x=x, packed=packed.values, bias=bias)
    pad = _checks.check_padding(padding)
    be = resolve_backend(backend, x, bias, packed.values, m=packed.m, split_operands=split_operands)
    if _needs_grad(x, bias, packed.values):
        # validated once per array version; the cached object keeps the torch path's padded slabs
        cached = packed_from_arrays(packed.values, packed.indices, packed.offsets, packed.m, packed.r, packed.K,
                                    packed.C, packed.block, packed.group_k, packed.points, packed.decomposition)
        return reference.sparse_winograd_conv2d(x, cached, bias, pad, relu, winograd_relu, split_operands)
    if be == "triton" and x.is_cuda and torch.compiler.is_compiling() and not split_operands:
        # let Inductor see the kernels (a triton_op); the opaque custom op below everywhere else
        return ops.sparse_winograd_conv2d_traceable(x, packed, bias, pad, relu, allow_tf32, winograd_relu)
    return ops.sparse_winograd_conv2d_call(
        x, packed.values, packed.indices, packed.offsets, bias, list(pad), [packed.m, packed.r],
        [packed.K, packed.C], list(packed.block), ops.points_str(packed.points), be, relu, allow_tf32,
        winograd_relu, None if packed.decomposition is None else list(packed.decomposition), split_operands)
