"""Packed sparse Winograd weights and the sparse multiply (Triton under the interpreter, torch path).

Oracle: the float64 Winograd convolution with the same q (a pruned q is in general not G W Gᵀ of
any spatial weight, so this *is* the float64 layer). Tolerance rule: tests/_tolerance.py.
"""


import pytest
import torch

from tritonwino import reference
from tritonwino.sparse_conv import PackedWinogradWeight, pack_winograd_weight, sparse_winograd_conv2d
from tritonwino.testing import random_pruned_q

from ._tolerance import assert_close_rule

pytestmark = pytest.mark.kernels

BLOCKS = [(1, 1), (16, 1), (32, 1), (16, 16)]


def _q(k, c, m, pattern, gen, block=(1, 1)):
    q = random_pruned_q(k, c, m, 3, 0.6 if pattern == "random" else 0.0, block, generator=gen)
    if pattern == "all_pruned":
        q = torch.zeros_like(q)
    elif pattern == "position_pruned":
        q[:, :, 1, 2] = 0
    elif pattern == "channel_pruned":
        q[3] = 0
    return q


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b[0]}x{b[1]}")
@pytest.mark.parametrize("pattern", ["random", "all_kept", "all_pruned", "position_pruned", "channel_pruned"])
def test_sparse_matches_float64_fp32(block, pattern, device):
    gen = torch.Generator().manual_seed(1)
    q = _q(19, 21, 4, pattern, gen, block)
    x = torch.randn(2, 21, 9, 7, generator=gen).to(device)
    bias = torch.randn(19, generator=gen).to(device)
    packed = pack_winograd_weight(q, block).to(device)
    oracle = reference.winograd_conv2d_q(x.double(), q.to(device), bias.double(), 1, 4, 3)
    y = sparse_winograd_conv2d(x, packed, bias, 1, backend="triton")
    y_torch = sparse_winograd_conv2d(x, packed, bias, 1, backend="torch")
    assert_close_rule(y, y_torch, oracle, 4)
    if pattern == "all_pruned":
        assert torch.equal(y, bias.view(1, -1, 1, 1).expand_as(y))


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_sparse_dtypes_layouts(m, dtype, channels_last, device):
    gen = torch.Generator().manual_seed(2)
    q = _q(17, 18, m, "random", gen, (16, 1))
    x = torch.randn(3, 18, 11, 6, generator=gen).to(device).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    packed = pack_winograd_weight(q, (16, 1)).to(device)
    oracle = reference.winograd_conv2d_q(x.double(), q.to(device), None, 2, m, 3)
    y = sparse_winograd_conv2d(x, packed, None, 2, backend="triton")
    y_torch = sparse_winograd_conv2d(x, packed, None, 2, backend="torch")
    assert y.dtype == dtype
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert_close_rule(y, y_torch, oracle, m)


def test_dense_q_sparse_path_equals_conv2d(device):
    """Unpruned: the sparse path is an ordinary convolution."""
    w = torch.randn(8, 5, 3, 3, device=device)
    x = torch.randn(1, 5, 10, 10, device=device)
    packed = pack_winograd_weight(reference.winograd_weight(w, 4), (16, 1))
    y = sparse_winograd_conv2d(x, packed, None, 1, backend="triton")
    ref = torch.nn.functional.conv2d(x.double(), w.double(), padding=1)
    assert (y.double() - ref).abs().max() <= 2e-5 * ref.abs().max()


# ---------------------------------------------------------------------------------------------
# Packing

