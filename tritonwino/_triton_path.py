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

Decomposed convolutions (``tritonwino.dwm``: stride 2, even and large kernels) always take the
two-kernel sequence: the input transform's decomposed variant reads the pieces of x in place
(virtual channel ``piece·C_in + c_in``, per-piece offsets, the stride), and the fused multiply then
runs the piece tile F(m, r_piece) over the virtual channels unchanged. The one-kernel path
transforms x itself and knows nothing of pieces, so it is never chosen for them.

Layouts (docs/notation.md): x (N, C, H, W) any strides; V (P, C, T); Q position-major
``q_pck`` (P, C, K) or packed; y (N, K, HO, WO) in x's layout.
"""

from __future__ import annotations

import dataclasses
import functools
from fractions import Fraction

import torch

from . import _checks, dwm
from .kernels._common import interpreting
from .kernels.codegen import TileSpec
from .kernels.fused_multiply import GPU_MAX_M, dense_block_k, fused_multiply
from .kernels.input_transform import input_transform
from .packing import PackedWinogradWeight
from .reference import split_operand, tile_grid
from .transforms import ACCURATE_POINTS, tile_size, winograd_matrices_exact
from .tuning import select

__all__ = [
    "INDEX_LIMIT",
    "PATHS",
    "TRITON_DTYPES",
    "SparseCall",
    "check_gpu_tile",
    "check_index_range",
    "check_triton_dtype",
    "kernel_bias",
    "offsets_tensor",
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
    """(name, spec) of the tiles compile-check covers, the ones a GPU launches: F(2,3) and F(4,3)
    with the default points, F(4,3) with the accurate points (other points generate the same code
    shape), and the F(2,2), F(4,2) tiles the pieces of 3×3 stride-2 (and 2×2, 4×4) kernels run
    with (``tritonwino.dwm``; larger kernels' pieces run as F(m, 3)). F(6, r) stops at
    :func:`check_gpu_tile`."""
    from .transforms import normalize_points

    plain = [(f"F({m},3){' accurate' if pts else ''}", tile_spec(m, 3, normalize_points(m, 3, pts)))
             for m, pts in ((2, None), (4, None), (4, ACCURATE_POINTS[6]))]
    return plain + [(f"F({m},2)", tile_spec(m, 2, normalize_points(m, 2, None))) for m in (2, 4)]


def check_gpu_tile(m: int, x: torch.Tensor) -> None:
    """Refuse (ValueError) F(m, r) with m > ``GPU_MAX_M`` on a CUDA tensor: its fused kernel would
    need more registers than a thread has (``kernels.fused_multiply.GPU_MAX_M``). The interpreter
    (CPU tensors) runs every tile."""
    if x.is_cuda and m > GPU_MAX_M:
        raise ValueError(f"backend='triton' on a GPU runs output tiles up to m = {GPU_MAX_M}, got F({m}, r): the "
                         f"fused kernel for m = {m} would spill registers. Use a tile m <= {GPU_MAX_M}, or "
                         "backend='torch' (backend='auto' does this for you)")


@functools.lru_cache(maxsize=64)
def offsets_tensor(decomposition: dwm.Decomposition | None, device: torch.device) -> torch.Tensor:
    """int32 (pieces, 2), contiguous: the decomposed input transform's per-piece offset table."""
    return torch.tensor(dwm.offsets_table(decomposition), dtype=torch.int32, device=device)


def transform_input(x: torch.Tensor, spec: TileSpec, padding: tuple[int, int], tiles: tuple[int, int],
                    out_dtype: torch.dtype, winograd_relu: bool, decomposition: dwm.Decomposition | None,
                    out_size: tuple[int, int], config=None, wrap=None) -> torch.Tensor:
    """V (P, C, T) of x: the plain input transform, or for a decomposed convolution its pieces as
    virtual channels (C = C_in · pieces), read in place with the per-piece offsets and the stride
    over the expanded extent (HO + r − 1) × (WO + r − 1)."""
    if decomposition is None:
        return input_transform(x, spec, padding, tiles, out_dtype, winograd_relu, config, wrap)
    ho, wo = out_size
    return input_transform(x, spec, padding, tiles, out_dtype, winograd_relu, config, wrap,
                           offsets=offsets_tensor(decomposition, x.device), stride=decomposition.stride,
                           extent=(ho + spec.r - 1, wo + spec.r - 1))


def check_triton_dtype(dtype: torch.dtype) -> None:
    if dtype not in TRITON_DTYPES:
        raise TypeError(f"backend='triton' supports float32, float16 and bfloat16 inputs, got {dtype}; "
                        "use backend='torch' for float64")


def check_index_range(x: torch.Tensor, k: int, c: int, m: int, r: int, padding: tuple[int, int],
                      decomposition: dwm.Decomposition | None = None) -> None:
    """Refuse (ValueError) a call where any tensor this path creates or reads would have
    ``INDEX_LIMIT`` or more elements (``c``: the GEMM's channels, virtual ones when decomposed).
    Pure shape arithmetic: no host sync, works on meta tensors."""
    nb, _, h, w = x.shape
    ho, wo = _checks.conv_output_size(h, w, r, padding, decomposition)
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
        check_gpu_tile(packed.m, x)
        self.x, self.packed, self.values, self.bias = x, packed, values, kernel_bias(bias)
        self.padding, self.relu, self.allow_tf32, self.winograd_relu = padding, relu, allow_tf32, winograd_relu
        self.decomposition = packed.dwm
        nb, _, h, w = x.shape
        self.ho, self.wo = _checks.conv_output_size(h, w, packed.r, padding, packed.dwm)
        self.tiles = tile_grid(self.ho, self.wo, packed.m)
        self.t_total = nb * self.tiles[0] * self.tiles[1]
        self.spec = tile_spec(packed.m, packed.r, packed.points_fractions())
        self.operand = _checks.operand_dtype(x.dtype)

    def transform(self, config=None, wrap=None) -> torch.Tensor:
        """V (P, C, T) of x (the two-kernel path's first launch; the pieces as virtual channels when
        decomposed)."""
        return transform_input(self.x, self.spec, self.padding, self.tiles, self.operand, self.winograd_relu,
                               self.decomposition, (self.ho, self.wo), config, wrap)

    def multiply(self, src: torch.Tensor, source: str, config=None, y: torch.Tensor | None = None,
                 wrap=None, wide: bool = False) -> torch.Tensor:
        """The fused multiply from V (``source="v"``) or straight from x (``"x"``) into y
        (``wide``: the float64 multiply, see ``fused_multiply``)."""
        p = self.packed
        y = y if y is not None else _checks.empty_output(self.x, p.K, self.ho, self.wo)
        return fused_multiply(src, self.spec, source, (self.values, p.indices, p.offsets), p.group_k, p.C,
                              self.tiles, y, self.bias, self.relu, self.padding, self.allow_tf32,
                              self.winograd_relu, config, wrap, wide)

    def run(self, path: str, config=None, input_config=None, wrap=None) -> torch.Tensor:
        """Launch ``path``; ``wrap`` (``torch.library.wrap_triton`` inside a ``triton_op``) wraps
        every kernel so that torch.compile sees the launches."""
        if path == "two-kernel":
            return self.multiply(self.transform(input_config, wrap), "v", config, wrap=wrap)
        if path == "one-kernel":
            if self.decomposition is not None:
                # the one-kernel multiply transforms x itself and knows nothing of pieces
                raise ValueError("a decomposed convolution (tritonwino.dwm) runs only on the two-kernel path")
            return self.multiply(self.x, "x", config, wrap=wrap)
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")


def winograd_conv2d(x: torch.Tensor, q_pck: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, int],
                    m: int, r: int, pts: tuple[Fraction, ...], relu: bool = False,
                    allow_tf32: bool = False, winograd_relu: bool = False,
                    decomposition: dwm.Decomposition | None = None, split_operands: bool = False) -> torch.Tensor:
    """Dense Winograd convolution with a position-major Winograd-domain weight ``q_pck`` (P, C, K)
    (C = input channels · pieces for a decomposed convolution, whose ``r`` is the piece size):
    the input transform, then the dense fused multiply. ``split_operands`` (half inputs): V in
    fp32, then three launches of the same kernel — (V_hi, Q_hi), (V_lo, Q_hi), (V_hi, Q_lo) — into
    fp32 outputs summed once (the output transform is linear; ReLU after the sum). For fp32 inputs
    it means the float64 multiply (``_wide``)."""
    p, c, k = q_pck.shape
    check_triton_dtype(x.dtype)
    check_gpu_tile(m, x)
    pieces = 1 if decomposition is None else decomposition.pieces
    if p != tile_size(m, r) ** 2 or c != x.shape[1] * pieces:  # the GEMM launcher would only assert
        raise ValueError(f"q_pck {tuple(q_pck.shape)} does not fit F({m},{r}) (P = {tile_size(m, r) ** 2}) and an "
                         f"input of {x.shape[1]} channels" + (f" in {pieces} pieces" if pieces > 1 else ""))
    _checks.check_tile_dtype(m, r, x.dtype, q_pck.dtype)
    check_index_range(x, k, c, m, r, padding, decomposition)
    opd = _checks.operand_dtype(x.dtype)
    nb, _, h, w = x.shape
    ho, wo = _checks.conv_output_size(h, w, r, padding, decomposition)
    tiles = tile_grid(ho, wo, m)
    spec = tile_spec(m, r, pts)
    bk, b = dense_block_k(k), kernel_bias(bias)
    if split_operands and opd in (torch.float16, torch.bfloat16):
        return _split_dense(x, q_pck, b, padding, k, c, spec, tiles, (ho, wo), bk, relu, allow_tf32, winograd_relu,
                            decomposition)
    wide = _wide(split_operands, opd)
    q = q_pck.to(opd).contiguous()
    v = transform_input(x, spec, padding, tiles, q.dtype, winograd_relu, decomposition, (ho, wo))
    y = _checks.empty_output(x, k, ho, wo)

    def launch(cfg):
        return fused_multiply(v, spec, "v", (q,), bk, c, tiles, y, b, relu, padding, allow_tf32, False, cfg,
                              wide=wide)

    return launch(select.dense_config(v, q, m, r, allow_tf32, launch))


