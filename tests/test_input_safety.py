"""No silent wrong answers (issue 11, core): every input a user can give gets a correct result or a
clear error, on both paths. One regression test per bug found; the property-based sweep is in
tests/test_properties.py, the >= 1000-case fuzz run in bench/fuzz.py.

Oracle: float64 ``F.conv2d`` (or the float64 Winograd layer of the same Q for pruned weights).
"""

from __future__ import annotations

import dataclasses
import io
import pickle

import pytest
import torch
import torch.nn.functional as F

from tritonwino import _checks, _triton_path, reference
from tritonwino.functional import winograd_conv2d_pck
from tritonwino.packing import PackedWinogradWeight, pack_winograd_weight, packed_from_arrays
from tritonwino.sparse_conv import SparseWinogradConv2d, sparse_winograd_conv2d, winograd_conv2d
from tritonwino.testing import random_pruned_q
from tritonwino.transforms import ACCURATE_POINTS, accurate_points, default_points, input_transform_gain

from ._tolerance import REL_BOUND

BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.kernels)]


def _rel(y: torch.Tensor, oracle: torch.Tensor) -> float:
    return float((y.double() - oracle).abs().max() / oracle.abs().max())


def _packed_case(seed: int = 0, k: int = 6, c: int = 8, block=(1, 1)):
    gen = torch.Generator().manual_seed(seed)
    q = random_pruned_q(k, c, 4, 3, 0.5, block, generator=gen)
    x = torch.randn(1, c, 7, 9, generator=gen)
    oracle = reference.winograd_conv2d_q(x.double(), q, None, 1, 4, 3)
    return pack_winograd_weight(q.float(), block), x, oracle


# ---------------------------------------------------------------------------------------------
# 1. A non-contiguous or stride-0 bias (the output kernel indexed bias_ptr + k).

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["strided", "expanded_scalar", "fp64"])
def test_bias_of_any_stride(backend, kind):
    gen = torch.Generator().manual_seed(1)
    x, w = torch.randn(1, 5, 9, 7, generator=gen), torch.randn(6, 5, 3, 3, generator=gen)
    bias = {"strided": torch.randn(12, generator=gen)[::2],
            "expanded_scalar": torch.tensor(0.5).expand(6),
            "fp64": torch.randn(6, generator=gen, dtype=torch.float64)}[kind]
    oracle = F.conv2d(x.double(), w.double(), bias.double(), padding=1)
    with torch.no_grad():
        y = winograd_conv2d(x, w, bias, 1, 4, backend)
        q = reference.winograd_weight(w, 4).float()
        ys = sparse_winograd_conv2d(x, pack_winograd_weight(q, (16, 1)), bias, 1, backend)
    assert _rel(y, oracle) < REL_BOUND[(4, torch.float32)]
    assert _rel(ys, oracle) < REL_BOUND[(4, torch.float32)]


# ---------------------------------------------------------------------------------------------
# 2. A corrupt packed weight is refused before any kernel could read out of bounds, on both paths.

def _tampered(p: PackedWinogradWeight, **kw) -> PackedWinogradWeight:
    return dataclasses.replace(p, _cast_cache={}, **kw)


def _set(t: torch.Tensor, i: int, v) -> torch.Tensor:
    t = t.clone()
    t[i] = v
    return t


