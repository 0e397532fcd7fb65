"""``torch.library`` custom ops for the Winograd forward passes.

Each op is one opaque node for ``torch.compile(model, fullgraph=True)`` (no graph break, no tracing
into Triton launchers) and is tested with ``torch.library.opcheck``. The public functional forms
(``tritonwino.functional``) and the modules both call these ops, so a model sees the same node
whichever it uses. Schemas carry only what the tensors do not already say:

* ``tritonwino::sparse_winograd_conv2d(x, values, indices, offsets, bias, padding[2], tile[2] = (m, r),
  channels[2] = (K, C), block[2], points, backend, relu, allow_tf32, winograd_relu=False, dwm=None,
  split_operands=False)`` — the group size is ``values.shape[1]``, the number of kept slots
  ``indices.numel()``.
* ``tritonwino::winograd_conv2d_pck(x, q_pck, bias, padding[2], tile[2], points, backend, relu,
  allow_tf32, winograd_relu=False, dwm=None, split_operands=False)`` — dense, from the
  position-major Winograd-domain weight ``q_pck`` (P, C, K); ``split_operands``: half V and Q as
  hi + lo pairs (``q_pck`` then in fp32, so that Q has a lo part), or for fp32 x the multiply and
  the output transform in float64.
* ``tritonwino::sparse_winograd_conv2d_triton`` — a ``torch.library.triton_op``: the sparse Triton
  path with its kernel path and config already chosen, its launches wrapped with ``wrap_triton`` so
  that Inductor sees (and can schedule around) the kernels. The functional form uses it for CUDA
  tensors while ``torch.compile`` traces; everywhere else the opaque custom op above runs.

``winograd_relu``: ``Aᵀ[Q ⊙ ReLU(Bᵀ X B)]A`` (Liu et al.). ``dwm``: ``[kernel, stride]`` of a
decomposed convolution (``tritonwino.dwm``; C then counts input channels · pieces), None for plain.

``points`` is the comma-joined list of interpolation points (``"0,1,-1,2,-2"``; the schema has no
list-of-strings type); ``backend`` is ``"torch"``, ``"triton"`` or ``"cpu"`` (already resolved).
The C++ CPU kernels (``"cpu"``) run plain convolutions only: a Winograd-ReLU or decomposed call
with ``backend="cpu"`` runs the torch path (:func:`cpu_runs`).

Inference only: no autograd formula is registered. The functional forms route a call that needs
gradients to the differentiable pure-torch path instead of these ops.
"""

from __future__ import annotations

from fractions import Fraction

import torch

from . import _checks, _cpu_path, _triton_path, dwm, reference
from .packing import check_decomposition, packed_from_arrays
from .transforms import normalize_points, tile_size

__all__ = ["cpu_runs", "points_str", "points_tuple", "sparse_winograd_conv2d_call", "sparse_winograd_conv2d_op",
           "sparse_winograd_conv2d_traceable", "sparse_winograd_conv2d_triton_op", "winograd_conv2d_pck_call",
           "winograd_conv2d_pck_op"]


def points_str(points) -> str:
    """The op-schema form of a point set: ``"0,1,-1"``."""
    return ",".join(str(p) for p in points)


def points_tuple(points: str) -> tuple[str, ...]:
    """Inverse of :func:`points_str`."""
    return tuple(p for p in points.split(",") if p) if points else ()


def _check_backend(backend: str) -> None:
    if backend not in ("torch", "triton", "cpu"):
        raise ValueError(f"backend must be 'torch', 'triton' or 'cpu' for the tritonwino ops, got {backend!r}")


def _pair(v, name: str) -> tuple[int, int]:
    if len(v) != 2:
        raise ValueError(f"{name} must have 2 entries, got {list(v)}")
    return int(v[0]), int(v[1])


def _decomposition(key, r: int, c: int) -> dwm.Decomposition | None:
    """The op argument ``dwm`` (None or [kernel, stride]) checked against the tile and channels."""
    if key is None:
        return None
    ks = check_decomposition(_pair(key, "dwm"), r, c)
    return dwm.decomposition(*ks)


def cpu_runs(winograd_relu: bool, decomposed: bool) -> bool:
    """Whether the C++ CPU kernels (backend ``"cpu"``) can run this call. They implement plain
    F(m, r) convolutions only: no Winograd-domain ReLU and no decomposed (stride-2 / large-kernel,
    ``tritonwino.dwm``) convolutions. Such calls run the torch path instead (same result, torch
    speed), on purpose and not silently wrong: see docs/cpu.md."""
    return not (winograd_relu or decomposed)


