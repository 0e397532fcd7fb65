"""Packed sparse Winograd-domain weights: vector sparsity per position (see DESIGN.md).

For every Winograd position p and every group of ``group_k`` consecutive output channels, the
packer keeps the list of input channels that any member of the group still uses, and stores the
values densely as a (kept × group_k) slab. The sparse GEMM walks that list, gathers the matching
rows of V_p and runs a dense ``tl.dot``: work is proportional to the kept channels.

Arrays (``G = ceil(K / group_k)``, ``P = n²``; groups ordered ``p * G + g``):

* ``offsets`` int32 (P·G + 1): group ``p*G+g`` owns kept slots ``offsets[pg]:offsets[pg+1]``;
* ``indices`` int16 when C ≤ 32767, else int32 (nnz,): the kept input channel of each slot,
  ascending within a group (int16 halves the index overhead: 2 bytes per 16 to 64 values);
* ``values`` (nnz, group_k): ``values[s, j] = q[g*group_k + j, indices[s], p]`` (0 past K).

A weight of the decomposable Winograd method (``tritonwino.dwm``: stride 2, large kernels) is the
same format over C = input channels · pieces virtual channels, plus ``decomposition = (kernel,
stride)``, from which the pieces follow; ``r`` is then the piece size.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from . import _checks, dwm
from .transforms import normalize_points

__all__ = ["PackedWinogradWeight", "SUPPORTED_GROUP_K", "array_token", "check_kernel_block", "index_dtype",
           "pack_winograd_weight", "packed_from_arrays"]

# Output-channel group sizes the sparse kernel can run: tl.dot needs >= 16 rows on tensor cores.
SUPPORTED_GROUP_K = (16, 32, 64)
INT16_MAX_CHANNELS = 32767


def index_dtype(channels: int) -> torch.dtype:
    """Smallest index dtype the kernels accept for ``channels`` input channels."""
    return torch.int16 if channels <= INT16_MAX_CHANNELS else torch.int32
DEFAULT_ELEMENT_GROUP_K = 16


def array_token(*tensors: torch.Tensor) -> tuple | None:
    """What PyTorch can tell about the contents of ``tensors`` without reading them: version
    counter (bumped by every in-place op), storage pointer, shape and strides (``t.data = other``
    changes these without a version bump). Equal tokens mean unchanged contents, except for writes
    through ``t.data[...]``, which PyTorch never records. None for inference tensors (no version
    counter): never cache anything derived from them."""
    if any(t.is_inference() for t in tensors):
        return None
    return tuple((t._version, t.data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype, t.device)
                 for t in tensors)


@dataclass
class PackedWinogradWeight:
    values: torch.Tensor
    indices: torch.Tensor
    offsets: torch.Tensor
    m: int
    r: int
    K: int
    C: int
    block: tuple[int, int]
    group_k: int
    points: tuple[str, ...]
    decomposition: tuple[int, int] | None = None  # (kernel, stride) of a decomposed conv; C is then C_in·pieces
    _cast_cache: dict = field(default_factory=dict, repr=False, compare=False)

    # ---- derived metadata -------------------------------------------------------------------
    @property
    def n(self) -> int:
        return self.m + self.r - 1

    @property
    def P(self) -> int:  # noqa: N802 (the paper's name)
        return self.n * self.n

    @property
    def G(self) -> int:  # noqa: N802
        return math.ceil(self.K / self.group_k)

    @property
    def dwm(self) -> dwm.Decomposition | None:
        """The pieces of a decomposed convolution (None for a plain F(m, r) one)."""
        return None if self.decomposition is None else dwm.decomposition(*self.decomposition)

    @property
    def in_channels(self) -> int:
        """Input channels of the convolution (C, or C / pieces for a decomposed one)."""
        return _checks.real_channels(self.C, self.dwm)

    @property
    def kernel_size(self) -> int:
        return self.r if self.decomposition is None else self.decomposition[0]

    @property
    def stride(self) -> int:
        return 1 if self.decomposition is None else self.decomposition[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def nnz_channels(self) -> int:
        return int(self.indices.numel())

    @property
    def density(self) -> float:
        """Fraction of the dense GEMM work (P·G·C channel slots) that is kept."""
        total = self.P * self.G * self.C
        return self.nnz_channels / total if total else 0.0

    @property
    def sparsity_signature(self) -> str:
        """Tuning key for the pattern: group size and density bucket (not the raw mask)."""
        return f"gk{self.group_k}-bc{self.block[1]}-d{round(self.density, 2):.2f}"

    @property
    def nbytes(self) -> int:
        """Bytes of values + indices + offsets."""
        return sum(t.numel() * t.element_size() for t in (self.values, self.indices, self.offsets))

    def points_fractions(self) -> tuple[Fraction, ...]:
        return _points_of(self.m, self.r, tuple(self.points))

    # ---- conversions --------------------------------------------------------------------------
    def to(self, *args, **kwargs) -> PackedWinogradWeight:
        """Move and/or cast like ``Tensor.to``: ``p.to("cuda")``, ``p.to(torch.float16)``,
        ``p.to("cuda", torch.float16)``, ``p.to(device=..., dtype=...)`` or ``p.to(other_tensor)``.
        The dtype applies to the values only (indices and offsets keep their integer types).

        Example:
            >>> from tritonwino import reference
            >>> p = pack_winograd_weight(reference.winograd_weight(torch.randn(16, 4, 3, 3), 4).float())
            >>> p.to(torch.float16).values.dtype, p.to(torch.float16).indices.dtype
            (torch.float16, torch.int16)
        """
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"packed values must stay floating, got dtype={dtype}")
        return PackedWinogradWeight(
            self.values.to(device=device, dtype=dtype, non_blocking=non_blocking),
            self.indices.to(device, non_blocking=non_blocking), self.offsets.to(device, non_blocking=non_blocking),
            self.m, self.r, self.K, self.C, self.block, self.group_k, self.points, self.decomposition,
        )

    @torch.inference_mode(False)  # cached across calls: must not be an inference tensor
    def values_as(self, dtype: torch.dtype) -> torch.Tensor:
        """values in ``dtype``, contiguous (cached, so repeated forwards do not re-cast)."""
        if dtype == self.values.dtype and self.values.is_contiguous():
            return self.values
        # the kernels read values as a dense (nnz, group_k) array: never hand them other strides
        token = array_token(self.values)
        hit = self._cast_cache.get(dtype)
        if token is None or hit is None or hit[0] != token:
            hit = (token, self.values.to(dtype).contiguous())
            if token is not None:
                self._cast_cache[dtype] = hit
        return hit[1]

    @torch.inference_mode(False)  # cached across calls: must not be an inference tensor (see reference.py)
    def padded_slabs(self, operand: torch.dtype, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """For the torch path: (idx (P·G, L), vals (P·G, L, group_k)) padded to the longest list,
        padding pointing at channel C (a zero row the torch path appends to V). Values are rounded
        to ``operand`` (what a kernel would read) and held in ``dtype``.

        Cached per state of the arrays (``array_token``: an in-place edit of the indices, offsets
        or values rebuilds them). When autograd records the values (``values.requires_grad``
        under grad mode) the slab is rebuilt differentiably on every call, never cached: a cached
        slab would carry the first call's graph into the next backward."""
        layout_key = array_token(self.indices, self.offsets)
        cacheable = layout_key is not None
        hit = self._cast_cache.get("layout")
        if hit is not None and cacheable and hit[0] == layout_key:
            idx, grp, slot = hit[1]
        else:
            pg = self.P * self.G
            dev = self.values.device
            counts = (self.offsets[1:] - self.offsets[:-1]).long()
            longest = int(counts.max()) if counts.numel() else 0
            idx = torch.full((pg, longest), self.C, dtype=torch.long, device=dev)
            grp = torch.repeat_interleave(torch.arange(pg, device=dev), counts)
            slot = torch.arange(self.nnz_channels, device=dev) - self.offsets[:-1].long()[grp]
            if self.nnz_channels:
                idx[grp, slot] = self.indices.long()
            if cacheable:
                self._cast_cache["layout"] = (layout_key, (idx, grp, slot))
        differentiable = torch.is_grad_enabled() and self.values.requires_grad
        key = ("padded", operand, dtype)
        values_key = None if differentiable else array_token(self.values)
        cacheable = cacheable and values_key is not None
        hit = self._cast_cache.get(key)
        if cacheable and hit is not None and hit[0] == (layout_key, values_key):
            return idx, hit[1]
        vals = torch.zeros((idx.shape[0], idx.shape[1], self.group_k), dtype=dtype, device=self.values.device)
        if self.nnz_channels:
            vals = vals.index_put((grp, slot), self.values.to(operand).to(dtype))
        if cacheable:
            self._cast_cache[key] = ((layout_key, values_key), vals)
        return idx, vals

    def unpack(self) -> torch.Tensor:
        """The dense Winograd-domain weight (K, C, n, n), exactly as packed."""
        p_count, g_count, gk = self.P, self.G, self.group_k
        dense = torch.zeros(p_count, g_count, self.C, gk, dtype=self.values.dtype, device=self.values.device)
        counts = (self.offsets[1:] - self.offsets[:-1]).long()
        grp = torch.repeat_interleave(torch.arange(p_count * g_count, device=self.values.device), counts)
        dense.view(p_count * g_count, self.C, gk)[grp, self.indices.long()] = self.values
        q = dense.permute(1, 3, 2, 0).reshape(g_count * gk, self.C, self.n, self.n)
        return q[: self.K].contiguous()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cast_cache"] = {}
        return state

    def __setstate__(self, state):
        # A loaded file is untrusted input: check it before a kernel could index out of bounds.
        if not isinstance(state, dict) or not _FIELDS <= set(state):
            missing = sorted(_FIELDS - set(state)) if isinstance(state, dict) else "all"
            raise ValueError(f"packed weight: the pickled state is not a PackedWinogradWeight (missing: {missing})")
        self.__dict__.update(state)
        self._cast_cache = {}
        self.validate()

    def check_fields(self) -> None:
        """The checks that need no look at the arrays' contents (no host sync): field types,
        dtypes, shapes, devices, tile, points and granularity. ValueError/TypeError if wrong."""
        for name in ("m", "r", "K", "C", "group_k"):
            v = getattr(self, name)
            low = 1 if name in ("m", "r", "group_k") else 0
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"packed weight: {name} must be an int >= {low}, got {v!r}")
        if isinstance(self.points, str) or not isinstance(self.points, tuple | list) or not all(
                isinstance(p, str) for p in self.points):
            raise ValueError(f"packed weight: points must be a tuple of strings such as ('0', '1', '-1'), "
                             f"got {self.points!r}")
        _points_of(self.m, self.r, tuple(self.points))
        try:
            bk, bc = check_kernel_block(self.block)
        except ValueError as e:
            raise ValueError(f"packed weight: {e}") from None
        if self.group_k not in SUPPORTED_GROUP_K or (bk != 1 and self.group_k != bk):
            raise ValueError(f"packed weight: group_k={self.group_k} does not fit block={self.block} "
                             f"(one of {SUPPORTED_GROUP_K}, equal to bk when bk > 1)")
        for name in ("values", "indices", "offsets"):
            arr = getattr(self, name)
            if not isinstance(arr, torch.Tensor):
                raise TypeError(f"packed weight: {name} must be a torch.Tensor, got {type(arr).__name__}")
        if self.offsets.dtype != torch.int32 or self.indices.dtype not in (torch.int16, torch.int32):
            raise ValueError(f"packed weight: offsets must be int32 and indices int16 or int32, got "
                             f"{self.offsets.dtype} and {self.indices.dtype}")
        if self.values.dtype not in _checks.FLOAT_DTYPES:
            raise ValueError(f"packed weight: values must be float32, float16, bfloat16 or float64, "
                             f"got {self.values.dtype}")
        devs = {t.device for t in (self.values, self.indices, self.offsets)}
        if len(devs) != 1:
            raise ValueError(f"packed weight: values, indices and offsets must be on one device, got "
                             f"{self.values.device}, {self.indices.device} and {self.offsets.device} "
                             "(move the whole weight with packed.to(device))")
        if self.indices.dtype == torch.int16 and self.C > INT16_MAX_CHANNELS:
            raise ValueError(f"packed weight: int16 indices cannot address C={self.C} channels")
        pg = self.P * self.G
        if self.offsets.shape != (pg + 1,):
            raise ValueError(f"packed weight: offsets must have {pg + 1} entries, got {tuple(self.offsets.shape)}")
        if self.indices.dim() != 1:
            raise ValueError(f"packed weight: indices must be 1-D, got shape {tuple(self.indices.shape)}")
        nnz = self.indices.numel()
        if self.values.shape != (nnz, self.group_k):
            raise ValueError(f"packed weight: values must be ({nnz}, {self.group_k}), got {tuple(self.values.shape)}")
        if nnz >= 2**31:
            raise ValueError("packed weight: more than 2^31 kept slots; split the layer")
        _checks.check_tile_dtype(self.m, self.r, self.values.dtype)
        check_decomposition(self.decomposition, self.r, self.C)

    def validate(self) -> None:
        """Check internal consistency (:meth:`check_fields` plus the arrays' contents: offsets
        from 0 to nnz, non-decreasing; every index in [0, C)); raises ValueError before any kernel
        could read out of bounds. Reads the arrays (a host sync on a GPU): run once per change."""
        self.check_fields()
        nnz = self.indices.numel()
        if self.offsets.device.type == "meta":
            return  # shapes only (tracing); the real arrays are checked when they exist
        off = self.offsets.long()
        if int(off[0]) != 0 or int(off[-1]) != nnz or bool((off[1:] < off[:-1]).any()):
            raise ValueError(f"packed weight: offsets must start at 0, be non-decreasing and end at nnz={nnz}")
        if nnz and (int(self.indices.min()) < 0 or int(self.indices.max()) >= self.C):
            raise ValueError(f"packed weight: a channel index is outside [0, {self.C}) (indices span "
                             f"{int(self.indices.min())}..{int(self.indices.max())})")
        if nnz > 1:  # a repeated channel would count twice in the kernels and once in unpack()
            idx = self.indices.long()
            inner = torch.ones(nnz - 1, dtype=torch.bool, device=idx.device)  # pairs within one group
            starts = off[1:-1]
            inner[starts[(starts > 0) & (starts < nnz)] - 1] = False
            if bool(((idx[1:] <= idx[:-1]) & inner).any()):
                raise ValueError("packed weight: indices must be strictly ascending within a group "
                                 "(a channel listed twice)")


