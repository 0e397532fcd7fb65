"""``nn.Module`` integration: ``SparseWinogradConv2d``, ``convert``, ``compact_state_dict``,
``tune_model`` and ``explain`` (all re-exported by ``tritonwino.sparse_conv``).

A converted layer holds the packed Winograd-domain weight (values + indices + offsets as
buffers), the bias, and, when it was built from a spatial conv, the spatial weight W that Q was
computed from. Its ``state_dict`` stores the smaller exact form: W when it is the exact source of
Q (the dense conv's bytes; Q is re-derived bit-identically at load), else the packed arrays in
the layer's dtype, plus the metadata (tile, points, block, shapes) under ``_extra_state``. With
``backend="auto"`` every forward runs the path ``tritonwino.dispatch`` measured fastest for that
input-shape bucket (conv2d, dense Winograd or sparse Winograd); the dense Q those paths may need is
rebuilt from the packed weight in memory (non-persistent buffers), never saved.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from . import _checks, dispatch, dwm, functional, ops, reference
from .packing import (
    DEFAULT_ELEMENT_GROUP_K,
    SUPPORTED_GROUP_K,
    PackedWinogradWeight,
    array_token,
    check_kernel_block,
    index_dtype,
    pack_winograd_weight,
    packed_from_arrays,
)
from .tables import format_cell, markdown_table
from .transforms import normalize_points, spatial_from_winograd

__all__ = ["ExplainTable", "SparseWinogradConv2d", "compact_state_dict", "convert", "explain", "ineligible_reason",
           "tune_model"]

logger = logging.getLogger("tritonwino")


STATE_FORMAT = 2  # 1: packed arrays only (still loads)
_ARRAYS = ("packed_values", "packed_indices", "packed_offsets")
_WEIGHT = "weight"
# The checkpoint forms of a layer's weight and their state_dict entries (``_storage`` picks one).
_FORMS = {"spatial": (_WEIGHT,), "spatial_sparse": ("weight_mask", "weight_nonzeros"), "packed": _ARRAYS}
# Forward / backward hook dicts a converted layer takes over from the conv it replaces.
_HOOK_DICTS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks", "_forward_hooks_with_kwargs",
               "_forward_hooks_always_called", "_backward_pre_hooks", "_backward_hooks")


def _own(t: torch.Tensor) -> torch.Tensor:
    # An inference tensor (made under torch.inference_mode()) has no version counter and cannot be
    # saved for backward: a buffer must outlive the mode it was made in.
    return t.clone() if t.is_inference() else t


class SparseWinogradConv2d(torch.nn.Module):
    """A r×r stride-1 convolution run as a (sparse) Winograd convolution — or, when the packed weight
    has a ``decomposition``, a k×k stride-1/2 one run by the decomposable Winograd method
    (``tritonwino.dwm``), or Liu et al.'s Winograd-ReLU layer with ``winograd_relu=True``.

    Inference module: the packed weight is frozen (buffers). A forward that needs gradients (input
    with ``requires_grad`` under grad mode) runs the differentiable pure-torch path, so gradients
    reach earlier layers; the Triton path is inference-only and says so. To *train* the weight, use
    ``tritonwino.pruning.WinogradConv2d`` and convert afterwards.

    It reads like the ``nn.Conv2d`` it replaces (``in_channels``, ``out_channels``,
    ``kernel_size``, ``stride``, ``padding``, ``dilation``, ``groups``, ``padding_mode``,
    ``bias``) and takes unbatched (C, H, W) input. ``weight`` is the spatial weight W (a copy)
    where one exists exactly (a layer built from a spatial conv), else None; assigning
    ``layer.weight = w`` re-derives Q = G W Gᵀ and re-packs it at the layer's block (what
    ``torch.nn.utils.fusion.fuse_conv_bn_eval`` does).

    Args:
        packed: the packed Winograd-domain weight (``pack_winograd_weight``).
        bias: optional (K,) bias.
        padding: int or (ph, pw).
        backend: ``"auto"`` (measured dispatch among conv2d / dense / sparse Winograd, see
            ``tritonwino.dispatch``), ``"torch"``, ``"triton"`` or ``"cpu"`` (always the sparse path of that
            backend; the C++ ``"cpu"`` kernels run plain convolutions only, so a decomposed or
            Winograd-ReLU layer runs the torch path there, see ``ops.cpu_runs``).
        winograd_relu: compute ``Aᵀ[Q ⊙ ReLU(Bᵀ X B)]A`` (a Winograd-ReLU layer: no conv2d path).
        split_operands: for float16/bfloat16 inputs, run the dense and sparse paths with V and Q as
            half hi + lo pairs (``functional.winograd_conv2d``; 3× the Winograd-domain products).
            Q gains only when the layer's weight is fp32 (half inputs under autocast); after
            ``model.half()`` only V does. A plain attribute: set it on a built layer as well.

    Example:
        >>> conv = torch.nn.Conv2d(8, 16, 3, padding=1)
        >>> layer = SparseWinogradConv2d.from_conv2d(conv, m=4, block=(16, 1))
        >>> x = torch.randn(2, 8, 12, 12)
        >>> bool(torch.allclose(layer(x), conv(x), atol=1e-4))
        True
    """

    # a class default too: layers pickled before the option existed have no instance attribute
    split_operands = False
    packed_values: torch.Tensor
    packed_indices: torch.Tensor
    packed_offsets: torch.Tensor

    def __init__(self, packed: PackedWinogradWeight, bias: torch.Tensor | None, padding: int | tuple[int, int],
                 backend: str = "auto", winograd_relu: bool = False, split_operands: bool = False):
        super().__init__()
        if not isinstance(packed, PackedWinogradWeight):
            raise TypeError(f"packed must be a PackedWinogradWeight, got {type(packed).__name__}")
        _checks.check_backend(backend)
        if not packed.values.is_meta:
            packed.validate()
        _checks.check_bias(bias, packed.K)
        self.padding = _checks.check_padding(padding)
        self.backend = backend
        self.in_channels, self.out_channels = packed.in_channels, packed.K
        self.m, self.r = packed.m, packed.r
        # a decomposed conv (tritonwino.dwm): its GEMM reads C·pieces virtual channels of r×r pieces
        self.decomposition, self.winograd_relu = packed.decomposition, bool(winograd_relu)
        self.split_operands = bool(split_operands)
        self._channels = packed.C
        # nn.Conv2d's attributes, for the tools that read them (FLOP counters, summaries, fusers)
        ks, st = packed.kernel_size, packed.stride
        self.kernel_size, self.stride, self.dilation, self.groups = (ks, ks), (st, st), (1, 1), 1
        self.padding_mode, self.transposed, self.output_padding = "zeros", False, (0, 0)
        self.points = tuple(packed.points)
        with torch.inference_mode(False):
            self.register_buffer("packed_values", None, persistent=False)
            self.register_buffer("packed_indices", None, persistent=False)
            self.register_buffer("packed_offsets", None, persistent=False)
            # Dense forms for the conv2d / dense-Winograd paths (built on demand), never saved; the
            # spatial weight is kept when it is the exact source of Q (the checkpoint stores it).
            self.register_buffer("_w_spatial", None, persistent=False)
            self.register_buffer("_q_pck", None, persistent=False)
            self.register_parameter("bias", None)
            if bias is not None:
                self.bias = torch.nn.Parameter(_own(bias.detach()).clone(), requires_grad=False)
        self._choices: dict[tuple, dispatch.Decision] = {}
        self._install(packed, None)

    # ---- construction -----------------------------------------------------------------------
    @classmethod
    def from_conv2d(cls, conv: torch.nn.Module, m: int = 4, block: Sequence[int] = (16, 1),
                    backend: str = "auto", points: Sequence[object] | None = None,
                    q: torch.Tensor | None = None, decompose: bool | None = None) -> SparseWinogradConv2d:
        """Build from a (pruned) ``nn.Conv2d``: Q = G W Gᵀ in float64 (W times the conv's
        ``spatial_mask`` if spatial pruning attached one), cast to the conv's dtype; its exact zeros
        are the sparsity. The layer keeps W (its checkpoint stores W, not Q). Pass ``q`` to use a
        Winograd-domain weight directly. A ``tritonwino.pruning.WinogradConv2d`` is taken as well
        (its own tile, points and mask; ``m``/``points`` are then ignored). Stride 2 and kernels
        larger than 3×3 are decomposed into ≤3×3 pieces (``tritonwino.dwm.plan``; ``decompose``
        overrides), Q then being the pieces' (K, C·pieces, n, n) weight."""
        if _packs_itself(conv):
            return cls.from_winograd_conv2d(conv, block, backend)
        reason = ineligible_reason(conv)
        if reason:
            raise ValueError(f"cannot convert {conv}: {reason}")
        k, s = conv.kernel_size[0], conv.stride[0]
        d = dwm.plan(k, s, decompose)
        r = k if d is None else d.r
        dec = None if d is None else (k, s)
        pts = normalize_points(m, r, points)
        with torch.inference_mode(False):
            w = _own(conv.weight.detach())
            if q is not None:
                packed = _pack_or_pattern(q, block, r, pts, w.dtype, decomposition=dec)
                return cls(packed, conv.bias, _checks.conv_padding(conv), backend)
            mask = getattr(conv, "spatial_mask", None)
            w = w * mask.to(w.dtype) if isinstance(mask, torch.Tensor) else w.clone()
            packed, w = _pack_spatial(w, m, r, pts, block, decomposition=dec)
            layer = cls(packed, conv.bias, _checks.conv_padding(conv), backend)
            layer._install(packed, w)
        return layer

    @classmethod
    def from_winograd_conv2d(cls, layer: torch.nn.Module, block: Sequence[int] = (16, 1),
                             backend: str = "auto") -> SparseWinogradConv2d:
        """Build from a layer that packs itself, such as a pruned ``tritonwino.pruning.WinogradConv2d``:
        anything with ``to_packed(block) -> PackedWinogradWeight`` and ``bias`` / ``padding``
        attributes (the layer is not modified)."""
        if not _packs_itself(layer):
            raise TypeError(f"expected a layer with a to_packed(block) method (e.g. tritonwino.pruning."
                            f"WinogradConv2d), got {type(layer).__name__}")
        with torch.inference_mode(False):
            return cls(layer.to_packed(block), layer.bias, layer.padding, backend,
                       winograd_relu=bool(getattr(layer, "winograd_relu", False)))

    # ---- the packed weight and its derived forms ----------------------------------------------
    def _arrays(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.packed_values, self.packed_indices, self.packed_offsets

    def _install(self, packed: PackedWinogradWeight, source: torch.Tensor | None) -> None:
        """Make ``packed`` this layer's weight; ``source`` is the spatial W it was computed from
        (Q = G W Gᵀ, cast), or None. Everything derived from the old arrays is dropped."""
        with torch.inference_mode(False):
            self.packed_values = _own(packed.values)
            self.packed_indices = _own(packed.indices)
            self.packed_offsets = _own(packed.offsets)
            self._w_spatial = None if source is None else _own(source)
        self.block, self.group_k = tuple(packed.block), packed.group_k
        self._q_pck = None
        self._source = source is not None  # _w_spatial is the exact source of the arrays at _token
        self._exact: bool | None = True if source is not None else None  # Q has an exact spatial weight
        self._token = array_token(*self._arrays())
        self._choices.clear()

    def _refresh(self) -> None:
        """Drop every form derived from the packed arrays if they changed since (an in-place edit,
        ``load``, ``.data = ...``): the conv2d / dense paths must never run a stale weight, and the
        per-shape decisions (made for the old sparsity) are re-made. Host metadata only, no sync.
        Writes through ``tensor.data[...]`` bypass PyTorch's version counters and stay invisible."""
        token = array_token(*self._arrays())
        if token is not None and token == self._token:
            return
        self._token = token
        self._w_spatial = None
        self._q_pck = None
        self._source = False
        self._exact = None
        self._choices.clear()

    def _apply(self, fn, recurse=True):
        consistent = array_token(*self._arrays()) == self._token
        dtype = self.packed_values.dtype
        out = super()._apply(fn, recurse)
        if consistent:
            if self._source and self.packed_values.dtype != dtype and not self.packed_values.is_meta:
                # A dtype change rounds Q and W separately: re-derive Q from the converted W so that the
                # two stay exactly consistent (what a freshly converted model of that dtype holds).
                self._install(*_pack_spatial(self._w_spatial, self.m, self.r, self.points, self.block,
                                             self.group_k, self.decomposition))
            else:
                self._token = array_token(*self._arrays())  # moved or cast: still consistent
        return out

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_token"] = "consistent" if array_token(*self._arrays()) == self._token else None
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if "_token" not in state:  # pickled by tritonwino 0.1: persistent arrays, no spatial weight
            self._non_persistent_buffers_set.update(_ARRAYS)
            self.kernel_size, self.stride, self.dilation, self.groups = (self.r, self.r), (1, 1), (1, 1), 1
            self.padding_mode, self.transposed, self.output_padding = "zeros", False, (0, 0)
            self._source, self._exact, self._w_spatial, self._token = False, None, None, "consistent"
        if "decomposition" not in state:  # pickled before the decomposable Winograd method / Winograd-ReLU
            self.decomposition, self.winograd_relu, self._channels = None, False, self.in_channels
        # a copy (deepcopy, pickle) has new tensors: consistent before, consistent now
        if self._token == "consistent":
            self._token = array_token(*self._arrays())

    def __setattr__(self, name: str, value) -> None:
        if name == "weight" and "_choices" in self.__dict__:
            self.set_weight(value)
            return
        super().__setattr__(name, value)

    def __prepare_scriptable__(self):
        raise RuntimeError(
            "SparseWinogradConv2d does not support torch.jit.script (its forward dispatches in Python and calls "
            "torch.library custom ops; TorchScript is in maintenance mode). Use torch.export.export(model, (x,)) "
            "or torch.compile(model) instead; both work.")

    @property
    def weight(self) -> torch.Tensor | None:
        """The spatial weight W (K, C, k, k) with G W Gᵀ = Q, as a copy (edit the layer with
        ``layer.weight = w``); None when Q has no exact spatial weight (Winograd-domain pruning) and
        for a Winograd-ReLU layer (no convolution computes it)."""
        w = self.spatial_weight()
        return None if w is None else w.detach().clone()

    def set_weight(self, weight: torch.Tensor) -> None:
        """Replace the spatial weight: Q = G W Gᵀ (float64, cast to the layer's dtype), its exact
        zeros packed at this layer's block and group size (``layer.weight = w`` calls this).

        Args:
            weight: (K, C, k, k) floating tensor (a Parameter is taken by value); a decomposed
                layer splits it into its pieces again."""
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight must be a (K, C, k, k) tensor, got {type(weight).__name__}")
        shape = self._spatial_shape()
        if tuple(weight.shape) != shape or not weight.is_floating_point():
            raise ValueError(f"weight must be a floating tensor of shape {shape}, got {tuple(weight.shape)} "
                             f"{weight.dtype}")
        with torch.inference_mode(False):
            w = weight.detach().to(device=self.packed_values.device, dtype=self.packed_values.dtype, copy=True)
            self._install(*_pack_spatial(w, self.m, self.r, self.points, self.block, self.group_k,
                                         self.decomposition))

    def _spatial_shape(self) -> tuple[int, int, int, int]:
        """(K, C, k, k): the spatial weight's shape (k the whole kernel when decomposed)."""
        k = self.kernel_size[0]
        return (self.out_channels, self.in_channels, k, k)

    @property
    def packed(self) -> PackedWinogradWeight:
        """The packed weight over this module's buffers (validated once per buffer version)."""
        if self.packed_values.is_meta:
            return self._packed_view()
        return packed_from_arrays(self.packed_values, self.packed_indices, self.packed_offsets, self.m, self.r,
                                  self.out_channels, self._channels, self.block, self.group_k, self.points,
                                  self.decomposition)

    def _packed_view(self) -> PackedWinogradWeight:
        return PackedWinogradWeight(self.packed_values, self.packed_indices, self.packed_offsets, self.m, self.r,
                                    self.out_channels, self._channels, self.block, self.group_k, self.points,
                                    self.decomposition)

    @torch.inference_mode(False)  # cached for later forwards, which autograd may record
    def spatial_weight(self) -> torch.Tensor | None:
        """The spatial weight W (K, C, k, k) with G W Gᵀ = Q, or None when Q has none.

        A layer built from a spatial conv keeps the W it was built from. Otherwise W = G⁺ Q G⁺ᵀ in
        float64; Q has an exact spatial weight iff the residual is at rounding level. Winograd-domain
        pruning leaves Q outside that range, and then conv2d would compute a different function, so
        it is not offered; nor for a Winograd-ReLU layer. A decomposed layer's pieces fold back into
        the k×k kernel (their zero padding must have stayed zero)."""
        if self.winograd_relu:
            return None
        self._refresh()
        if self._w_spatial is not None or self._exact is False:
            return self._w_spatial
        if self.packed_values.is_meta:
            return None
        tol = 64 * torch.finfo(self.packed_values.dtype).eps
        w = spatial_from_winograd(self.packed.unpack(), self.m, self.r, self.points, rel_tol=tol)
        if w is not None and self.decomposition is not None:
            w = dwm.fold_weight(w, dwm.decomposition(*self.decomposition), rel_tol=tol)
        self._w_spatial = None if w is None else w.to(self.packed_values.dtype)
        self._exact = w is not None
        return self._w_spatial

    @torch.inference_mode(False)  # cached for later forwards, which autograd may record
    def dense_weight(self) -> torch.Tensor:
        """The unpacked Winograd-domain weight, position-major (P, C, K), as the dense path wants."""
        self._refresh()
        if self._q_pck is None or self._q_pck.device != self.packed_values.device:
            q = self.packed.unpack()
            n = self.m + self.r - 1
            self._q_pck = q.permute(2, 3, 1, 0).reshape(n * n, self._channels, self.out_channels).contiguous()
        return self._q_pck

    def winograd_zeros(self) -> tuple[int, int]:
        """(exact zeros of Q, entries of Q): the counts behind ``winograd_sparsity``."""
        total = self.out_channels * self._channels * (self.m + self.r - 1) ** 2
        return total - int(torch.count_nonzero(self.packed_values)), total

    def winograd_sparsity(self) -> float:
        """Fraction of exact zeros in Q (K, C, n, n): the paper's metric (NaN on the meta device)."""
        if self.packed_values.is_meta:
            return float("nan")
        zeros, total = self.winograd_zeros()
        return zeros / total if total else 0.0

    # ---- dispatch ---------------------------------------------------------------------------
    def reset_dispatch(self) -> None:
        """Forget the per-shape decisions (they are re-made on the next forward)."""
        self._choices.clear()

    def dispatch_decisions(self) -> dict[tuple, dispatch.Decision]:
        return dict(self._choices)

    def _route(self, x: torch.Tensor) -> tuple[str, str]:
        if self.backend != "auto":
            return "sparse", self.backend
        key = dispatch.shape_key(x)
        d = self._choices.get(key)
        if d is None:
            if torch.compiler.is_compiling():
                # Never measure while tracing; a layer not run eagerly first gets the sparse path.
                return "sparse", dispatch.layer_backend(self, x)
            d = dispatch.decide(self, x)
            d.kernels = self._kernels_for(x, d.path, d.backend)
            self._choices[key] = d
            self._drop_unused_forms()
        if d.backend != "torch" and torch.is_grad_enabled() and x.requires_grad:
            return d.path, "torch"  # the kernels have no backward: a recorded forward runs the torch twin
        return d.path, d.backend

    def _kernels_for(self, x: torch.Tensor, path: str, backend: str) -> str:
        """Which Triton kernels a Winograd path runs on ``x``'s bucket, and why (one or two for a
        sparse layer: timed on a GPU, the counted-work model without one)."""
        if backend != "triton" or path == "conv2d":
            return ""
        if path == "dense":
            return "two-kernel: input transform + fused dense multiply (output transform in its epilogue)"
        from . import _triton_path
        from .tuning import select

        packed = self.packed
        call = _triton_path.SparseCall(x, packed, packed.values_as(_checks.operand_dtype(x.dtype)), None,
                                       self.padding, winograd_relu=self.winograd_relu)
        return select.sparse_path(call).describe()

    def _drop_unused_forms(self) -> None:
        used = {d.path for d in self._choices.values()}
        if "conv2d" in used:
            self.spatial_weight()
        elif not self._source:
            self._w_spatial = None  # _exact stays: whether a spatial weight exists is still known
        if "dense" in used:
            self.dense_weight()
        else:
            self._q_pck = None

    # ---- forward ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and x.dim() not in (3, 4):
            raise ValueError(f"x must be 3-D (C, H, W) or 4-D (N, C, H, W), as for nn.Conv2d, got shape "
                             f"{tuple(x.shape)}")
        unbatched = isinstance(x, torch.Tensor) and x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        _checks.check_input(x, self.in_channels)
        _checks.check_same_device(x=x, weight=self.packed_values)
        x = _autocast_input(x)
        if x.dtype != self.packed_values.dtype and not torch.is_autocast_enabled(x.device.type):
            raise RuntimeError(
                f"Input type ({x.dtype}) and weight type ({self.packed_values.dtype}) should be the same, as for "
                f"nn.Conv2d: cast the input, or the model (model.to({x.dtype}))")
        if x.shape[0] == 0 or x.is_meta:
            ho, wo = _checks.conv_output_size(x.shape[2], x.shape[3], self.r, self.padding, self._packed_view().dwm)
            y = _checks.empty_output(x, self.out_channels, ho, wo)
        else:
            if not torch.compiler.is_compiling():
                self._refresh()
            path, backend = self._route(x)
            y = self.run_path(x, path, backend)
        return y.squeeze(0) if unbatched else y

    def run_path(self, x: torch.Tensor, path: str, backend: str) -> torch.Tensor:
        """Run one path explicitly (dispatch measures with this)."""
        if not torch.compiler.is_compiling():
            self._refresh()
        bias = self.bias
        if path == "conv2d":
            w = self._w_spatial if self._w_spatial is not None and not self.winograd_relu else self.spatial_weight()
            if w is None:
                raise ValueError("this layer's Q has no exact spatial weight (or it is a Winograd-ReLU layer), so "
                                 "conv2d cannot run it")
            return F.conv2d(x, w.to(x.dtype), None if bias is None else bias.to(x.dtype), stride=self.stride,
                            padding=self.padding)
        if path == "dense":
            q_pck = self._q_pck if self._q_pck is not None else self.dense_weight()
            return functional.winograd_conv2d_pck(x, q_pck, bias, self.padding, self.m, self.r, self.points, backend,
                                                  winograd_relu=self.winograd_relu, decomposition=self.decomposition,
                                                  split_operands=self.split_operands)
        if path == "sparse":
            if torch.compiler.is_exporting():
                # export traces with grad enabled (x requires grad behind BN parameters), and the
                # differentiable torch path has data-dependent shapes: export the op itself (an
                # exported layer is inference-only, as the op is).
                p = self._packed_view()
                return ops.sparse_winograd_conv2d_op(
                    x, p.values, p.indices, p.offsets, bias, list(self.padding), [p.m, p.r], [p.K, p.C],
                    list(p.block), ops.points_str(p.points), backend, False, False, self.winograd_relu,
                    None if p.decomposition is None else list(p.decomposition),
                    self.split_operands)
            # While tracing, validation (data-dependent) must stay inside the op: pass a plain view.
            packed = self._packed_view() if torch.compiler.is_compiling() else self.packed
            return functional.sparse_winograd_conv2d(x, packed, bias, self.padding, backend,
                                                     winograd_relu=self.winograd_relu,
                                                     split_operands=self.split_operands)
        raise ValueError(f"path must be 'conv2d', 'dense' or 'sparse', got {path!r}")

    # ---- state_dict -------------------------------------------------------------------------
    def _storage(self) -> str:
        """How the checkpoint holds this layer's weight, the smallest exact form:

        * ``"spatial"``: W (K, C, k, k), when it is the exact source of Q (the dense conv's bytes);
        * ``"spatial_sparse"``: the same W as a bit mask of its nonzero entries (1 bit each) and
          those entries, when that is smaller (any W with more than 1 in 8·itemsize zeros);
        * ``"packed"``: values in the layer's dtype + int16/int32 indices + int32 offsets (a Q with
          no spatial source: Winograd-domain pruning, or arrays edited after conversion)."""
        self._refresh()
        if not (self._source and self._w_spatial is not None):
            return "packed"
        w = self._w_spatial
        if w.is_meta:
            return "spatial"
        sparse_bytes = -(-w.numel() // 8) + int(_kept_entries(w).sum()) * w.element_size()
        return "spatial_sparse" if sparse_bytes < w.numel() * w.element_size() else "spatial"

    def get_extra_state(self) -> dict:
        return {"format": STATE_FORMAT, "storage": self._storage(), "m": self.m, "r": self.r,
                "K": self.out_channels, "C": self.in_channels, "block": list(self.block), "group_k": self.group_k,
                "points": list(self.points), "padding": list(self.padding), "bias": self.bias is not None,
                "decomposition": None if self.decomposition is None else list(self.decomposition),
                "winograd_relu": self.winograd_relu}

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        form = self._storage()
        if form == "spatial":
            tensors = {_WEIGHT: self._w_spatial}
        elif form == "spatial_sparse":
            keep = _kept_entries(self._w_spatial)
            tensors = dict(zip(_FORMS[form], (_pack_bits(keep), self._w_spatial[keep]), strict=True))
        else:
            tensors = dict(zip(_ARRAYS, self._arrays(), strict=True))
        for name, t in tensors.items():
            destination[prefix + name] = t if keep_vars else t.detach()

    def _check_meta(self, meta: object, where: str) -> None:
        if not isinstance(meta, dict) or meta.get("format") not in (1, STATE_FORMAT):
            raise ValueError(f"{where}: state_dict metadata is missing or of an unknown format: {meta!r}")
        mine = self.get_extra_state()
        for key, what in (("m", "tile m"), ("r", "kernel size"), ("points", "interpolation points"),
                          ("K", "out_channels"), ("C", "in_channels"), ("padding", "padding"), ("bias", "bias"),
                          ("decomposition", "decomposition (kernel, stride)"), ("winograd_relu", "winograd_relu")):
            # files written before the decomposition / Winograd-ReLU existed hold neither
            theirs, ours = meta.get(key, {"decomposition": None, "winograd_relu": False}.get(key)), mine[key]
            if isinstance(ours, list) and isinstance(theirs, list | tuple):
                theirs = list(theirs)
            if theirs != ours:
                raise ValueError(
                    f"{where}: state_dict was saved from a layer with {what}={meta.get(key)!r}, but this layer has "
                    f"{what}={mine[key]!r} (F({self.m},{self.r}), {self.in_channels}->{self.out_channels}); "
                    "a packed weight only loads into a layer of the same tile, points and shape")
        try:
            check_kernel_block(tuple(meta["block"]))
            if int(meta["group_k"]) not in SUPPORTED_GROUP_K:
                raise ValueError(f"group_k={meta['group_k']!r}")
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: bad block / group_k in state_dict metadata: {e}") from e

    def set_extra_state(self, state: object) -> None:
        self._check_meta(state, type(self).__name__)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Everything is checked and the new arrays are built before anything of this layer changes:
        # a failed load leaves the layer as it was, and usable.
        where = f"layer {prefix.rstrip('.') or '<root>'}"
        names = {prefix + k for keys in _FORMS.values() for k in keys}
        found = {form: [k for k in keys if prefix + k in state_dict] for form, keys in _FORMS.items()}
        forms = [form for form, keys in found.items() if keys]
        if len(forms) > 1:
            raise ValueError(f"{where}: state_dict holds more than one form of the weight "
                             f"({', '.join(k for f in forms for k in found[f])}); expected one")
        wanted = _FORMS[forms[0]] if forms else _FORMS[self._storage()]
        if not forms or len(found[forms[0]]) < len(wanted):
            # no weight at all, or an incomplete one: report, and load nothing of this layer
            missing_keys.extend(prefix + k for k in wanted if prefix + k not in state_dict)
            return
        form = forms[0]
        meta = state_dict.get(prefix + "_extra_state")
        assign = bool(local_metadata.get("assign_to_params_buffers", False))
        with torch.inference_mode(False):
            if form == "spatial":
                packed, source = self._spatial_from_state(state_dict[prefix + _WEIGHT], meta, where, assign)
            elif form == "spatial_sparse":
                w = self._weight_from_bits(*(state_dict[prefix + k] for k in _FORMS[form]), where)
                packed, source = self._spatial_from_state(w, meta, where, assign)
            else:
                packed, source = self._packed_from_state(state_dict, prefix, meta, where, assign), None
            bias = state_dict.get(prefix + "bias")
            if bias is not None and self.bias is not None and (
                    not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (self.out_channels,)):
                raise ValueError(f"{where}: bias must have shape ({self.out_channels},), got "
                                 f"{getattr(bias, 'shape', type(bias).__name__)}")
            self._install(packed, source)
        rest = {k: v for k, v in state_dict.items() if k not in names}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if meta is None and prefix + "_extra_state" in missing_keys:
            missing_keys.remove(prefix + "_extra_state")  # a plain conv's weight needs none: this layer's own apply

    def _weight_from_bits(self, bits: object, values: object, where: str) -> torch.Tensor:
        shape = self._spatial_shape()
        n = math.prod(shape)
        if (not isinstance(bits, torch.Tensor) or bits.dtype != torch.uint8 or tuple(bits.shape) != (-(-n // 8),)
                or not isinstance(values, torch.Tensor) or values.dim() != 1 or not values.is_floating_point()):
            raise ValueError(f"{where}: weight_mask must be uint8 of shape ({-(-n // 8)},) and weight_nonzeros a "
                             f"1-D floating tensor, got {getattr(bits, 'shape', bits)} / "
                             f"{getattr(values, 'shape', values)}")
        keep = _unpack_bits(bits, n)
        if int(keep.sum()) != values.numel():
            raise ValueError(f"{where}: weight_mask marks {int(keep.sum())} entries but weight_nonzeros holds "
                             f"{values.numel()}")
        w = torch.zeros(n, dtype=values.dtype, device=values.device)
        w[keep.to(values.device)] = values
        return w.reshape(shape)

    def _target(self, t: torch.Tensor, assign: bool) -> tuple[torch.device, torch.dtype]:
        return (t.device if assign else self.packed_values.device), self.packed_values.dtype

    def _spatial_from_state(self, w: object, meta: object, where: str, assign: bool):
        if meta is not None:
            self._check_meta(meta, where)
        block, group_k = ((tuple(int(b) for b in meta["block"]), int(meta["group_k"])) if meta is not None
                          else (self.block, self.group_k))
        shape = self._spatial_shape()
        if not isinstance(w, torch.Tensor) or tuple(w.shape) != shape or not w.is_floating_point():
            raise ValueError(f"{where}: weight must be a floating tensor of shape {shape}, got "
                             f"{getattr(w, 'shape', type(w).__name__)}")
        dev, dtype = self._target(w, assign)
        w = w.detach().to(device=dev, dtype=dtype, copy=not assign)
        try:
            return _pack_spatial(w, self.m, self.r, self.points, block, group_k, self.decomposition)
        except ValueError as e:
            raise ValueError(f"{where}: cannot pack the saved weight: {e}") from e

    def _packed_from_state(self, state_dict, prefix: str, meta: object, where: str, assign: bool):
        if meta is None:
            raise ValueError(f"{where}: state_dict has packed arrays but no metadata ({prefix}_extra_state)")
        self._check_meta(meta, where)
        arrays = [state_dict[prefix + a] for a in _ARRAYS]
        for t, k in zip(arrays, _ARRAYS, strict=True):
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"{where}: {prefix}{k} must be a tensor, got {type(t).__name__}")
        vals, idx, off = arrays
        if not vals.is_floating_point():
            raise ValueError(f"{where}: packed values must be floating, got {vals.dtype}")
        block, group_k = tuple(int(b) for b in meta["block"]), int(meta["group_k"])
        candidate = PackedWinogradWeight(vals, idx, off, self.m, self.r, self.out_channels, self._channels,
                                         block, group_k, self.points, self.decomposition)
        if not vals.is_meta:
            try:
                candidate.validate()  # tampered or truncated arrays fail here, before any forward
            except ValueError as e:
                raise ValueError(f"{where}: corrupt packed weight in state_dict: {e}") from e
        # The kept-slot count differs between sparsity patterns: new arrays, not a copy into the old
        # ones. A compact file may store values in fp16 (compact_state_dict); they take this layer's dtype.
        dev, dtype = self._target(vals, assign)
        return PackedWinogradWeight(vals.detach().to(device=dev, dtype=dtype, copy=not assign).contiguous(),
                                    idx.detach().to(device=dev, copy=not assign).contiguous(),
                                    off.detach().to(device=dev, copy=not assign).contiguous(),
                                    self.m, self.r, self.out_channels, self._channels, block, group_k, self.points,
                                    self.decomposition)

    def extra_repr(self) -> str:
        if self.backend != "auto":
            chosen = f"backend={self.backend} (pinned, sparse)"
        elif self._choices:
            chosen = "backend=auto: " + ", ".join(sorted({d.label() for d in self._choices.values()}))
        else:
            chosen = "backend=auto (decided on first use)"
        shape = f"kernel_size={self.r}"
        if self.decomposition is not None:
            shape = (f"kernel_size={self.kernel_size[0]}, stride={self.stride[0]}, "
                     f"decomposed into {self._channels // self.in_channels} pieces of {self.r}x{self.r}")
        if self.split_operands:
            chosen = "split_operands=True, " + chosen
        return (f"{self.in_channels}, {self.out_channels}, {shape}, padding={self.padding}, "
                f"tile=F({self.m},{self.r}), block={self.block}, winograd_sparsity={self.winograd_sparsity():.1%}, "
                f"{'winograd_relu=True, ' if self.winograd_relu else ''}{chosen}")


def _kept_entries(w: torch.Tensor) -> torch.Tensor:
    """Entries a sparse spatial checkpoint stores: the nonzeros (a layer's W holds no -0.0)."""
    return w != 0


def _pack_bits(keep: torch.Tensor) -> torch.Tensor:
    """A bool tensor as uint8 bytes, 8 entries per byte, least significant bit first."""
    flat = keep.flatten()
    flat = torch.cat([flat, flat.new_zeros((-flat.numel()) % 8)]).view(-1, 8).to(torch.int64)
    return (flat << torch.arange(8, device=flat.device)).sum(dim=1).to(torch.uint8)


def _unpack_bits(bits: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`_pack_bits`: the first ``n`` entries, flat."""
    return ((bits.to(torch.int64).unsqueeze(1) >> torch.arange(8, device=bits.device)) & 1).bool().flatten()[:n]


def _pack_spatial(w: torch.Tensor, m: int, r: int, points, block, group_k: int | None = None,
                  decomposition: tuple[int, int] | None = None) -> tuple[PackedWinogradWeight, torch.Tensor]:
    """(packed Q, W): Q = G W Gᵀ in float64, cast to W's dtype, packed at ``block``; the one way a
    spatial weight becomes packed arrays (conversion, load, ``layer.weight = w``), so the same W
    always gives the same bits. W comes back with -0.0 made +0.0 (masking leaves -0.0; a zero's
    sign changes no result, and a checkpoint stores only the nonzeros). With a ``decomposition``
    (kernel, stride), W (K, C, k, k) is split into its r×r pieces first (``dwm.expand_weight``)."""
    w = w + 0.0
    we = w if decomposition is None else dwm.expand_weight(w, dwm.decomposition(*decomposition))
    q = reference.winograd_weight(we, m, points)
    return _pack_or_pattern(q, block, r, points, w.dtype, group_k, decomposition), w


def _pack_or_pattern(q: torch.Tensor, block, r: int, points, dtype: torch.dtype,
                     group_k: int | None = None, decomposition: tuple[int, int] | None = None) -> PackedWinogradWeight:
    if not q.is_meta:
        return pack_winograd_weight(q, block, r=r, points=points, dtype=dtype, group_k=group_k,
                                    decomposition=decomposition)
    # A meta tensor has no values, hence no zeros: keep every slot (an unpruned layer's shapes)
    # until load_state_dict brings the real arrays.
    k, c, n, _ = q.shape
    bk, _ = check_kernel_block(block)
    gk = group_k or (DEFAULT_ELEMENT_GROUP_K if bk == 1 else bk)
    groups = n * n * -(-k // gk)
    return PackedWinogradWeight(torch.empty(groups * c, gk, dtype=dtype, device="meta"),
                                torch.empty(groups * c, dtype=index_dtype(c), device="meta"),
                                torch.empty(groups + 1, dtype=torch.int32, device="meta"),
                                n - r + 1, r, k, c, check_kernel_block(block), gk,
                                tuple(str(p) for p in normalize_points(n - r + 1, r, points)), decomposition)


def _packs_itself(mod: object) -> bool:
    """A layer that knows its own packed Winograd-domain weight (e.g. a pruned
    ``tritonwino.pruning.WinogradConv2d``): the core recognises it by this protocol, never by
    importing the pruning package."""
    return not isinstance(mod, SparseWinogradConv2d) and callable(getattr(mod, "to_packed", None))


def _autocast_input(x: torch.Tensor) -> torch.Tensor:
    """Follow conv2d under autocast: float32 inputs run in the autocast dtype."""
    dev = x.device.type
    if x.dtype == torch.float32 and dev in ("cpu", "cuda") and torch.is_autocast_enabled(dev):
        return x.to(torch.get_autocast_dtype(dev))
    return x


def ineligible_reason(conv: torch.nn.Module) -> str | None:
    """Why a module cannot become a SparseWinogradConv2d (None if it can)."""
    if isinstance(conv, SparseWinogradConv2d):
        return "already a SparseWinogradConv2d"
    if _packs_itself(conv):
        return None
    if not isinstance(conv, torch.nn.Conv2d):
        return "not an nn.Conv2d"
    return _checks.conv_ineligible_reason(conv)


def _tile_reason(conv: torch.nn.Module, m: int, points: Sequence[object] | None,
                 decompose: bool | None) -> str | None:
    """Why an eligible ``nn.Conv2d`` cannot run with these convert options (None if it can)."""
    if not isinstance(conv, torch.nn.Conv2d):
        return None
    k, s = conv.kernel_size[0], conv.stride[0]
    if decompose is False and s != 1:
        return f"stride {tuple(conv.stride)} needs the decomposable Winograd method (decompose=False)"
    if decompose is False and k % 2 == 0:
        return f"kernel {k}x{k} is even: a plain F(m, {k}) needs an odd kernel (decompose=False)"
    d = dwm.plan(k, s, decompose)
    r = k if d is None else d.r
    if points is not None and not isinstance(points, str) and len(points) != m + r - 2:
        return f"the given {len(points)} points do not fit this layer's F({m},{r}) tile"
    return None


def _carry_hooks(old: torch.nn.Module, new: torch.nn.Module) -> None:
    """The new layer runs the old conv's forward / backward hooks (the same callables). Hooks that
    only make sense on the old conv (tritonwino.pruning's mask enforcement marks itself so) stay."""
    drop = {hid for hid, h in old._forward_pre_hooks.items() if getattr(h, "_tritonwino_drop_on_convert", False)}
    for attr in _HOOK_DICTS:
        src, dst = getattr(old, attr, None), getattr(new, attr, None)
        if src is not None and dst is not None:
            dst.update({k: v for k, v in src.items() if k not in drop})
    if getattr(old, "_is_full_backward_hook", None) is not None:
        new._is_full_backward_hook = old._is_full_backward_hook


def _coarser_than_mask(layer: SparseWinogradConv2d) -> tuple[float, float] | None:
    """(Winograd sparsity, kept slot fraction) of a layer whose zeros the packing at its block
    mostly fails to skip (a mask finer than the block: e.g. element-pruned, packed at (16, 1)), else None."""
    if layer.packed_values.is_meta or layer.block == (1, 1):  # element granularity was asked for
        return None
    sparsity, kept = layer.winograd_sparsity(), layer.packed.density
    return (sparsity, kept) if sparsity >= 0.2 and 1.0 - kept < 0.5 * sparsity else None


def convert(model: torch.nn.Module, m: int = 4, block: Sequence[int] = (16, 1),
            filter_fn: Callable[[torch.nn.Module, str], bool] | None = None,
            backend: str = "auto", points: Sequence[object] | None = None,
            decompose: bool | None = None, split_operands: bool = False) -> torch.nn.Module:
    """Swap every eligible conv of ``model`` (in place) for a ``SparseWinogradConv2d``.

    Eligible: an ``nn.Conv2d`` that provably computes ``F.conv2d`` (``forward`` / ``_conv_forward``
    not overridden: weight-standardised convs or convs that pad inside ``forward`` stay as they
    are) with a square kernel > 1, stride 1 or 2, dilation 1, groups 1, zero padding (ints,
    ``"same"`` for odd kernels, ``"valid"``) — stride 2 and kernels larger than 3×3, e.g. a
    ResNet's 7×7/2 stem, run by the decomposable Winograd method (``tritonwino.dwm``); and layers
    that pack themselves (pruned ``tritonwino.pruning.WinogradConv2d`` / ``WinogradReLUConv2d``,
    which keep their own tile). A swapped layer keeps the
    conv's dtype, device, train/eval mode and forward hooks. Works on nested modules and
    ``nn.Sequential``; if ``model`` itself is eligible the new layer is returned. The swaps and
    skips are recorded in ``model.tritonwino_conversion`` as (name, "swapped" | reason) pairs and
    summarised in one INFO line on the ``tritonwino`` logger. A layer whose mask is finer than
    ``block`` (its zeros mostly fall inside kept channel slots, so the sparse kernel skips little)
    gets a warning.

    Args:
        model: the (pruned) model; changed in place.
        m: output tile of F(m, r) for spatial convolutions.
        block: packing granularity (see ``pack_winograd_weight``); prune at the same block.
        filter_fn: ``filter_fn(module, fqn) -> bool`` (as in torchao) restricts which are swapped.
        backend: ``"auto"`` (measured dispatch), ``"torch"``, ``"triton"`` or ``"cpu"`` for every swapped layer.
        points: interpolation points for spatial convolutions (default: the standard set); layers
            whose tile they do not fit (e.g. the F(m, 2) pieces of a 3×3 stride-2 conv) are left alone.
        decompose: ``None`` (auto, ``tritonwino.dwm.plan``), ``True`` or ``False`` (stride-1 kernels as
            one F(m, k) tile; stride-2 convs are then left alone).
        split_operands: set on every swapped layer (``SparseWinogradConv2d``: half V and Q as hi + lo
            pairs for float16/bfloat16 inputs, a float64 multiply for float32 ones).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
        ...                           torch.nn.Conv2d(16, 16, 1))
        >>> net = convert(net)
        >>> net.tritonwino_conversion
        [('0', 'swapped'), ('2', '1x1 kernel (Winograd gives no saving)')]
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _checks.check_backend(backend)
    check_kernel_block(block)
    keep = _checks.module_filter(filter_fn, "filter_fn")
    log: list[tuple[str, str]] = []
    too_fine: list[tuple[str, float, float]] = []
    replaced_root: torch.nn.Module | None = None
    for name, mod in list(model.named_modules()):
        if not (isinstance(mod, torch.nn.Conv2d | SparseWinogradConv2d) or _packs_itself(mod)):
            continue
        reason = ineligible_reason(mod) or _tile_reason(mod, m, points, decompose)
        if reason is None and keep is not None and not keep(mod, name):
            reason = "excluded by filter_fn"
        if reason:
            log.append((name, reason))
            continue
        new = SparseWinogradConv2d.from_conv2d(mod, m, block, backend, points, decompose=decompose)
        new.split_operands = bool(split_operands)
        new.train(mod.training)
        _carry_hooks(mod, new)
        if name == "":
            replaced_root = new
        else:
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, new)
        log.append((name, "swapped"))
        mismatch = _coarser_than_mask(new)
        if mismatch:
            too_fine.append((name or "<root>", *mismatch))
    out = replaced_root if replaced_root is not None else model
    out.tritonwino_conversion = log
    swapped = sum(1 for _, s in log if s == "swapped")
    left = Counter(s for _, s in log if s != "swapped")
    why = "; ".join(f"{n} x {r}" for r, n in left.most_common())
    logger.info("tritonwino.convert: swapped %d of %d conv layers%s", swapped, len(log),
                f", left {sum(left.values())}: {why}" if left else "")
    if too_fine:
        name, sp, kept = too_fine[0]
        warnings.warn(
            f"tritonwino.convert: {len(too_fine)} layer(s) were pruned at a finer granularity than block={tuple(block)}"
            f", so the packed weight keeps most channel slots and the sparse path skips little (e.g. {name!r}: "
            f"{sp:.0%} Winograd sparsity, {kept:.0%} of the slots kept). Prune at the block you convert with "
            f"(SpatialPruner(model, block={tuple(block)}) / WinogradPruner(model, block={tuple(block)})); the "
            "pruners default to element granularity (1, 1), the paper's.", UserWarning, stacklevel=2)
    return out


def compact_state_dict(model: torch.nn.Module, values_dtype: torch.dtype = torch.float16) -> dict:
    """``model.state_dict()`` with every converted layer's weight (its spatial ``weight``, or its
    ``packed_values``) stored in ``values_dtype``: a smaller file, the weight rounded to that dtype.
    Loads with ``load_state_dict`` into a converted model, whose layers keep their own dtype (Q is
    re-derived from the rounded W, or the rounded values are cast back). Everything else is unchanged.

    Example:
        >>> import tritonwino.sparse_conv as sc
        >>> net = sc.convert(torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1)))
        >>> sc.compact_state_dict(net)["0.weight"].dtype
        torch.float16
    """
    if values_dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"values_dtype must be float16, bfloat16 or float32, got {values_dtype}")
    sd = model.state_dict()
    for name, mod in model.named_modules():
        if isinstance(mod, SparseWinogradConv2d):
            for attr in (_WEIGHT, "weight_nonzeros", "packed_values"):
                key = f"{name}.{attr}" if name else attr
                if key in sd:
                    sd[key] = sd[key].to(values_dtype)
    return sd


def tune_model(model: torch.nn.Module, example_input: torch.Tensor) -> ExplainTable:
    """Measure every ``backend="auto"`` layer of ``model`` on the shapes ``example_input``
    produces (the tuning cache is ignored and overwritten), then return :func:`explain`'s table.

    Args:
        model: a converted model (``convert``); other layers run as they are.
        example_input: a batch of the shape the model will see (each batch-size bucket, H, W,
            dtype and layout is its own decision).

    Example:
        >>> import tritonwino.sparse_conv as sc
        >>> model = sc.convert(torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1)))
        >>> table = sc.tune_model(model, torch.randn(1, 8, 14, 14))
        >>> table[0]["chosen"] in ("conv2d", "dense-winograd/torch", "sparse-winograd/torch")
        True
    """
    for mod in model.modules():
        if isinstance(mod, SparseWinogradConv2d):
            mod.reset_dispatch()
    with dispatch.measuring(True), torch.inference_mode():
        model(example_input)
    return explain(model)


class ExplainTable(list):
    """Rows (dicts) of :func:`explain`; ``str()`` renders a markdown table."""

    COLUMNS = ("layer", "type", "shape", "eligible", "winograd_sparsity", "input", "chosen", "source", "times_ms",
               "why", "kernels")

    def __str__(self) -> str:
        def cell(v) -> str:
            if isinstance(v, dict):
                return ", ".join(f"{k} {t:.3g}" for k, t in v.items())
            return format_cell(v, "{:.1%}")

        return markdown_table(self, self.COLUMNS, cell)


def explain(model: torch.nn.Module) -> ExplainTable:
    """One row per convolution of ``model`` (and per input bucket a converted layer has seen):
    layer, shape, eligible or why not, Winograd sparsity, the chosen path and the measured times
    behind the choice. Layers not run yet show ``chosen=None`` (decided on first use).

    Example:
        >>> import tritonwino.sparse_conv as sc
        >>> model = sc.convert(torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1)))
        >>> print(sc.explain(model))  # doctest: +ELLIPSIS
        | layer | type | ...
    """
    log = dict(getattr(model, "tritonwino_conversion", []))
    rows = ExplainTable()
    for name, mod in model.named_modules():
        if isinstance(mod, SparseWinogradConv2d):
            kernel = f"{mod.kernel_size[0]}x{mod.kernel_size[0]}"
            if mod.decomposition is not None:
                kernel += f"/{mod.stride[0]} in {mod._channels // mod.in_channels} pieces"
            base = {"layer": name, "type": "SparseWinogradConv2d",
                    "shape": f"{mod.in_channels}->{mod.out_channels} {kernel} F({mod.m},{mod.r})"
                             f"{' winograd-relu' if mod.winograd_relu else ''} block={mod.block[0]}x{mod.block[1]}",
                    "eligible": "converted", "winograd_sparsity": mod.winograd_sparsity()}
            decisions = mod.dispatch_decisions()
            if not decisions:
                rows.append({**base, "input": None, "chosen": None, "source": None, "times_ms": {},
                             "why": f"backend={mod.backend}; decided on first use"})
            for key, d in decisions.items():
                dev, dtype, nb, h, w, cl = key
                inp = f"{dev} {str(dtype).removeprefix('torch.')} N<={nb} {h}x{w}{' channels_last' if cl else ''}"
                rows.append({**base, "input": inp, "chosen": d.label(), "source": d.source, "times_ms": d.times_ms,
                             "why": d.reason, "kernels": d.kernels})
        elif isinstance(mod, torch.nn.Conv2d) or _packs_itself(mod):
            reason = log.get(name) or ineligible_reason(mod) or "eligible, not converted"
            w = getattr(mod, "weight", None)
            shape = "x".join(map(str, w.shape)) if w is not None else type(mod).__name__
            rows.append({"layer": name, "type": type(mod).__name__, "shape": shape, "eligible": reason,
                         "winograd_sparsity": None, "input": None, "chosen": "conv2d (not converted)",
                         "source": None, "times_ms": {}, "why": reason})
    return rows
