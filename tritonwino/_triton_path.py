"""The Triton execution path, the twin of ``reference``: the generated input transform and the
fused Winograd-domain multiply with the output transform in its epilogue (``tritonwino.kernels``).

Sparse layers run one of two kernel sequences, chosen per shape by ``tuning.select.sparse_path``
(timed on a GPU, the counted-work model without one):

* ``two-kernel``: ``input_transform`` writes V (P, C, T) in the operand dtype, then the fused
  sparse multiply gathers its kept rows and applies Aᵀ·A, bias and ReLU in its epilogue;
* ``one-kernel``: the fused multiply recomputes each position's V for the kept channels straight
  from X (neither V nor M exists in memory; the input transform is recomputed per output-channel
  group).

Dense layers take the two-kernel sequence with the dense fused multiply. M (P, K, T) is never in
memory on either path.

Layouts (docs/notation.md): x (N, C, H, W) any strides; V (P, C, T); Q position-major
``q_pck`` (P, C, K) or packed; y (N, K, HO, WO) in x's layout.
"""

from __future__ import annotations

import dataclasses
import functools
from fractions import Fraction

import torch

from . import _checks
from .kernels.codegen import TileSpec
from .kernels.fused_multiply import dense_block_k, fused_multiply
from .kernels.input_transform import input_transform
from .packing import PackedWinogradWeight
from .reference import tile_grid
from .transforms import ACCURATE_POINTS, tile_size, winograd_matrices_exact
from .tuning import select

__all__ = [
    "INDEX_LIMIT",
    "PATHS",
    "TRITON_DTYPES",
    "SparseCall",
    "check_index_range",
    "check_triton_dtype",
    "kernel_bias",
    "shipped_tiles",
    "sparse_winograd_conv2d",
    "tile_spec",
    "winograd_conv2d",
]

TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
PATHS = ("one-kernel", "two-kernel")

# Largest element count a Triton-path tensor may have. The kernels compute most offsets in
# int64, but that has never been run at this size, so the Triton path refuses rather than risk a
# silently wrong result; the torch path (int64 indexing throughout) has no such limit.
# A module-level constant so tests can lower it instead of allocating 8 GiB.
INDEX_LIMIT = 2**31


# Summation order inside the generated transforms (kernels/codegen.py ``TileSpec.order``).
# "magnitude" (smallest |coefficient| first, the Huffman-like order of Barabasz et al.) measured the
# same error as "natural" to 3 digits for every tile and dtype (bench/results/accuracy.md, ``order``
# column), so the kernels keep the natural order; bench/accuracy.py switches this to compare.
SUMMATION_ORDER = "natural"


def tile_spec(m: int, r: int, pts: tuple[Fraction, ...], order: str | None = None) -> TileSpec:
    """The exact matrices of F(m, r) with these points, as the kernel generator takes them;
    ``order`` defaults to ``SUMMATION_ORDER``."""
    return _tile_spec(m, r, pts, order or SUMMATION_ORDER)


@functools.lru_cache(maxsize=64)
def _tile_spec(m: int, r: int, pts: tuple[Fraction, ...], order: str) -> TileSpec:
    at, _, bt = winograd_matrices_exact(m, r, pts)
    return TileSpec.from_lists(m, r, at, bt, order)


def shipped_tiles() -> list[tuple[str, TileSpec]]:
    """(name, spec) of the tiles compile-check covers: F(2,3), F(4,3), F(6,3) with the default
    points and F(4,3) with the accurate points (other points generate the same code shape)."""
    from .transforms import normalize_points

    return [(f"F({m},3){' accurate' if pts else ''}", tile_spec(m, 3, normalize_points(m, 3, pts)))
            for m, pts in ((2, None), (4, None), (6, None), (4, ACCURATE_POINTS[6]))]


def check_triton_dtype(dtype: torch.dtype) -> None:
    if dtype not in TRITON_DTYPES:
        raise TypeError(f"backend='triton' supports float32, float16 and bfloat16 inputs, got {dtype}; "
                        "use backend='torch' for float64")