# required pickle fields (``decomposition`` is optional: files from before it load as plain)
_FIELDS = {"values", "indices", "offsets", "m", "r", "K", "C", "block", "group_k", "points"}


def check_decomposition(decomposition: object, r: int, c: int) -> tuple[int, int] | None:
    """``None`` or ``(kernel, stride)`` whose pieces have size ``r`` and divide the ``c`` channels
    (ValueError otherwise); returns it as a tuple of ints."""
    if decomposition is None:
        return None
    if (not isinstance(decomposition, tuple | list) or len(decomposition) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in decomposition)):
        raise ValueError(f"packed weight: decomposition must be None or (kernel, stride), got {decomposition!r}")
    d = dwm.decomposition(int(decomposition[0]), int(decomposition[1]))
    if d.r != r:
        raise ValueError(f"packed weight: a {d.kernel}x{d.kernel} stride-{d.stride} kernel decomposes into "
                         f"{d.r}x{d.r} pieces, but r={r}")
    if c % d.pieces:
        raise ValueError(f"packed weight: C={c} virtual channels do not split into {d.pieces} pieces")
    return d.kernel, d.stride


@functools.lru_cache(maxsize=256)
def _points_of(m: int, r: int, points: tuple[str, ...]) -> tuple[Fraction, ...]:
    # parsing Fractions costs ~100 µs: once per (tile, point set), not on every call
    return normalize_points(m, r, points)


