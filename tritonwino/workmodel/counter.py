"""Count the work a Triton launch does by running it under the Triton interpreter.

``count_work()`` patches the interpreter's builder for the duration of a ``with`` block and
records, per kernel launch:

* ``tc_macs``: multiply-accumulates of ``tl.dot`` that run on tensor cores (fp16/bf16/fp8
  operands, or fp32 with ``input_precision`` tf32/tf32x3), keyed by operand type;
* ``simt_flops``: floating-point work on the CUDA cores: every float elementwise op (add, sub,
  mul, div, neg, max/min, fma = 2, ...) counts one flop per element of its result, a float
  reduction counts its input size, and an IEEE-fp32 ``tl.dot`` counts 2 flops per MAC (it runs as
  FMAs). Masked-off lanes count: a GPU executes them;
* ``int_ops`` / ``cvt_ops``: integer arithmetic and type conversions (reported, not modeled);
* ``load_bytes`` / ``store_bytes``: requested bytes (active lanes times element size);
* ``unique_load_bytes`` / ``unique_store_bytes``: compulsory bytes, the distinct addresses a launch
  reads / writes; ``unique_*_sectors`` the same at 32-byte sector granularity;
* ``oob_accesses``: active-lane accesses outside every tensor argument (a mask bug: the
  interpreter itself does not catch them).

The counts are of what the interpreter executes, which is the program the GPU would run with the
same constexprs (block sizes, warps do not change the arithmetic): run the GPU config, not the
interpreter's, when the counts feed the roofline model.

Example (needs TRITON_INTERPRET=1)::
    with count_work() as launches:
        my_kernel[grid](x, y, n, BLOCK=128)
    launches[0].simt_flops
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

__all__ = ["LaunchCount", "count_work", "total"]

SECTOR = 32

# builder method -> flops per result element
_FLOAT_OPS = {
    "create_fadd": 1, "create_fsub": 1, "create_fmul": 1, "create_fdiv": 1, "create_frem": 1,
    "create_fneg": 1, "create_precise_divf": 1, "create_approx_divf": 1, "create_fma": 2,
    "create_minimumf": 1, "create_minnumf": 1, "create_maximumf": 1, "create_maxnumf": 1,
    "create_clampf": 2, "create_fabs": 1, "create_exp": 1, "create_exp2": 1, "create_log": 1,
    "create_log2": 1, "create_sqrt": 1, "create_precise_sqrt": 1, "create_rsqrt": 1,
    "create_sin": 1, "create_cos": 1, "create_floor": 1, "create_ceil": 1, "create_erf": 1,
    "create_fcmpOLT": 1, "create_fcmpOGT": 1, "create_fcmpOLE": 1, "create_fcmpOGE": 1,
    "create_fcmpOEQ": 1, "create_fcmpONE": 1, "create_fcmpULT": 1, "create_fcmpUGT": 1,
    "create_fcmpULE": 1, "create_fcmpUGE": 1, "create_fcmpUEQ": 1, "create_fcmpUNE": 1,
}
_INT_OPS = (
    "create_add", "create_sub", "create_mul", "create_sdiv", "create_udiv", "create_srem", "create_urem",
    "create_shl", "create_lshr", "create_ashr", "create_minsi", "create_minui", "create_maxsi", "create_maxui",
    "create_and", "create_or", "create_xor", "create_icmpSLE", "create_icmpSLT", "create_icmpSGE",
    "create_icmpSGT", "create_icmpULE", "create_icmpULT", "create_icmpUGE", "create_icmpUGT",
    "create_icmpEQ", "create_icmpNE", "create_iabs",
)
_CVT_OPS = ("create_si_to_fp", "create_ui_to_fp", "create_fp_to_si", "create_fp_to_ui", "create_fp_ext",
            "create_fp_trunc", "create_fp_to_fp")


@dataclass
class LaunchCount:
    """What one kernel launch did (see the module docstring for each field)."""

    kernel: str
    grid: tuple[int, int, int]
    programs: int = 0
    tc_macs: Counter = field(default_factory=Counter)     # operand type -> MACs on tensor cores
    simt_flops: int = 0
    dot_simt_flops: int = 0                                # part of simt_flops from IEEE-fp32 dots
    int_ops: int = 0
    cvt_ops: int = 0
    load_bytes: int = 0
    store_bytes: int = 0
    unique_load_bytes: int = 0
    unique_store_bytes: int = 0
    unique_load_sectors: int = 0
    unique_store_sectors: int = 0
    oob_accesses: int = 0

    @property
    def tensor_core_macs(self) -> int:
        return sum(self.tc_macs.values())

    @property
    def requested_bytes(self) -> int:
        return self.load_bytes + self.store_bytes

    @property
    def compulsory_bytes(self) -> int:
        return self.unique_load_bytes + self.unique_store_bytes

    @property
    def compulsory_sector_bytes(self) -> int:
        return SECTOR * (self.unique_load_sectors + self.unique_store_sectors)

    def add(self, other: LaunchCount) -> LaunchCount:
        """Sum of two counts (a new object; grid and kernel name of ``self``)."""
        out = LaunchCount(self.kernel, self.grid)
        for f in ("programs", "simt_flops", "dot_simt_flops", "int_ops", "cvt_ops", "load_bytes", "store_bytes",
                  "unique_load_bytes", "unique_store_bytes", "unique_load_sectors", "unique_store_sectors",
                  "oob_accesses"):
            setattr(out, f, getattr(self, f) + getattr(other, f))
        out.tc_macs = self.tc_macs + other.tc_macs
        return out


def total(launches: list[LaunchCount], name: str = "total") -> LaunchCount:
    """All launches summed (compulsory bytes add up per launch: each launch reads from DRAM)."""
    out = LaunchCount(name, (0, 0, 0))
    for lc in launches:
        out = out.add(lc)
    out.kernel = name
    return out


class _Footprint:
    """Which bytes of each tensor argument a launch touched (one bitmap per storage)."""

    def __init__(self, ranges: list[tuple[int, int]]):
        self.ranges = sorted(ranges)
        self.starts = np.array([r[0] for r in self.ranges], dtype=np.uint64)
        self.ends = np.array([r[1] for r in self.ranges], dtype=np.uint64)
        self.maps = [np.zeros(end - start, dtype=bool) for start, end in self.ranges]

    def touch(self, addrs: np.ndarray, elsize: int) -> int:
        """Mark ``addrs`` (uint64, active lanes only); returns how many fell outside every range."""
        if addrs.size == 0:
            return 0
        addrs = addrs.astype(np.uint64, copy=False).ravel()
        which = np.searchsorted(self.starts, addrs, side="right").astype(np.int64) - 1
        ok = which >= 0
        ok[ok] &= addrs[ok] + np.uint64(elsize) <= self.ends[which[ok]]
        for i in np.unique(which[ok]):
            sel = addrs[ok & (which == i)] - self.starts[i]
            off = sel.astype(np.int64)
            for b in range(elsize):
                self.maps[i][off + b] = True
        return int((~ok).sum())

    def bytes_and_sectors(self) -> tuple[int, int]:
        nbytes = sectors = 0
        for (start, _), bm in zip(self.ranges, self.maps, strict=True):
            nbytes += int(bm.sum())
            # sectors are aligned in the address space, not to the storage start
            idx = np.flatnonzero(bm).astype(np.uint64) + np.uint64(start)
            sectors += int(np.unique(idx // np.uint64(SECTOR)).size)
        return nbytes, sectors


class _State:
    def __init__(self):
        self.launches: list[LaunchCount] = []
        self.current: LaunchCount | None = None
        self.loads: _Footprint | None = None
        self.stores: _Footprint | None = None


def _tensor_ranges(args, kwargs) -> list[tuple[int, int]]:
    import torch

    seen: dict[int, int] = {}
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor):
            st = a.untyped_storage()
            if st.nbytes():
                seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
    ranges = sorted((p, p + n) for p, n in seen.items())
    merged: list[tuple[int, int]] = []
    for s, e in ranges:  # storages never overlap, but be safe
        if merged and s < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def _elsize(handle) -> int:
    ty = handle.get_element_ty()
    return max(1, ty.primitive_bitwidth // 8)


def _is_float(handle) -> bool:
    ty = handle.dtype.scalar if hasattr(handle.dtype, "scalar") else handle.dtype
    return ty.is_floating()


@contextlib.contextmanager
def count_work() -> Iterator[list[LaunchCount]]:
    """Record every interpreted Triton launch inside the block; yields the list of counts.

    Needs ``TRITON_INTERPRET=1`` set before the kernels were defined (the launches must run in the
    interpreter). Not thread-safe; do not nest.

    Example (needs TRITON_INTERPRET=1)::
        with count_work() as launches:
            y = sparse_winograd_conv2d(x, packed, backend="triton")
        [lc.kernel for lc in launches]
    """
    from tritonwino.kernels._common import interpreting

    if not interpreting():
        raise RuntimeError("count_work() counts interpreted launches: set TRITON_INTERPRET=1 before importing "
                           "tritonwino (bench/work_model.py does)")
    import triton.language as tl
    import triton.runtime.interpreter as interp

    builder_cls = interp.InterpreterBuilder
    st = _State()
    saved: dict[tuple[object, str], object] = {}

    def patch(owner, name, fn):
        saved[(owner, name)] = owner.__dict__[name]
        setattr(owner, name, fn)

    def wrap_float(name, per_elem):
        orig = builder_cls.__dict__[name]

        def f(self, *a, **k):
            out = orig(self, *a, **k)
            if st.current is not None and _is_float(out):
                st.current.simt_flops += per_elem * out.data.size
            return out
        return f

    def wrap_count(name, attr):
        orig = builder_cls.__dict__[name]

        def f(self, *a, **k):
            out = orig(self, *a, **k)
            if st.current is not None:
                setattr(st.current, attr, getattr(st.current, attr) + out.data.size)
            return out
        return f

    for name, per in _FLOAT_OPS.items():
        if name in builder_cls.__dict__:
            patch(builder_cls, name, wrap_float(name, per))
    for name in _INT_OPS:
        if name in builder_cls.__dict__:
            patch(builder_cls, name, wrap_count(name, "int_ops"))
    for name in _CVT_OPS:
        if name in builder_cls.__dict__:
            patch(builder_cls, name, wrap_count(name, "cvt_ops"))

    orig_dot = builder_cls.__dict__["create_dot"]

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if st.current is not None:
            macs = int(np.prod(a.data.shape[:-1])) * a.data.shape[-1] * b.data.shape[-1]
            aty = a.get_element_ty()
            prec = str(input_precision).split(".")[-1].lower()
            if aty == tl.float32 and prec == "ieee":
                st.current.simt_flops += 2 * macs
                st.current.dot_simt_flops += 2 * macs
            else:
                key = str(aty) if aty != tl.float32 else f"fp32/{prec}"
                st.current.tc_macs[key] += macs
        return orig_dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    patch(builder_cls, "create_dot", create_dot)

    orig_load = builder_cls.__dict__["create_masked_load"]
    orig_store = builder_cls.__dict__["create_masked_store"]

    def create_masked_load(self, ptrs, mask, other, cache_policy, is_volatile):
        if st.current is not None:
            es = _elsize(ptrs)
            m = np.broadcast_to(mask.data, ptrs.data.shape)
            active = ptrs.data[m]
            st.current.load_bytes += es * active.size
            st.current.oob_accesses += st.loads.touch(active, es)
        return orig_load(self, ptrs, mask, other, cache_policy, is_volatile)

    def create_masked_store(self, ptrs, value, mask, cache_policy):
        if st.current is not None:
            es = _elsize(ptrs)
            m = np.broadcast_to(mask.data, ptrs.data.shape)
            active = ptrs.data[m]
            st.current.store_bytes += es * active.size
            st.current.oob_accesses += st.stores.touch(active, es)
        return orig_store(self, ptrs, value, mask, cache_policy)

    patch(builder_cls, "create_masked_load", create_masked_load)
    patch(builder_cls, "create_masked_store", create_masked_store)

    reduce_cls = interp.ReduceOps
    orig_apply = reduce_cls.__dict__["apply_impl"]

    def apply_impl(self, input):
        if st.current is not None:
            for t in input:
                if t.dtype.scalar.is_floating():
                    st.current.simt_flops += t.handle.data.size
        return orig_apply(self, input)

    patch(reduce_cls, "apply_impl", apply_impl)

    # The interpreter's integer-overflow sanitizer adds checking ops a GPU build does not run
    # (it is a debug option there): off while counting, so it neither costs time nor counts.
    import dataclasses

    saved_options = interp.interpreter_builder.options
    interp.interpreter_builder.options = dataclasses.replace(saved_options, sanitize_overflow=False)

    grid_cls = interp.GridExecutor
    orig_call = grid_cls.__dict__["__call__"]

    def call(self, *args_dev, **kwargs):
        ranges = _tensor_ranges(args_dev, kwargs)
        # generated kernels are named <kind>__<tile>_<hash>: report the kind
        name = getattr(self.fn, "__name__", "kernel").lstrip("_").split("__")[0]
        st.current = LaunchCount(name, (0, 0, 0))
        st.loads, st.stores = _Footprint(ranges), _Footprint(ranges)
        try:
            out = orig_call(self, *args_dev, **kwargs)
        finally:
            lc = st.current
            lc.grid = tuple(interp.interpreter_builder.grid_dim)
            lc.programs = int(np.prod(lc.grid))
            lc.unique_load_bytes, lc.unique_load_sectors = st.loads.bytes_and_sectors()
            lc.unique_store_bytes, lc.unique_store_sectors = st.stores.bytes_and_sectors()
            st.launches.append(lc)
            st.current = None
        return out

    patch(grid_cls, "__call__", call)
    try:
        yield st.launches
    finally:
        for (owner, name), fn in saved.items():
            setattr(owner, name, fn)
        interp.interpreter_builder.options = saved_options