# --------------------------------------------------------------------------------------------
# sparse op
# --------------------------------------------------------------------------------------------
def _sparse_impl(
    x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
    bias: torch.Tensor | None, padding: list[int], tile: list[int], channels: list[int], block: list[int],
    points: str, backend: str, relu: bool, allow_tf32: bool, winograd_relu: bool = False,
    dwm: list[int] | None = None, split_operands: bool = False,
) -> torch.Tensor:
    _check_backend(backend)
    pad, (m, r), (k, c) = _pair(padding, "padding"), _pair(tile, "tile"), _pair(channels, "channels")
    if values.dim() != 2:
        raise ValueError(f"packed values must be 2-D (nnz, group_k), got shape {tuple(values.shape)}")
    packed = packed_from_arrays(values, indices, offsets, m, r, k, c, _pair(block, "block"), int(values.shape[1]),
                                points_tuple(points), None if dwm is None else _pair(dwm, "dwm"))
    if backend == "cpu" and (_checks.wide_multiply(split_operands, x.dtype)
                             or not cpu_runs(winograd_relu, packed.decomposition is not None)):
        # the C++ kernels have no Winograd-ReLU, no decomposed variant and no float64 multiply: the
        # torch path runs it
        _cpu_path.check_cpu_dtype(x.dtype)
        backend = "torch"
    if backend == "triton":
        y = _triton_path.sparse_winograd_conv2d(x, packed, bias, pad, relu, allow_tf32, winograd_relu,
                                                split_operands=split_operands)
    elif backend == "cpu":
        y = _cpu_path.sparse_winograd_conv2d(x, packed, bias, pad, relu)
    else:
        y = reference.sparse_winograd_conv2d(x, packed, bias, pad, relu, winograd_relu, split_operands)
    return y.clone() if y is x else y  # custom ops may not return an alias of an input


@torch.library.custom_op("tritonwino::sparse_winograd_conv2d", mutates_args=())
def sparse_winograd_conv2d_op(
    x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
    bias: torch.Tensor | None, padding: list[int], tile: list[int], channels: list[int], block: list[int],
    points: str, backend: str, relu: bool, allow_tf32: bool, winograd_relu: bool = False,
    dwm: list[int] | None = None, split_operands: bool = False,
) -> torch.Tensor:
    return _sparse_impl(x, values, indices, offsets, bias, padding, tile, channels, block, points, backend, relu,
                        allow_tf32, winograd_relu, dwm, split_operands)


def sparse_winograd_conv2d_call(*args) -> torch.Tensor:
    """:func:`sparse_winograd_conv2d_op` (same arguments); an eager call of the C++ CPU kernels runs the
    op's body directly: the op's dispatch costs more than a small layer's whole convolution (about 30
    µs measured against 9 µs), and nothing but torch.compile, tracing, a mode or the profiler needs the
    node (they get it: ``_cpu_path.eager_direct``)."""
    if args[10] == "cpu" and _cpu_path.eager_direct(args[0]):
        return _sparse_impl(*args)
    return sparse_winograd_conv2d_op(*args)


@sparse_winograd_conv2d_op.register_fake
def _sparse_fake(x, values, indices, offsets, bias, padding, tile, channels, block, points, backend, relu,
                 allow_tf32, winograd_relu=False, dwm=None, split_operands=False):
    _check_backend(backend)
    (k, c), (_, r) = _pair(channels, "channels"), _pair(tile, "tile")
    d = _decomposition(dwm, r, c)
    _checks.check_input(x, _checks.real_channels(c, d))
    ho, wo = _checks.conv_output_size(x.shape[2], x.shape[3], r, _pair(padding, "padding"), d)
    return _checks.empty_output(x, k, ho, wo)


# --------------------------------------------------------------------------------------------
# dense op
# --------------------------------------------------------------------------------------------
def _dense_impl(
    x: torch.Tensor, q_pck: torch.Tensor, bias: torch.Tensor | None, padding: list[int], tile: list[int],
    points: str, backend: str, relu: bool, allow_tf32: bool, winograd_relu: bool = False,
    dwm: list[int] | None = None, split_operands: bool = False,
) -> torch.Tensor:
    _check_backend(backend)
    pad, (m, r) = _pair(padding, "padding"), _pair(tile, "tile")
    pts = points_tuple(points)
    p, c, k = q_pck.shape
    if p != tile_size(m, r) ** 2:
        raise ValueError(f"q_pck has {p} positions; F({m},{r}) has {tile_size(m, r) ** 2}")
    d = _decomposition(dwm, r, c)
    _checks.check_input(x, _checks.real_channels(c, d))
    _checks.check_bias(bias, k)
    _checks.check_same_device(x=x, q=q_pck, bias=bias)
    if backend == "cpu" and (_checks.wide_multiply(split_operands, x.dtype)
                             or not cpu_runs(winograd_relu, d is not None)):
        # the C++ kernels have no Winograd-ReLU, no decomposed variant and no float64 multiply (what
        # split_operands means for their fp32 input): the torch path runs it
        _cpu_path.check_cpu_dtype(x.dtype)
        backend = "torch"
    if backend == "torch":
        return reference.winograd_conv2d_pck(x, q_pck, bias, pad, m, r, pts or None, relu, winograd_relu, d,
                                             split_operands)
    fr = normalize_points(m, r, tuple(Fraction(s) for s in pts) if pts else None)
    if backend == "cpu":
        return _cpu_path.winograd_conv2d(x, q_pck, bias, pad, m, r, fr, relu)
    return _triton_path.winograd_conv2d(x, q_pck, bias, pad, m, r, fr, relu, allow_tf32, winograd_relu, d,
                                        split_operands)