def check_kernel_block(block: object) -> tuple[int, int]:
    """The granularities the sparse kernel runs: ``_checks.check_block`` plus bk in {1, 16, 32, 64}
    (bk = 1 is element granularity, grouped by ``group_k`` output channels when packed)."""
    bk, bc = _checks.check_block(block)
    if bk != 1 and bk not in SUPPORTED_GROUP_K:
        raise ValueError(
            f"block=({bk}, {bc}): bk must be 1 (element granularity, grouped by the kernel's "
            f"BLOCK_K) or one of {SUPPORTED_GROUP_K} so that a group feeds a tensor-core dot"
        )
    return bk, bc


# Outside inference mode even when called inside it: the arrays outlive the call, and inference
# tensors have no version counter, so no cache could ever trust them (a layer packed under
# torch.inference_mode() must still run outside it).
@torch.inference_mode(False)
def pack_winograd_weight(
    q: torch.Tensor,
    block: Sequence[int] = (16, 1),
    r: int = 3,
    points: Sequence[object] | None = None,
    dtype: torch.dtype | None = None,
    group_k: int | None = None,
    decomposition: tuple[int, int] | None = None,
) -> PackedWinogradWeight:
    """Pack a Winograd-domain weight ``q`` (K, C, n, n) whose exact zeros are pruned entries.

    Per position and group of ``group_k`` output channels, the input channels any member of the
    group still uses are kept (docs/notation.md, "The packed sparse weight").

    Args:
        q: Winograd-domain weight G W Gᵀ (K, C, n, n), finite, floating; zeros are pruned.
        block: ``(bk, bc)``; ``(1, 1)`` element granularity (grouped by ``group_k``, default 16);
            ``(bk, 1)`` with bk in 16/32/64 keeps or drops input channels per group of bk output
            channels; ``(bk, bc)`` additionally keeps input channels in blocks of bc.
        r: kernel size; the tile is F(n − r + 1, r).
        points: the interpolation points ``q`` was built with: a sequence, ``"standard"`` (the
            default) or ``"accurate"`` (``tritonwino.transforms.accurate_points``).
        dtype: storage dtype of the values: float32, float16, bfloat16 or float64 (default ``q.dtype``,
            which makes ``unpack()`` exact); half types only for tiles with n <= 8.
        group_k: output channels per group for element granularity (16, 32 or 64).
        decomposition: ``(kernel, stride)`` when ``q`` is the Winograd-domain form of a decomposed
            k×k stride-s convolution (``tritonwino.dwm``): C = input channels · pieces, r the piece size.

    Returns:
        A validated ``PackedWinogradWeight``.

    Example:
        >>> from tritonwino import reference
        >>> q = reference.winograd_weight(torch.randn(32, 16, 3, 3), 4)
        >>> q[:16, :8] = 0  # the first 16 output channels drop half of their inputs
        >>> p = pack_winograd_weight(q.float(), block=(16, 1))
        >>> p.density
        0.75
    """
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch.Tensor, got {type(q).__name__}")
    if q.dim() != 4 or q.shape[2] != q.shape[3]:
        raise ValueError(f"q must be (K, C, n, n), got shape {tuple(q.shape)}")
    if not q.is_floating_point():
        raise TypeError(f"q must be a floating tensor, got {q.dtype}")
    k, c, n, _ = q.shape
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"r must be a positive int, got {r!r}")
    m = n - r + 1
    if m < 1:
        raise ValueError(f"q has n={n}, which is not a tile for r={r} (need n >= r)")
    pts = normalize_points(m, r, points)
    decomposition = check_decomposition(decomposition, r, c)
    store = q.dtype if dtype is None else dtype
    if store not in _checks.FLOAT_DTYPES:
        raise TypeError(f"dtype={store!r}: packed values must be stored as float32, float16, bfloat16 or "
                        "float64 (an integer or bool dtype would truncate the weights)")
    _checks.check_tile_dtype(m, r, store)
    if not torch.isfinite(q).all():
        raise ValueError("q contains NaN or Inf: pack only finite weights")
    bk, bc = check_kernel_block(block)
    if group_k is None:
        group_k = DEFAULT_ELEMENT_GROUP_K if bk == 1 else bk
    elif bk != 1 and group_k != bk:
        raise ValueError(f"group_k={group_k} conflicts with block=({bk}, {bc}); group_k follows bk")
    if group_k not in SUPPORTED_GROUP_K:
        raise ValueError(f"group_k must be one of {SUPPORTED_GROUP_K}, got {group_k}")

    dev = q.device
    p_count = n * n
    g_count = math.ceil(k / group_k)
    k_pad = g_count * group_k
    # (P, G, C, group_k) slabs
    qp = torch.zeros(k_pad, c, p_count, dtype=q.dtype, device=dev)
    qp[:k] = q.reshape(k, c, p_count)
    slabs = qp.reshape(g_count, group_k, c, p_count).permute(3, 0, 2, 1).contiguous()
    keep = (slabs != 0).any(dim=-1)  # (P, G, C): channel used by any member of the group
    if bc > 1:
        nblk = math.ceil(c / bc)
        padded = torch.zeros(p_count, g_count, nblk * bc, dtype=torch.bool, device=dev)
        padded[..., :c] = keep
        blk = padded.reshape(p_count, g_count, nblk, bc).any(dim=-1)
        keep = blk.repeat_interleave(bc, dim=-1)[..., :c]
    counts = keep.reshape(p_count * g_count, c).sum(dim=1)
    offsets = torch.zeros(p_count * g_count + 1, dtype=torch.int64, device=dev)
    offsets[1:] = torch.cumsum(counts, 0)
    flat_keep = keep.reshape(p_count * g_count, c)
    _, ch = flat_keep.nonzero(as_tuple=True)  # row-major: grouped by pg, channels ascending
    values = slabs.reshape(p_count * g_count, c, group_k)[flat_keep]
    packed = PackedWinogradWeight(
        values=values.to(store).contiguous(),
        indices=ch.to(index_dtype(c)).contiguous(),
        offsets=offsets.to(torch.int32),
        m=m, r=r, K=k, C=c, block=(bk, bc), group_k=group_k,
        points=tuple(str(p) for p in pts), decomposition=decomposition,
    )
    packed.check_fields()  # the contents are right by construction
    return packed