def _wide(split_operands: bool, operand: torch.dtype) -> bool:
    """``split_operands`` with fp32 operands: the float64 multiply, which only the interpreter runs
    (no compiled kernel has a float64 accumulator; the torch path has it on every device)."""
    if not _checks.wide_multiply(split_operands, operand):
        return False
    if not interpreting():
        raise ValueError("split_operands=True with a float32 input multiplies in float64, which the GPU kernels do "
                         "not compile: use backend='torch' for it (or split_operands=False)")
    return True


def _split_dense(x, q_pck, b, padding, k, c, spec, tiles, out_size, bk, relu, allow_tf32, winograd_relu,
                 decomposition) -> torch.Tensor:
    opd = _checks.operand_dtype(x.dtype)
    v32 = transform_input(x, spec, padding, tiles, torch.float32, winograd_relu, decomposition, out_size)
    (v_hi, v_lo), (q_hi, q_lo) = (split_operand(t, opd) for t in (v32, q_pck.to(torch.float32)))
    q_hi, q_lo = q_hi.contiguous(), q_lo.contiguous()

    def launch(cfg, v=v_hi, q=q_hi, bias=b):
        y = _checks.empty_output(x, k, *out_size, dtype=torch.float32)
        return fused_multiply(v, spec, "v", (q,), bk, c, tiles, y, bias, False, padding, allow_tf32, False, cfg)

    cfg = select.dense_config(v_hi, q_hi, spec.m, spec.r, allow_tf32, launch)
    return _sum_split(x, (launch(cfg), launch(cfg, v=v_lo, bias=None), launch(cfg, q=q_lo, bias=None)), relu)