def test_pack_roundtrip_metadata_and_save(tmp_path):
    q = _q(40, 24, 4, "random", torch.Generator().manual_seed(4), (16, 4))
    p = pack_winograd_weight(q, (16, 4))
    assert torch.equal(p.unpack(), q)
    assert (p.m, p.r, p.n, p.K, p.C, p.block, p.group_k) == (4, 3, 6, 40, 24, (16, 4), 16)
    assert p.indices.dtype == torch.int16  # C < 32768
    assert p.nbytes == p.values.numel() * 8 + p.indices.numel() * 2 + p.offsets.numel() * 4
    assert 0 < p.density < 1 and p.sparsity_signature.startswith("gk16-bc4-d")
    torch.save(p, tmp_path / "w.pt")
    p2 = torch.load(tmp_path / "w.pt")  # the default weights_only=True load works
    assert isinstance(p2, PackedWinogradWeight) and torch.equal(p2.unpack(), q)
    p2.validate()
    p16 = p.to(dtype=torch.float16)
    assert p16.values.dtype == torch.float16 and p16.nbytes < p.nbytes


def test_element_granularity_groups_by_kernel_block():
    q = torch.zeros(20, 8, 6, 6, dtype=torch.float64)
    q[0, 3, 0, 0] = 1.0   # group 0 keeps channel 3 at position 0
    q[19, 5, 5, 5] = 2.0  # group 1 (rows 16..31, padded) keeps channel 5 at position 35
    p = pack_winograd_weight(q, (1, 1))
    assert p.group_k == 16 and p.nnz_channels == 2
    assert p.indices.tolist() == [3, 5]
    assert torch.equal(p.unpack(), q)