CORRUPTIONS = {
    "index 32767": (lambda p: _tampered(p, indices=_set(p.indices, 0, 32767)), ValueError, "outside"),
    "index == C": (lambda p: _tampered(p, indices=_set(p.indices, 0, p.C)), ValueError, "outside"),
    "index -1": (lambda p: _tampered(p, indices=_set(p.indices, 0, -1)), ValueError, "outside"),
    "C below the largest index": (lambda p: _tampered(p, C=2), ValueError, "outside"),
    "offsets past nnz": (lambda p: _tampered(p, offsets=_set(p.offsets, -1, 10**6)), ValueError, "end at nnz"),
    "offsets not monotone": (lambda p: _tampered(p, offsets=_set(p.offsets, 3, 0)), ValueError, "non-decreasing"),
    "offsets wrong length": (lambda p: _tampered(p, offsets=p.offsets[:-1]), ValueError, "entries"),
    "repeated index in a group": (lambda p: _tampered(p, indices=_set(p.indices, 1, p.indices[0])), ValueError,
                                  "ascending"),
    "short values": (lambda p: _tampered(p, values=p.values[:-1]), ValueError, "values must be"),
    "int64 indices": (lambda p: _tampered(p, indices=p.indices.long()), ValueError, "int16 or int32"),
    "float indices": (lambda p: _tampered(p, indices=p.indices.float()), ValueError, "int16 or int32"),
    "int values": (lambda p: _tampered(p, values=p.values.int()), ValueError, "values must be float"),
    "indices on another device": (lambda p: _tampered(p, indices=p.indices.to("meta")), ValueError, "one device"),
    "group_k tampered": (lambda p: _tampered(p, group_k=32), ValueError, "values must be"),
    "group_k unsupported": (lambda p: _tampered(p, group_k=8), ValueError, "group_k"),
    "block tampered": (lambda p: _tampered(p, block=(32, 1)), ValueError, "group_k"),
    "K tampered": (lambda p: _tampered(p, K=40), ValueError, "offsets must have"),
    "m as a string": (lambda p: _tampered(p, m="4"), ValueError, "m must be an int"),
    "points as one string": (lambda p: _tampered(p, points="0,1,-1,2,-2"), ValueError, "points must be a tuple"),
    "values not a tensor": (lambda p: _tampered(p, values=p.values.tolist()), TypeError, "values must be a torch"),
}


# refused before any launch (no kernels marker); the Triton path is inference-only
@pytest.mark.parametrize("backend,grad", [("torch", False), ("torch", True), ("triton", False)],
                         ids=["torch", "torch-autograd", "triton"])
@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_packed_weight_is_refused(case, backend, grad):
    make, exc, match = CORRUPTIONS[case]
    p, x, _ = _packed_case()
    bad = make(p)
    if isinstance(bad.C, int) and bad.C < x.shape[1]:
        x = x[:, : bad.C]  # an input that matches the (tampered) layer
    if grad and isinstance(bad.values, torch.Tensor) and bad.values.is_floating_point():
        bad.values.requires_grad_(True)
    with torch.set_grad_enabled(grad), pytest.raises(exc, match=match):
        sparse_winograd_conv2d(x, bad, None, 1, backend)


def test_validation_runs_once_per_array_version(monkeypatch):
    """Validation reads the arrays (a host sync on a GPU): once per object and change, not per call."""
    p, x, oracle = _packed_case(2)
    calls = []
    real = PackedWinogradWeight.validate
    monkeypatch.setattr(PackedWinogradWeight, "validate", lambda self: (calls.append(1), real(self))[1])
    for _ in range(3):
        sparse_winograd_conv2d(x, p, None, 1, "torch")
    assert len(calls) == 1
    p.offsets[-1] += 0  # an in-place edit (even a no-op one) re-validates
    sparse_winograd_conv2d(x, p, None, 1, "torch")
    assert len(calls) == 2
    p.indices[0] = p.C  # a corrupting in-place edit is caught
    with pytest.raises(ValueError, match="outside"):
        sparse_winograd_conv2d(x, p, None, 1, "torch")
    p.indices[0] = 0
    corrupt = p.indices.clone()
    corrupt[0] = p.C
    p.indices.data = corrupt  # a storage swapped in through .data bumps no version counter
    with pytest.raises(ValueError, match="outside"):
        sparse_winograd_conv2d(x, p, None, 1, "torch")


def test_registry_keeps_no_packed_weight_alive():
    import gc
    import weakref

    from tritonwino import packing

    p, x, _ = _packed_case(3)
    sparse_winograd_conv2d(x, p, None, 1, "torch")
    ref = weakref.ref(p.values)
    assert id(p.values) in packing._REGISTRY
    del p
    gc.collect()
    assert ref() is None  # the registry held the arrays only weakly


def test_indices_edited_in_place_are_used_not_a_stale_cache():
    """A valid in-place edit of indices gives the result of the new indices on the torch path (its
    padded-slab cache is per array version through the registry)."""
    gen = torch.Generator().manual_seed(4)
    q = random_pruned_q(6, 8, 4, 3, 0.5, (16, 1), generator=gen)
    q[:, 7] = 0  # channel 7 is never kept, so moving channel 6's slots there keeps indices ascending
    p = pack_winograd_weight(q.float(), (16, 1))
    x = torch.randn(1, 8, 7, 9, generator=gen)
    y0 = sparse_winograd_conv2d(x, p, None, 1, "torch")
    p.indices[p.indices == 6] = 7
    moved = q.clone()
    moved[:, 7], moved[:, 6] = q[:, 6], 0
    y1 = sparse_winograd_conv2d(x, p, None, 1, "torch")
    assert not torch.equal(y0, y1)
    assert _rel(y1, reference.winograd_conv2d_q(x.double(), moved, None, 1, 4, 3)) < REL_BOUND[(4, torch.float32)]