# --------------------------------------------------------------------------------------------
# packed arrays -> PackedWinogradWeight, cached per tensor identity
# --------------------------------------------------------------------------------------------
# Re-validating on every call would sync (validate() reads the arrays), and a fresh object would
# throw away the cast / padded-slab caches. Entries are keyed by id(values) and checked by identity,
# version counters and tensor metadata, so a freed tensor whose id is reused, an in-place edit or a
# swapped storage can never hit a stale entry. An entry holds only weak references to the arrays and
# the caches (derived tensors), never the arrays: it dies with ``values`` (no leak of every packed
# weight ever seen).
_REGISTRY: dict[int, tuple] = {}


def _forget(registry: dict, key: int, ref: weakref.ref) -> None:
    # registry is bound at insert time: at interpreter shutdown module globals may already be None
    entry = registry.get(key)
    if entry is not None and entry[0] is ref:
        del registry[key]


def packed_from_arrays(values: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, m: int, r: int,
                       k: int, c: int, block: tuple[int, int], group_k: int,
                       points: tuple[str, ...], decomposition: tuple[int, int] | None = None) -> PackedWinogradWeight:
    """A ``PackedWinogradWeight`` over these arrays, validated once per array version (ValueError
    if corrupt); while the arrays are unchanged, later calls skip validation and share the caches."""
    decomposition = None if decomposition is None else tuple(decomposition)
    meta = (m, r, k, c, tuple(block), group_k, tuple(points), decomposition)
    for name, t in (("values", values), ("indices", indices), ("offsets", offsets)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"packed weight: {name} must be a torch.Tensor, got {type(t).__name__}")
    versions = array_token(values, indices, offsets)
    key = id(values)
    entry = _REGISTRY.get(key)
    if (versions is not None and entry is not None and entry[0]() is values and entry[1]() is indices
            and entry[2]() is offsets and entry[3] == versions and entry[4] == meta):
        # a fresh object sharing the caches: the registry must not keep the arrays alive
        return PackedWinogradWeight(values, indices, offsets, *meta, _cast_cache=entry[5])
    packed = PackedWinogradWeight(values, indices, offsets, *meta)
    packed.validate()
    if versions is None:  # inference tensors: validated on every call, never cached
        return packed
    vref = weakref.ref(values, lambda ref, key=key, reg=_REGISTRY: _forget(reg, key, ref))
    _REGISTRY[key] = (vref, weakref.ref(indices), weakref.ref(offsets), versions, meta, packed._cast_cache)
    return packed


# Plain `torch.load(path)` (weights_only=True, the default since torch 2.6) may rebuild packed
# weights: the class holds only tensors, ints, strings and tuples.
torch.serialization.add_safe_globals([PackedWinogradWeight])