@torch.library.custom_op("tritonwino::winograd_conv2d_pck", mutates_args=())
def winograd_conv2d_pck_op(
    x: torch.Tensor, q_pck: torch.Tensor, bias: torch.Tensor | None, padding: list[int], tile: list[int],
    points: str, backend: str, relu: bool, allow_tf32: bool, winograd_relu: bool = False,
    dwm: list[int] | None = None, split_operands: bool = False,
) -> torch.Tensor:
    y = _dense_impl(x, q_pck, bias, padding, tile, points, backend, relu, allow_tf32, winograd_relu, dwm,
                    split_operands)
    return y.clone() if y is x else y


def winograd_conv2d_pck_call(*args) -> torch.Tensor:
    """:func:`winograd_conv2d_pck_op`, or its body for an eager call of the C++ CPU kernels (as
    :func:`sparse_winograd_conv2d_call`)."""
    if args[6] == "cpu" and _cpu_path.eager_direct(args[0]):
        return _dense_impl(*args)
    return winograd_conv2d_pck_op(*args)


@winograd_conv2d_pck_op.register_fake
def _dense_fake(x, q_pck, bias, padding, tile, points, backend, relu, allow_tf32, winograd_relu=False, dwm=None,
                split_operands=False):
    _check_backend(backend)
    r = _pair(tile, "tile")[1]
    d = _decomposition(dwm, r, q_pck.shape[1])
    _checks.check_input(x, _checks.real_channels(q_pck.shape[1], d))
    ho, wo = _checks.conv_output_size(x.shape[2], x.shape[3], r, _pair(padding, "padding"), d)
    return _checks.empty_output(x, q_pck.shape[2], ho, wo)


# --------------------------------------------------------------------------------------------
# the sparse Triton path as a triton_op: torch.compile (Inductor) sees the kernel launches
# --------------------------------------------------------------------------------------------
@torch.library.triton_op("tritonwino::sparse_winograd_conv2d_triton", mutates_args=())
def sparse_winograd_conv2d_triton_op(
    x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
    bias: torch.Tensor | None, padding: list[int], tile: list[int], channels: list[int], block: list[int],
    points: str, relu: bool, allow_tf32: bool, path: str, config: list[int], winograd_relu: bool = False,
    dwm: list[int] | None = None,
) -> torch.Tensor:
    """The sparse Triton path with its kernel path and launch config decided (``config`` =
    [BLOCK_T, BLOCK_C, num_warps, num_stages]); ``values`` already in the operand dtype. No host
    sync and no decision inside, so it traces. On CUDA only: the interpreter cannot run a
    triton_op under torch.compile (reference/triton-on-cpu.md §5)."""
    from .kernels.fused_multiply import FusedConfig
    from .packing import PackedWinogradWeight

    pad, (m, r), (k, c) = _pair(padding, "padding"), _pair(tile, "tile"), _pair(channels, "channels")
    packed = PackedWinogradWeight(values, indices, offsets, m, r, k, c, _pair(block, "block"), int(values.shape[1]),
                                  points_tuple(points), None if dwm is None else _pair(dwm, "dwm"))
    call = _triton_path.SparseCall(x, packed, values, bias, pad, relu, allow_tf32, winograd_relu)
    return call.run(path, FusedConfig(*config), wrap=torch.library.wrap_triton)


def sparse_winograd_conv2d_traceable(x: torch.Tensor, packed, bias: torch.Tensor | None, padding: tuple[int, int],
                                     relu: bool = False, allow_tf32: bool = False,
                                     winograd_relu: bool = False) -> torch.Tensor:
    """Call :func:`sparse_winograd_conv2d_triton_op` with the path and config ``tuning.select``
    chose for this shape bucket (memoised: made by an eager call before compiling; a bucket first
    seen while tracing gets the two-kernel path with its default config, as nothing can be timed
    inside a trace)."""
    from dataclasses import astuple

    from .tuning import select

    opd = _checks.operand_dtype(x.dtype)
    # while tracing, the cast is a graph op (the cast cache keys on data pointers, which fakes lack)
    values = packed.values.to(opd) if torch.compiler.is_compiling() else packed.values_as(opd)
    call = _triton_path.SparseCall(x, packed, values, bias, padding, relu, allow_tf32, winograd_relu)
    if torch.compiler.is_compiling():
        path, cfg = select.memoised_sparse_choice(call)
    else:
        path = select.sparse_path(call).path
        cfg = select.sparse_config(call, path)
    return sparse_winograd_conv2d_triton_op(
        x, values, packed.indices, packed.offsets, bias, list(padding), [packed.m, packed.r], [packed.K, packed.C],
        list(packed.block), points_str(packed.points), relu, allow_tf32, path, list(astuple(cfg)), winograd_relu,
        None if packed.decomposition is None else list(packed.decomposition))