# ---------------------------------------------------------------------------------------------
# 3. Non-contiguous packed arrays never feed wrong strides to a kernel.

def _noncontig(t: torch.Tensor) -> torch.Tensor:
    out = torch.stack([t, torch.zeros_like(t)], -1)[..., 0]  # same values, every stride doubled
    assert not out.is_contiguous() and torch.equal(out, t)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", ["values", "values_transposed", "indices", "offsets"])
def test_non_contiguous_packed_arrays(backend, which, tmp_path):
    p, x, oracle = _packed_case(5)
    if which == "values_transposed":
        bad = _tampered(p, values=p.values.t().contiguous().t())
        assert not bad.values.is_contiguous()
    else:
        bad = _tampered(p, **{which: _noncontig(getattr(p, which))})
    torch.save(bad, tmp_path / "w.pt")
    loaded = torch.load(tmp_path / "w.pt")  # torch.save keeps the strides
    layer = SparseWinogradConv2d(p, None, 1, backend=backend)
    state = layer.state_dict()
    state[f"packed_{which.split('_')[0]}"] = getattr(bad, which.split("_")[0])
    layer.load_state_dict(state)
    with torch.no_grad():
        for packed in (bad, loaded):
            assert _rel(sparse_winograd_conv2d(x, packed, None, 1, backend), oracle) < REL_BOUND[(4, torch.float32)]
        assert _rel(layer(x), oracle) < REL_BOUND[(4, torch.float32)]


# ---------------------------------------------------------------------------------------------
# 4. Tiles whose rounding makes the result garbage are refused, with the way out in the message.

