"""``torch.library`` custom ops for the Winograd forward passes.

The ops take the packed arrays as plain tensors plus ints and one string, so that
``torch.compile(model, fullgraph=True)`` sees one opaque node per layer (no graph break, no
tracing into Triton launchers) and ``torch.library.opcheck`` can test them.

* ``tritonwino::sparse_winograd_conv2d(x, values, indices, offsets, bias, ph, pw, m, r, K, C,
  bk, bc, group_k, points, backend, relu)``: the sparse convolution of ``PackedWinogradWeight``.
* ``tritonwino::winograd_conv2d_pck(x, q_pck, bias, ph, pw, m, r, points, backend, relu)``: the
  dense Winograd convolution from a position-major Winograd-domain weight ``q_pck`` (P, C, K).

``points`` is the comma-joined list of interpolation points (``"0,1,-1,2,-2"``), because the op
schema has no list-of-strings type. ``backend`` is ``"torch"`` or ``"triton"`` (already resolved).

Inference only: no autograd formula is registered. ``SparseWinogradConv2d`` routes a forward
that needs gradients through the differentiable pure-torch path instead of these ops.
"""

from __future__ import annotations

import weakref

import torch

from . import _checks
from .packing import PackedWinogradWeight
from .transforms import tile_size

__all__ = [
    "INDEX_LIMIT",
    "check_index_range",
    "packed_from_arrays",
    "points_str",
    "sparse_winograd_conv2d_op",
    "winograd_conv2d_pck_op",
]

# Largest element count a Triton-path tensor may have. The kernels compute most offsets in
# int64, but that has never been run at this size, so the Triton path refuses rather than risk a
# silently wrong result; the torch path (int64 indexing throughout) has no such limit.
# A module-level constant so tests can lower it instead of allocating 8 GiB.
INDEX_LIMIT = 2**31


def points_str(points: tuple[str, ...] | list[str]) -> str:
    return ",".join(str(p) for p in points)


def _points_tuple(points: str) -> tuple[str, ...]:
    return tuple(p for p in points.split(",") if p) if points else ()