def check_index_range(x: torch.Tensor, k: int, c: int, m: int, r: int, padding: tuple[int, int]) -> None:
    """Refuse (ValueError) a call where any tensor this path creates or reads would have
    ``INDEX_LIMIT`` or more elements. Pure shape arithmetic: no host sync, works on meta tensors."""
    nb, _, h, w = x.shape
    ho, wo = _checks.output_size(h, w, r, padding)
    n = tile_size(m, r)
    t = nb * (-(-ho // m)) * (-(-wo // m))
    sizes = {"input": x.numel(), "output": nb * k * ho * wo, "V (P x C x tiles)": n * n * c * t}
    for what, size in sizes.items():
        if size >= INDEX_LIMIT:
            raise ValueError(
                f"the Triton path does not support tensors of {INDEX_LIMIT} or more elements: the {what} "
                f"tensor for input shape {tuple(x.shape)} would have {size}. Split the batch, or use "
                "backend='torch' (int64 indexing)."
            )


def kernel_bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    """The bias as the output kernel reads it: (K,) dense (it indexes ``bias_ptr + k``, so a strided
    view or an ``expand``-ed scalar would read the wrong elements or past its storage), in a dtype
    the kernels take (float64 is rounded to float32, as the torch path adds it)."""
    if bias is None:
        return None
    if bias.dtype not in TRITON_DTYPES:
        bias = bias.to(torch.float32)
    return bias.contiguous()


class SparseCall:
    """Everything one sparse forward launches, so the tuner can time configs and paths on it."""

    def __init__(self, x: torch.Tensor, packed: PackedWinogradWeight, values: torch.Tensor,
                 bias: torch.Tensor | None, padding: tuple[int, int], relu: bool = False, allow_tf32: bool = False,
                 winograd_relu: bool = False):
        self.x, self.packed, self.values, self.bias = x, packed, values, kernel_bias(bias)
        self.padding, self.relu, self.allow_tf32, self.winograd_relu = padding, relu, allow_tf32, winograd_relu
        nb, _, h, w = x.shape
        self.ho, self.wo = _checks.output_size(h, w, packed.r, padding)
        self.tiles = tile_grid(self.ho, self.wo, packed.m)
        self.t_total = nb * self.tiles[0] * self.tiles[1]
        self.spec = tile_spec(packed.m, packed.r, packed.points_fractions())
        self.operand = _checks.operand_dtype(x.dtype)

    def transform(self, config=None, wrap=None) -> torch.Tensor:
        """V (P, C, T) of x (the two-kernel path's first launch)."""
        return input_transform(self.x, self.spec, self.padding, self.tiles, self.operand, self.winograd_relu,
                               config, wrap)

    def multiply(self, src: torch.Tensor, source: str, config=None, y: torch.Tensor | None = None,
                 wrap=None) -> torch.Tensor:
        """The fused multiply from V (``source="v"``) or straight from x (``"x"``) into y."""
        p = self.packed
        y = y if y is not None else _checks.empty_output(self.x, p.K, self.ho, self.wo)
        return fused_multiply(src, self.spec, source, (self.values, p.indices, p.offsets), p.group_k, p.C,
                              self.tiles, y, self.bias, self.relu, self.padding, self.allow_tf32,
                              self.winograd_relu, config, wrap)

    def run(self, path: str, config=None, input_config=None, wrap=None) -> torch.Tensor:
        """Launch ``path``; ``wrap`` (``torch.library.wrap_triton`` inside a ``triton_op``) wraps
        every kernel so that torch.compile sees the launches."""
        if path == "two-kernel":
            return self.multiply(self.transform(input_config, wrap), "v", config, wrap=wrap)
        if path == "one-kernel":
            return self.multiply(self.x, "x", config, wrap=wrap)
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")


def winograd_conv2d(x: torch.Tensor, q_pck: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, int],
                    m: int, r: int, pts: tuple[Fraction, ...], relu: bool = False,
                    allow_tf32: bool = False) -> torch.Tensor:
    """Dense Winograd convolution with a position-major Winograd-domain weight ``q_pck`` (P, C, K):
    the input transform, then the dense fused multiply."""
    p, c, k = q_pck.shape
    check_triton_dtype(x.dtype)
    if p != tile_size(m, r) ** 2 or c != x.shape[1]:  # the GEMM launcher would only assert
        raise ValueError(f"q_pck {tuple(q_pck.shape)} does not fit F({m},{r}) (P = {tile_size(m, r) ** 2}) and an "
                         f"input of {x.shape[1]} channels")
    _checks.check_tile_dtype(m, r, x.dtype, q_pck.dtype)
    check_index_range(x, k, c, m, r, padding)
    q = q_pck.to(_checks.operand_dtype(x.dtype)).contiguous()
    nb, _, h, w = x.shape
    ho, wo = _checks.output_size(h, w, r, padding)
    tiles = tile_grid(ho, wo, m)
    spec = tile_spec(m, r, pts)
    v = input_transform(x, spec, padding, tiles, q.dtype)
    y = _checks.empty_output(x, k, ho, wo)
    bk, b = dense_block_k(k), kernel_bias(bias)

    def launch(cfg):
        return fused_multiply(v, spec, "v", (q,), bk, c, tiles, y, b, relu, padding, allow_tf32, False, cfg)

    return launch(select.dense_config(v, q, m, r, allow_tf32, launch))


def sparse_winograd_conv2d(x: torch.Tensor, packed: PackedWinogradWeight, bias: torch.Tensor | None,
                           padding: tuple[int, int], relu: bool = False, allow_tf32: bool = False,
                           winograd_relu: bool = False, path: str | None = None) -> torch.Tensor:
    """Sparse Winograd convolution with a validated ``PackedWinogradWeight``. ``path`` forces one of
    :data:`PATHS` (default: ``select.sparse_path``'s choice for this shape); ``winograd_relu``
    applies a ReLU to V (Liu et al. 2018: y = Aᵀ[Q ⊙ ReLU(Bᵀ X B)]A)."""
    check_triton_dtype(x.dtype)
    packed.check_fields()
    _checks.check_tile_dtype(packed.m, packed.r, x.dtype)
    check_index_range(x, packed.K, packed.C, packed.m, packed.r, padding)
    if not (packed.indices.is_contiguous() and packed.offsets.is_contiguous()):
        # The kernel (and the autotuner's timed launches) read indices/offsets by flat offset: dense
        # arrays only. A view loaded from a file or built by hand may have other strides.
        packed = dataclasses.replace(packed, indices=packed.indices.contiguous(),
                                     offsets=packed.offsets.contiguous(), _cast_cache=packed._cast_cache)
    call = SparseCall(x, packed, packed.values_as(_checks.operand_dtype(x.dtype)), bias, padding, relu,
                      allow_tf32, winograd_relu)
    if path is None:
        path = select.sparse_path(call).path
    return call.run(path, select.sparse_config(call, path))