@pytest.mark.parametrize("backend", ["torch", "triton"])  # refused before any launch
@pytest.mark.parametrize("tile", [(6, 5), (8, 3), (4, 7)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_with_n_above_8_is_refused(tile, dtype, backend):
    m, r = tile
    x, w = torch.randn(1, 4, 12, 12).to(dtype), torch.randn(4, 4, r, r).to(dtype)
    match = rf"F\({m},{r}\) \(input tile n = {m + r - 1}\) is not supported in {str(dtype)[6:]}.*float32"
    with pytest.raises(ValueError, match=match):
        # decompose=False: the single F(m, r) tile (by default a 5x5 / 7x7 kernel runs as F(m, 3)
        # pieces of the decomposable Winograd method, n = m + 2, which fp16 handles for m <= 6)
        winograd_conv2d(x, w, None, r // 2, m, backend, decompose=False)
    q = reference.winograd_weight(w.float(), m)
    with pytest.raises(ValueError, match=match):
        pack_winograd_weight(q, (16, 1), r=r, dtype=dtype)  # half storage of such a Q is garbage too
    packed = pack_winograd_weight(q.float(), (16, 1), r=r)
    with pytest.raises(ValueError, match=match):
        sparse_winograd_conv2d(x, packed, None, r // 2, backend)
    q_pck = q.permute(2, 3, 1, 0).reshape((m + r - 1) ** 2, 4, 4).to(dtype)
    with pytest.raises(ValueError, match=match):
        winograd_conv2d_pck(x.float(), q_pck, None, r // 2, m, r, backend=backend)
    with pytest.raises(ValueError, match=match):  # the pruning layers' training path
        reference.winograd_conv2d_q(x, q.to(dtype), None, r // 2, m, r)


def test_fp32_limits_and_what_still_runs():
    x, w = torch.randn(1, 3, 16, 16), torch.randn(2, 3, 3, 3)
    oracle = F.conv2d(x.double(), w.double(), padding=1)
    assert _rel(winograd_conv2d(x, w, None, 1, 8, "torch"), oracle) < 1e-2  # F(8,3) in fp32: usable
    with pytest.raises(ValueError, match=r"F\(12,3\).*not supported in float32.*float64"):
        winograd_conv2d(x, w, None, 1, 12, "torch")  # fp32 error ~1 at n = 14
    y = winograd_conv2d(x.double(), w.double(), None, 1, 12, "torch")
    assert _rel(y, oracle) < 1e-6
    with pytest.raises(ValueError, match="tiles beyond n = 16"):
        winograd_conv2d(x.double(), w.double(), None, 1, 10**6, "torch")  # a typo'd m: no hour-long build


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the 1.02x case, on purpose
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m", [2, 4, 6])
def test_fp16_safe_input_range(m, backend):
    """Documented limit (README support matrix): fp16 inputs are safe while
    max|x| <= 65504 / input_transform_gain(m, 3) (V = Bᵀ X B is stored in fp16). The worst-case tile
    (signs following the largest row of Bᵀ) at 0.98x that bound stays finite and accurate; at 1.02x
    V overflows and the output is not finite. Issue 14 (operand scaling) is to lift this limit."""
    n = m + 2
    _, _, bt = reference.matrices(m, 3)
    row = int(bt.abs().sum(1).argmax())
    sign = torch.sign(bt[row])
    pattern = torch.outer(sign, sign).float()  # V[row, row] = max|x| * gain
    bound = 65504 / input_transform_gain(m, 3)
    w = torch.zeros(1, 1, 3, 3)
    w[0, 0, 1, 1] = 1.0  # identity filter: the exact output is the input's centre, well inside fp16
    results = {}
    for factor in (0.98, 1.02):
        x = (pattern * bound * factor).half().view(1, 1, n, n)
        with torch.no_grad():
            results[factor] = winograd_conv2d(x, w.half(), None, 0, m, backend)
        oracle = F.conv2d(x.double(), w.double())
        if factor < 1:
            assert torch.isfinite(results[factor]).all()
            assert _rel(results[factor], oracle) < REL_BOUND[(m, torch.float16)]
    assert not torch.isfinite(results[1.02]).all()


# ---------------------------------------------------------------------------------------------
# 6. Packing into a dtype that would truncate the weights.

@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.int8, "float16"], ids=str)
def test_pack_refuses_non_float_storage(dtype):
    with pytest.raises(TypeError, match="float32, float16, bfloat16 or float64"):
        pack_winograd_weight(torch.randn(16, 4, 6, 6), (16, 1), dtype=dtype)


# ---------------------------------------------------------------------------------------------
# 9. The 2^31-element refusal on the functional Triton path, before anything is allocated.

def test_index_limit_on_the_functional_triton_path_before_allocating(monkeypatch):
    monkeypatch.setattr(_triton_path, "INDEX_LIMIT", 1000)

    def no_alloc(*a, **k):
        raise AssertionError("the Triton path started work before checking the size")

    monkeypatch.setattr(_triton_path, "input_transform", no_alloc)
    p, x, _ = _packed_case(6)
    w = torch.randn(6, 8, 3, 3)
    with torch.no_grad():
        with pytest.raises(ValueError, match="2147483648|1000 or more elements"):
            winograd_conv2d(x, w, None, 1, 4, "triton")
        with pytest.raises(ValueError, match="1000 or more elements"):
            sparse_winograd_conv2d(x, p, None, 1, "triton")
        with pytest.raises(ValueError, match="1000 or more elements"):
            winograd_conv2d_pck(x, reference.winograd_weight(w, 4).permute(2, 3, 1, 0).reshape(36, 8, 6).float(),
                                None, 1, 4, 3, backend="triton")
        # the torch path has no such limit
        assert winograd_conv2d(x, w, None, 1, 4, "torch").shape == (1, 6, 7, 9)


# ---------------------------------------------------------------------------------------------
# 11. Clear errors instead of AssertionError / TypeError from deep inside / C++ stack traces.

@pytest.mark.parametrize("case", ["int64 indices", "offsets wrong length", "group_k tampered", "K tampered"])
def test_launch_path_refuses_before_the_launchers_assert(case):
    p, x, _ = _packed_case(7)
    make, exc, match = CORRUPTIONS[case]
    with torch.no_grad(), pytest.raises(exc, match=match):
        _triton_path.sparse_winograd_conv2d(x, make(p), None, (1, 1))


def test_dense_launch_path_refuses_a_mismatched_weight():
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad(), pytest.raises(ValueError, match="does not fit"):
        _triton_path.winograd_conv2d(x, torch.randn(25, 3, 4), None, (1, 1), 4, 3, default_points(6))
    with torch.no_grad(), pytest.raises(ValueError, match="does not fit"):
        _triton_path.winograd_conv2d(x, torch.randn(36, 2, 4), None, (1, 1), 4, 3, default_points(6))


@pytest.mark.parametrize("field,value,match", [
    ("m", "4", "m must be an int"),
    ("points", "0,1", "points must be a tuple"),
    ("block", "16x1", "block must be a pair"),
    ("values", [1.0, 2.0], "values must be a torch.Tensor"),
])
def test_unpickling_a_packed_weight_with_a_wrong_field_type(field, value, match):
    p, _, _ = _packed_case(8)
    state = p.__getstate__()
    state[field] = value
    blob = pickle.dumps(p)
    obj = PackedWinogradWeight.__new__(PackedWinogradWeight)
    with pytest.raises((ValueError, TypeError), match=match):
        obj.__setstate__(state)
    assert isinstance(pickle.loads(blob), PackedWinogradWeight)
    buf = io.BytesIO()
    torch.save(_tampered(p, **{field: value}), buf)
    buf.seek(0)
    with pytest.raises((ValueError, TypeError), match=match):
        torch.load(buf, weights_only=False)


def test_unpickling_a_state_with_missing_fields():
    with pytest.raises(ValueError, match="missing"):
        PackedWinogradWeight.__new__(PackedWinogradWeight).__setstate__({"values": torch.zeros(1)})


@pytest.mark.parametrize("padding", [10**30, (1, 2**31)])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_huge_padding_is_a_clear_error(padding, backend):
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    with torch.no_grad(), pytest.raises(ValueError, match="too large"):
        winograd_conv2d(x, w, None, padding, 4, backend)
    p = pack_winograd_weight(reference.winograd_weight(w, 4).float(), (16, 1))
    with torch.no_grad(), pytest.raises(ValueError, match="too large"):
        sparse_winograd_conv2d(x, p, None, padding, backend)


def test_named_point_sets_on_every_path():
    from tritonwino.pruning import SpatialPruner, WinogradConv2d, importance_factor
    from tritonwino.sparse_conv import convert

    assert accurate_points(6) == ACCURATE_POINTS[6] and accurate_points(4) == default_points(4)
    gen = torch.Generator().manual_seed(9)
    x, w = torch.randn(1, 3, 8, 8, generator=gen), torch.randn(4, 3, 3, 3, generator=gen)
    for m in (2, 4, 6):
        n = m + 2
        for name, pts in (("standard", default_points(n)), ("accurate", accurate_points(n))):
            assert torch.equal(winograd_conv2d(x, w, None, 1, m, "torch", points=name),
                               winograd_conv2d(x, w, None, 1, m, "torch", points=pts))
            q = reference.winograd_weight(w, m, name).float()
            assert torch.equal(q, reference.winograd_weight(w, m, pts).float())
            p = pack_winograd_weight(q, (16, 1), points=name)
            assert p.points == tuple(str(v) for v in pts)
            assert torch.equal(importance_factor(m, 3, name), importance_factor(m, 3, pts))
            layer = WinogradConv2d(3, 4, 3, 1, m=m, points=name)
            assert layer.points == pts
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1))
    SpatialPruner(conv, m=4, points="accurate", keep_dense=None)
    convert(conv, m=4, block=(16, 1), points="accurate")
    assert conv[0].points == tuple(str(v) for v in ACCURATE_POINTS[6])
    for bad in ("Accurate", "0,1,-1,2,-2", "", "a"):
        with pytest.raises(ValueError, match="one of the names 'standard', 'accurate'"):
            winograd_conv2d(x, w, None, 1, 4, "torch", points=bad)
        with pytest.raises(ValueError, match="one of the names"):
            pack_winograd_weight(reference.winograd_weight(w, 4).float(), (16, 1), points=bad)
        with pytest.raises(ValueError, match="one of the names"):
            WinogradConv2d(3, 4, 3, 1, m=4, points=bad)
    with pytest.raises(ValueError, match="sequence of numbers"):
        winograd_conv2d(x, w, None, 1, 4, "torch", points=5)


def test_packed_from_arrays_refuses_non_tensors():
    p, _, _ = _packed_case(10)
    with pytest.raises(TypeError, match="indices must be a torch.Tensor"):
        packed_from_arrays(p.values, p.indices.tolist(), p.offsets, 4, 3, p.K, p.C, p.block, p.group_k, p.points)


def test_check_tile_dtype_message_names_tile_dtype_and_alternatives():
    with pytest.raises(ValueError) as e:
        _checks.check_tile_dtype(6, 5, torch.float16)
    msg = str(e.value)
    assert "F(6,5)" in msg and "float16" in msg and "float32" in msg and "n = m + r - 1 <= 8" in msg