def check_index_range(x: torch.Tensor, k: int, c: int, m: int, r: int, padding: tuple[int, int]) -> None:
    """Refuse (ValueError) a Triton-path call where any tensor it creates or reads would have
    ``INDEX_LIMIT`` or more elements. Pure shape arithmetic: no host sync, works on meta tensors."""
    nb, _, h, w = x.shape
    ho, wo = _checks.output_size(h, w, r, padding)
    n = tile_size(m, r)
    t = nb * (-(-ho // m)) * (-(-wo // m))
    sizes = {"input": x.numel(), "output": nb * k * ho * wo, "V (P x C x tiles)": n * n * c * t,
             "M (P x K x tiles)": n * n * k * t}
    for what, size in sizes.items():
        if size >= INDEX_LIMIT:
            raise ValueError(
                f"the Triton path does not support tensors of {INDEX_LIMIT} or more elements: the {what} "
                f"tensor for input shape {tuple(x.shape)} would have {size}. Split the batch, or use "
                "backend='torch' (int64 indexing)."
            )


# --------------------------------------------------------------------------------------------
# packed arrays -> PackedWinogradWeight, cached per tensor identity
# --------------------------------------------------------------------------------------------
# Rebuilding the PackedWinogradWeight on every call would throw away its cast / padded-slab
# caches (the torch path's padded slabs need a host sync to build) and re-run validate(), which
# also syncs. Entries are keyed by id(values) and checked by identity and version counters, so a
# freed tensor whose id is reused, or an in-place edit, can never hit a stale entry.
_REGISTRY: dict[int, tuple] = {}


def _forget(registry: dict, key: int, ref: weakref.ref) -> None:
    # registry is bound at insert time: at interpreter shutdown module globals may already be None
    entry = registry.get(key)
    if entry is not None and entry[0] is ref:
        del registry[key]


def packed_from_arrays(values: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, m: int, r: int,
                       k: int, c: int, block: tuple[int, int], group_k: int,
                       points: tuple[str, ...]) -> PackedWinogradWeight:
    """The ``PackedWinogradWeight`` over these arrays, validated once (ValueError if corrupt)."""
    meta = (m, r, k, c, tuple(block), group_k, tuple(points))
    versions = (values._version, indices._version, offsets._version)
    key = id(values)
    entry = _REGISTRY.get(key)
    if (entry is not None and entry[0]() is values and entry[1]() is indices and entry[2]() is offsets
            and entry[3] == versions and entry[4] == meta):
        return entry[5]
    packed = PackedWinogradWeight(values, indices, offsets, m, r, k, c, tuple(block), group_k, tuple(points))
    packed.validate()
    vref = weakref.ref(values, lambda ref, key=key, reg=_REGISTRY: _forget(reg, key, ref))
    _REGISTRY[key] = (vref, weakref.ref(indices), weakref.ref(offsets), versions, meta, packed)
    return packed


def _out_like(x: torch.Tensor, k: int, ho: int, wo: int) -> torch.Tensor:
    """Empty output in x's layout (channels_last in -> channels_last out), as the real paths do."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty((x.shape[0], k, ho, wo), dtype=x.dtype, device=x.device, memory_format=fmt)


def _check_backend(backend: str) -> None:
    if backend not in ("torch", "triton"):
        raise ValueError(f"backend must be 'torch' or 'triton' for the tritonwino ops, got {backend!r}")


# --------------------------------------------------------------------------------------------
# sparse op
# --------------------------------------------------------------------------------------------
@torch.library.custom_op("tritonwino::sparse_winograd_conv2d", mutates_args=())
def sparse_winograd_conv2d_op(
    x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
    bias: torch.Tensor | None, ph: int, pw: int, m: int, r: int, K: int, C: int,  # noqa: N803
    bk: int, bc: int, group_k: int, points: str, backend: str, relu: bool,
) -> torch.Tensor:
    from .sparse_conv import sparse_winograd_conv2d

    _check_backend(backend)
    packed = packed_from_arrays(values, indices, offsets, m, r, K, C, (bk, bc), group_k, _points_tuple(points))
    if backend == "triton":
        check_index_range(x, K, C, m, r, (ph, pw))
    y = sparse_winograd_conv2d(x, packed, bias, (ph, pw), backend, relu=relu)
    # custom ops may not return an alias of an input
    return y.clone() if y is x else y


@sparse_winograd_conv2d_op.register_fake
def _sparse_fake(x, values, indices, offsets, bias, ph, pw, m, r, K, C, bk, bc, group_k, points, backend,  # noqa: N803
                 relu):
    _check_backend(backend)
    _checks.check_input(x, C)
    ho, wo = _checks.output_size(x.shape[2], x.shape[3], r, (ph, pw))
    return _out_like(x, K, ho, wo)


# --------------------------------------------------------------------------------------------
# dense op
# --------------------------------------------------------------------------------------------
@torch.library.custom_op("tritonwino::winograd_conv2d_pck", mutates_args=())
def winograd_conv2d_pck_op(
    x: torch.Tensor, q_pck: torch.Tensor, bias: torch.Tensor | None, ph: int, pw: int, m: int, r: int,
    points: str, backend: str, relu: bool,
) -> torch.Tensor:
    from . import reference

    _check_backend(backend)
    pts = _points_tuple(points)
    p, c, k = q_pck.shape
    if p != tile_size(m, r) ** 2:
        raise ValueError(f"q_pck has {p} positions; F({m},{r}) has {tile_size(m, r) ** 2}")
    if backend == "torch":
        return reference.winograd_conv2d_pck(x, q_pck.transpose(1, 2), bias, (ph, pw), m, r, pts or None, relu)

    from fractions import Fraction

    from . import _pipeline, autotune
    from .kernels.winograd_gemm import winograd_gemm
    from .transforms import normalize_points

    _checks.check_input(x, c)
    _checks.check_bias(bias, k)
    _checks.check_same_device(x=x, q=q_pck, bias=bias)
    _pipeline.check_triton_dtype(x.dtype)
    check_index_range(x, k, c, m, r, (ph, pw))
    fr = normalize_points(m, r, tuple(Fraction(s) for s in pts) if pts else None)
    q = q_pck.to(_checks.operand_dtype(x.dtype)).contiguous()

    def gemm(v: torch.Tensor) -> torch.Tensor:
        return winograd_gemm(v, q, False, autotune.dense_config(v, q, m, r, False))

    return _pipeline.run(x, gemm, k, bias, (ph, pw), m, r, fr, relu)


@winograd_conv2d_pck_op.register_fake
def _dense_fake(x, q_pck, bias, ph, pw, m, r, points, backend, relu):
    _check_backend(backend)
    _checks.check_input(x, q_pck.shape[1])
    ho, wo = _checks.output_size(x.shape[2], x.shape[3], r, (ph, pw))
    return _out_like(x, q_pck.shape[2], ho, wo)