def test_fp16_packed_bytes_at_75_percent():
    """Issue target: packed fp16 F(4,3) weights at 75% Winograd sparsity with (16, 1) take at most
    1.15x the dense spatial weight bytes (9 values per (k, c) pair in fp16)."""
    k = c = 64
    gen = torch.Generator().manual_seed(5)
    q = reference.winograd_weight(torch.randn(k, c, 3, 3, generator=gen), 4)
    keep = (torch.rand(k // 16, c, 6, 6, generator=gen) >= 0.75).repeat_interleave(16, 0)
    p = pack_winograd_weight(q * keep, (16, 1), dtype=torch.float16)
    dense_spatial = k * c * 9 * 2
    assert p.nbytes <= 1.15 * dense_spatial, (p.nbytes, dense_spatial)


@pytest.mark.parametrize(
    "q,kwargs,exc,match",
    [
        (torch.zeros(4, 4, 6), {}, ValueError, "K, C, n, n"),
        (torch.zeros(4, 4, 6, 6, dtype=torch.int32), {}, TypeError, "floating"),
        (torch.zeros(4, 4, 2, 2), {}, ValueError, "not a tile"),
        (torch.zeros(4, 4, 6, 6), {"block": (8, 1)}, ValueError, "bk must be"),
        (torch.zeros(4, 4, 6, 6), {"block": (16, 0)}, ValueError, "block sizes must be >= 1"),
        (torch.zeros(4, 4, 6, 6), {"block": (16,)}, ValueError, "pair"),
        (torch.zeros(4, 4, 6, 6), {"points": [0, 1, 1, 2, -2]}, ValueError, "distinct"),
        (torch.full((4, 4, 6, 6), float("nan")), {}, ValueError, "NaN"),
    ],
)
def test_pack_bad_input(q, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        pack_winograd_weight(q, **kwargs)


def test_tampered_packed_weight_is_refused(tmp_path):
    p = pack_winograd_weight(torch.ones(16, 8, 4, 4), (16, 1), r=3)
    p.indices[0] = 8  # beyond C
    with pytest.raises(ValueError, match="outside"):
        p.validate()
    torch.save(p, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="outside"):
        torch.load(tmp_path / "bad.pt")


def test_sparse_conv_bad_inputs(device):
    p = pack_winograd_weight(torch.ones(16, 8, 6, 6), (16, 1))
    with pytest.raises(ValueError, match="channels"):
        sparse_winograd_conv2d(torch.randn(1, 7, 8, 8), p)
    with pytest.raises(TypeError, match="PackedWinogradWeight"):
        sparse_winograd_conv2d(torch.randn(1, 8, 8, 8), torch.ones(16, 8, 6, 6))
    with pytest.raises(ValueError, match="4-D"):
        sparse_winograd_conv2d(torch.randn(8, 8, 8), p)
    y = sparse_winograd_conv2d(torch.randn(0, 8, 8, 8, device=device), p.to(device), padding=1, backend="triton")
    assert y.shape == (0, 16, 8, 8)


# ---------------------------------------------------------------------------------------------
# Autotuning per sparsity pattern, persisted in the tuning cache

def test_autotune_per_sparsity_signature_persists(monkeypatch):
    from tritonwino.kernels.fused_multiply import FusedConfig

    from tritonwino import _triton_path, tuning
    from tritonwino.tuning import select

    gen = torch.Generator().manual_seed(6)
    x = torch.randn(1, 32, 8, 8, generator=gen)
    cands = [FusedConfig(64, 16, 4, 1), FusedConfig(64, 32, 4, 1)]
    qa = _q(16, 32, 2, "random", gen, (16, 1))
    qb = qa[:, torch.randperm(32, generator=gen)]  # another mask with exactly the same density
    pa, pb = pack_winograd_weight(qa, (16, 1)), pack_winograd_weight(qb, (16, 1))
    assert not torch.equal(pa.indices, pb.indices)
    pc = pack_winograd_weight(qa * (torch.rand(qa.shape, generator=gen) > 0.5), (1, 1))
    tuning.get_cache().clear()
    select.clear_memo()

    def call(p):
        return _triton_path.SparseCall(x, p, p.values_as(torch.float32), None, (1, 1))

    t = call(pa).t_total
    cfg = select.sparse_config(call(pa), "two-kernel", candidates=cands)
    assert cfg in cands
    key_a = select.sparse_key(t, pa, torch.float32, False, "two-kernel")
    entry = tuning.get_cache().get_entry(select.SPARSE_KERNEL, key_a)
    assert entry is not None and len(entry["timings"]) == 2  # both candidates were timed

    # Later calls (new process = empty memo) read the file and time nothing.
    select.clear_memo()
    monkeypatch.setattr(select, "do_bench_ms", lambda fn, **kw: (_ for _ in ()).throw(AssertionError("timed")))
    assert select.sparse_key(t, pb, torch.float32, False, "two-kernel") == key_a  # the signature, not the mask
    assert select.sparse_config(call(pb), "two-kernel", candidates=cands) == cfg
    assert select.sparse_config(call(pa), "two-kernel", candidates=cands) == cfg
    # A different density, or the other kernel path, is a different key (and would be tuned anew).
    assert select.sparse_key(t, pc, torch.float32, False, "two-kernel") != key_a
    assert select.sparse_key(t, pa, torch.float32, False, "one-kernel") != key_a
    # The exact batch is not in the key: tile counts in one power-of-two bucket share it.
    assert select.sparse_key(t - 3, pa, torch.float32, False, "two-kernel") == key_a


def test_int32_indices_give_the_same_result(device):
    """Layers with more than 32767 input channels get int32 indices; the kernel reads both."""
    import dataclasses

    gen = torch.Generator().manual_seed(7)
    q = _q(16, 24, 2, "random", gen, (16, 1))
    p16 = pack_winograd_weight(q, (16, 1)).to(device)
    p32 = dataclasses.replace(p16, indices=p16.indices.to(torch.int32), _cast_cache={})
    p32.validate()
    x = torch.randn(1, 24, 7, 9, generator=gen).to(device)
    with torch.no_grad():
        y16 = sparse_winograd_conv2d(x, p16, None, 1, backend="triton")
        y32 = sparse_winograd_conv2d(x, p32, None, 1, backend="triton")
    assert p16.indices.dtype == torch.int16 and torch.equal(y16, y32)
    assert p32.nbytes - p16.nbytes == 2 * p16.nnz_channels