def _sum_split(x: torch.Tensor, parts: tuple[torch.Tensor, ...], relu: bool) -> torch.Tensor:
    """The split path's fp32 outputs summed once (the output transform is linear), then ReLU and
    x's dtype and layout."""
    y = sum(parts[1:], parts[0])
    if relu:
        y = torch.relu(y)
    return y.to(x.dtype).contiguous(memory_format=_checks.memory_format_of(x))


def sparse_winograd_conv2d(x: torch.Tensor, packed: PackedWinogradWeight, bias: torch.Tensor | None,
                           padding: tuple[int, int], relu: bool = False, allow_tf32: bool = False,
                           winograd_relu: bool = False, path: str | None = None,
                           split_operands: bool = False) -> torch.Tensor:
    """Sparse Winograd convolution with a validated ``PackedWinogradWeight``. ``path`` forces one of
    :data:`PATHS` (default: ``select.sparse_path``'s choice for this shape); ``winograd_relu``
    applies a ReLU to V (Liu et al. 2018: y = Aᵀ[Q ⊙ ReLU(Bᵀ X B)]A). A decomposed weight
    (``packed.dwm``) runs the two-kernel path: ``path="one-kernel"`` is refused for it.
    ``split_operands`` (half inputs) runs the two-kernel path three times as the dense split does
    (the values gain a lo part only if the packed weight is fp32); fp32 inputs: the float64
    multiply on the two-kernel path (``_wide``)."""
    check_triton_dtype(x.dtype)
    check_gpu_tile(packed.m, x)  # before the field checks: the first thing a GPU user with F(6, r) should read
    packed.check_fields()
    _checks.check_tile_dtype(packed.m, packed.r, x.dtype)
    check_index_range(x, packed.K, packed.C, packed.m, packed.r, padding, packed.dwm)
    if packed.dwm is not None and path == "one-kernel":
        raise ValueError("a decomposed convolution (tritonwino.dwm) runs only on the two-kernel path: the one-kernel "
                         "path transforms x itself and knows nothing of the pieces")
    if not (packed.indices.is_contiguous() and packed.offsets.is_contiguous()):
        # The kernel (and the autotuner's timed launches) read indices/offsets by flat offset: dense
        # arrays only. A view loaded from a file or built by hand may have other strides.
        packed = dataclasses.replace(packed, indices=packed.indices.contiguous(),
                                     offsets=packed.offsets.contiguous(), _cast_cache=packed._cast_cache)
    opd = _checks.operand_dtype(x.dtype)
    if split_operands and opd in (torch.float16, torch.bfloat16):
        if path == "one-kernel":
            raise ValueError("split_operands runs the two-kernel path (V must exist in fp32 to be split)")
        return _split_sparse(x, packed, bias, padding, relu, allow_tf32, winograd_relu)
    call = SparseCall(x, packed, packed.values_as(opd), bias, padding, relu, allow_tf32, winograd_relu)
    if _wide(split_operands, opd):
        if path == "one-kernel":
            raise ValueError("split_operands runs the two-kernel path")
        return call.multiply(call.transform(), "v", wide=True)
    if path is None:
        path = select.sparse_path(call).path
    return call.run(path, select.sparse_config(call, path))


def _split_sparse(x: torch.Tensor, packed: PackedWinogradWeight, bias: torch.Tensor | None, padding: tuple[int, int],
                  relu: bool, allow_tf32: bool, winograd_relu: bool) -> torch.Tensor:
    opd = _checks.operand_dtype(x.dtype)
    hi, lo = (t.contiguous() for t in split_operand(packed.values_as(torch.float32), opd))
    call, call_lo = (SparseCall(x, packed, vals, b, padding, False, allow_tf32, winograd_relu)
                     for vals, b in ((hi, bias), (lo, None)))
    v32 = transform_input(x, call.spec, padding, call.tiles, torch.float32, winograd_relu, call.decomposition,
                          (call.ho, call.wo))
    v_hi, v_lo = split_operand(v32, opd)
    cfg = select.sparse_config(call, "two-kernel")

    def out() -> torch.Tensor:
        return _checks.empty_output(x, packed.K, call.ho, call.wo, dtype=torch.float32)

    return _sum_split(x, (call.multiply(v_hi, "v", cfg, out()), call.multiply(v_lo, "v", cfg, out()),
                          call_lo.multiply(v_hi, "v", cfg, out())), relu)
