"""``nn.Module`` integration: ``SparseWinogradConv2d``, ``convert``, ``compact_state_dict``,
``tune_model`` and ``explain`` (all re-exported by ``tritonwino.sparse_conv``).

A converted layer keeps only the packed Winograd-domain weight (values + indices + offsets as
buffers) and the bias; its ``state_dict`` holds exactly those plus the metadata (tile, points,
block, shapes) under ``_extra_state``. With ``backend="auto"`` every forward runs the path
``tritonwino.dispatch`` measured fastest for that input-shape bucket (conv2d, dense Winograd or
sparse Winograd); the dense forms those paths need are rebuilt from the packed weight in memory
(non-persistent buffers), never saved.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from . import _checks, dispatch, functional, reference
from .packing import PackedWinogradWeight, check_kernel_block, pack_winograd_weight, packed_from_arrays
from .tables import format_cell, markdown_table
from .transforms import normalize_points, spatial_from_winograd

__all__ = ["ExplainTable", "SparseWinogradConv2d", "compact_state_dict", "convert", "explain", "ineligible_reason",
           "tune_model"]

logger = logging.getLogger("tritonwino")


STATE_FORMAT = 1
_ARRAYS = ("packed_values", "packed_indices", "packed_offsets")


class SparseWinogradConv2d(torch.nn.Module):
    """A r×r stride-1 convolution run as a (sparse) Winograd convolution.

    Inference module: the packed weight is frozen (buffers). A forward that needs gradients (input
    with ``requires_grad`` under grad mode) runs the differentiable pure-torch path, so gradients
    reach earlier layers; the Triton path is inference-only and says so. To *train* the weight, use
    ``tritonwino.pruning.WinogradConv2d`` and convert afterwards.

    Args:
        packed: the packed Winograd-domain weight (``pack_winograd_weight``).
        bias: optional (K,) bias.
        padding: int or (ph, pw).
        backend: ``"auto"`` (measured dispatch among conv2d / dense / sparse Winograd, see
            ``tritonwino.dispatch``), ``"torch"`` or ``"triton"`` (always the sparse path of that backend).

    Example:
        >>> conv = torch.nn.Conv2d(8, 16, 3, padding=1)
        >>> layer = SparseWinogradConv2d.from_conv2d(conv, m=4, block=(16, 1))
        >>> x = torch.randn(2, 8, 12, 12)
        >>> bool(torch.allclose(layer(x), conv(x), atol=1e-4))
        True
    """

    packed_values: torch.Tensor
    packed_indices: torch.Tensor
    packed_offsets: torch.Tensor

    def __init__(self, packed: PackedWinogradWeight, bias: torch.Tensor | None, padding: int | tuple[int, int],
                 backend: str = "auto"):
        super().__init__()
        if not isinstance(packed, PackedWinogradWeight):
            raise TypeError(f"packed must be a PackedWinogradWeight, got {type(packed).__name__}")
        _checks.check_backend(backend)
        packed.validate()
        _checks.check_bias(bias, packed.K)
        self.padding = _checks.check_padding(padding)
        self.backend = backend
        self.in_channels, self.out_channels = packed.C, packed.K
        self.m, self.r = packed.m, packed.r
        self.block, self.group_k, self.points = tuple(packed.block), packed.group_k, tuple(packed.points)
        self.register_buffer("packed_values", packed.values)
        self.register_buffer("packed_indices", packed.indices)
        self.register_buffer("packed_offsets", packed.offsets)
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().clone(), requires_grad=False)
        # Dense forms for the conv2d / dense-Winograd paths: built on demand, never saved.
        self.register_buffer("_w_spatial", None, persistent=False)
        self.register_buffer("_q_pck", None, persistent=False)
        self._exact: tuple[tuple, bool] | None = None  # (token, Q has an exact spatial weight)
        self._choices: dict[tuple, dispatch.Decision] = {}

    # ---- construction -----------------------------------------------------------------------
    @classmethod
    def from_conv2d(cls, conv: torch.nn.Module, m: int = 4, block: Sequence[int] = (16, 1),
                    backend: str = "auto", points: Sequence[object] | None = None,
                    q: torch.Tensor | None = None) -> SparseWinogradConv2d:
        """Build from a (pruned) ``nn.Conv2d``: Q = G W Gᵀ in float64 (W times the conv's
        ``spatial_mask`` if spatial pruning attached one), its exact zeros are the sparsity. Pass ``q``
        to use a Winograd-domain weight directly. A ``tritonwino.pruning.WinogradConv2d`` is taken as
        well (its own tile, points and mask; ``m``/``points`` are then ignored)."""
        if _packs_itself(conv):
            return cls.from_winograd_conv2d(conv, block, backend)
        reason = ineligible_reason(conv)
        if reason:
            raise ValueError(f"cannot convert {conv}: {reason}")
        r = conv.kernel_size[0]
        pts = normalize_points(m, r, points)
        if q is None:
            w = conv.weight.detach()
            mask = getattr(conv, "spatial_mask", None)
            if isinstance(mask, torch.Tensor):
                w = w * mask.to(w.dtype)
            q = reference.winograd_weight(w, m, pts)
        packed = pack_winograd_weight(q, block, r=r, points=pts, dtype=torch.float32)
        return cls(packed, conv.bias, tuple(conv.padding), backend)

    @classmethod
    def from_winograd_conv2d(cls, layer: torch.nn.Module, block: Sequence[int] = (16, 1),
                             backend: str = "auto") -> SparseWinogradConv2d:
        """Build from a layer that packs itself, such as a pruned ``tritonwino.pruning.WinogradConv2d``:
        anything with ``to_packed(block) -> PackedWinogradWeight`` and ``bias`` / ``padding``
        attributes (the layer is not modified)."""
        if not _packs_itself(layer):
            raise TypeError(f"expected a layer with a to_packed(block) method (e.g. tritonwino.pruning."
                            f"WinogradConv2d), got {type(layer).__name__}")
        return cls(layer.to_packed(block), layer.bias, layer.padding, backend)

    # ---- the packed weight and its derived forms ----------------------------------------------
    @property
    def packed(self) -> PackedWinogradWeight:
        """The packed weight over this module's buffers (validated once per buffer version)."""
        return packed_from_arrays(self.packed_values, self.packed_indices, self.packed_offsets, self.m, self.r,
                                      self.out_channels, self.in_channels, self.block, self.group_k, self.points)

    def _packed_view(self) -> PackedWinogradWeight:
        return PackedWinogradWeight(self.packed_values, self.packed_indices, self.packed_offsets, self.m, self.r,
                                    self.out_channels, self.in_channels, self.block, self.group_k, self.points)

    def _token(self) -> tuple:
        v = self.packed_values
        return (id(v), v._version, v.device, v.dtype)

    @torch.inference_mode(False)  # cached for later forwards, which autograd may record
    def spatial_weight(self) -> torch.Tensor | None:
        """The spatial weight W (K, C, r, r) with G W Gᵀ = Q, or None when Q has none.

        W = G⁺ Q G⁺ᵀ in float64; Q has an exact spatial weight iff the residual is at rounding level
        (a spatially pruned layer). Winograd-domain pruning leaves Q outside that range, and then
        conv2d would compute a different function, so it is not offered."""
        token = self._token()
        if self._exact is None or self._exact[0] != token or (self._exact[1] and self._w_spatial is None):
            tol = 64 * torch.finfo(self.packed_values.dtype).eps
            w = spatial_from_winograd(self.packed.unpack(), self.m, self.r, self.points, rel_tol=tol)
            self._w_spatial = None if w is None else w.to(self.packed_values.dtype)
            self._exact = (token, w is not None)
        return self._w_spatial if self._exact[1] else None

    @torch.inference_mode(False)  # cached for later forwards, which autograd may record
    def dense_weight(self) -> torch.Tensor:
        """The unpacked Winograd-domain weight, position-major (P, C, K), as the dense path wants."""
        if self._q_pck is None or self._q_pck.device != self.packed_values.device:
            q = self.packed.unpack()
            n = self.m + self.r - 1
            self._q_pck = q.permute(2, 3, 1, 0).reshape(n * n, self.in_channels, self.out_channels).contiguous()
        return self._q_pck

    def winograd_sparsity(self) -> float:
        """Fraction of exact zeros in Q (K, C, n, n): the paper's metric."""
        total = self.out_channels * self.in_channels * (self.m + self.r - 1) ** 2
        return 1.0 - int(torch.count_nonzero(self.packed_values)) / total if total else 0.0

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
                return "sparse", dispatch.winograd_backend(x)
            d = dispatch.decide(self, x)
            d.kernels = self._kernels_for(x, d.path, d.backend)
            self._choices[key] = d
            self._drop_unused_forms()
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
                                       self.padding)
        return select.sparse_path(call).describe()

    def _drop_unused_forms(self) -> None:
        used = {d.path for d in self._choices.values()}
        if "conv2d" in used:
            self.spatial_weight()
        else:
            self._w_spatial = None  # _exact stays: whether a spatial weight exists is still known
        if "dense" in used:
            self.dense_weight()
        else:
            self._q_pck = None

    # ---- forward ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _checks.check_input(x, self.in_channels)
        _checks.check_same_device(x=x, weight=self.packed_values)
        x = _autocast_input(x)
        if x.shape[0] == 0:
            ho, wo = _checks.output_size(x.shape[2], x.shape[3], self.r, self.padding)
            return _checks.empty_output(x, self.out_channels, ho, wo)
        path, backend = self._route(x)
        return self.run_path(x, path, backend)

    def run_path(self, x: torch.Tensor, path: str, backend: str) -> torch.Tensor:
        """Run one path explicitly (dispatch measures with this)."""
        bias = self.bias
        if path == "conv2d":
            w = self._w_spatial if self._w_spatial is not None else self.spatial_weight()
            if w is None:
                raise ValueError("this layer's Q has no exact spatial weight, so conv2d cannot run it")
            return F.conv2d(x, w.to(x.dtype), None if bias is None else bias.to(x.dtype), padding=self.padding)
        if path == "dense":
            q_pck = self._q_pck if self._q_pck is not None else self.dense_weight()
            return functional.winograd_conv2d_pck(x, q_pck, bias, self.padding, self.m, self.r, self.points, backend)
        if path == "sparse":
            # While tracing, validation (data-dependent) must stay inside the op: pass a plain view.
            packed = self._packed_view() if torch.compiler.is_compiling() else self.packed
            return functional.sparse_winograd_conv2d(x, packed, bias, self.padding, backend)
        raise ValueError(f"path must be 'conv2d', 'dense' or 'sparse', got {path!r}")

    # ---- state_dict -------------------------------------------------------------------------
    def get_extra_state(self) -> dict:
        return {"format": STATE_FORMAT, "m": self.m, "r": self.r, "K": self.out_channels, "C": self.in_channels,
                "block": list(self.block), "group_k": self.group_k, "points": list(self.points),
                "padding": list(self.padding), "bias": self.bias is not None}

    def _check_meta(self, meta: object, where: str) -> None:
        if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
            raise ValueError(f"{where}: state_dict metadata is missing or of an unknown format: {meta!r}")
        mine = self.get_extra_state()
        for key, what in (("m", "tile m"), ("r", "kernel size"), ("points", "interpolation points"),
                          ("K", "out_channels"), ("C", "in_channels"), ("padding", "padding"), ("bias", "bias")):
            theirs, ours = meta.get(key), mine[key]
            if isinstance(ours, list) and isinstance(theirs, list | tuple):
                theirs = list(theirs)
            if theirs != ours:
                raise ValueError(
                    f"{where}: state_dict was saved from a layer with {what}={meta.get(key)!r}, but this layer has "
                    f"{what}={mine[key]!r} (F({self.m},{self.r}), {self.in_channels}->{self.out_channels}); "
                    "a packed weight only loads into a layer of the same tile, points and shape")
        try:
            check_kernel_block(tuple(meta["block"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: bad block in state_dict metadata: {e}") from e

    def set_extra_state(self, state: object) -> None:
        self._check_meta(state, type(self).__name__)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        names = [prefix + a for a in _ARRAYS]
        where = f"layer {prefix.rstrip('.') or '<root>'}"
        if all(k in state_dict for k in names):
            meta = state_dict.get(prefix + "_extra_state")
            if meta is None:
                raise ValueError(f"{where}: state_dict has packed arrays but no metadata ({prefix}_extra_state)")
            self._check_meta(meta, where)
            vals, idx, off = (state_dict[k] for k in names)
            for t, k in zip((vals, idx, off), names, strict=True):
                if not isinstance(t, torch.Tensor):
                    raise ValueError(f"{where}: {k} must be a tensor, got {type(t).__name__}")
            candidate = PackedWinogradWeight(vals, idx, off, self.m, self.r, self.out_channels, self.in_channels,
                                             tuple(meta["block"]), int(meta["group_k"]), self.points)
            try:
                candidate.validate()  # tampered or truncated arrays fail here, before any forward
            except ValueError as e:
                raise ValueError(f"{where}: corrupt packed weight in state_dict: {e}") from e
            if not vals.is_floating_point():
                raise ValueError(f"{where}: packed values must be floating, got {vals.dtype}")
            # The kept-channel count differs between sparsity patterns: resize the buffers, then let
            # the default loader copy into them (keeping this module's device).
            # A compact file may store values in fp16 (compact_state_dict); they keep this module's dtype.
            dev = self.packed_values.device
            self.packed_values = torch.empty_like(vals, device=dev, dtype=self.packed_values.dtype)
            self.packed_indices = torch.empty_like(idx, device=dev)
            self.packed_offsets = torch.empty_like(off, device=dev)
            self.block, self.group_k = tuple(int(b) for b in meta["block"]), int(meta["group_k"])
            self._w_spatial = None
            self._q_pck = None
            self._exact = None
            self._choices.clear()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        if self.backend != "auto":
            chosen = f"backend={self.backend} (pinned, sparse)"
        elif self._choices:
            chosen = "backend=auto: " + ", ".join(sorted({d.label() for d in self._choices.values()}))
        else:
            chosen = "backend=auto (decided on first use)"
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.r}, padding={self.padding}, "
                f"tile=F({self.m},{self.r}), block={self.block}, winograd_sparsity={self.winograd_sparsity():.1%}, "
                f"{chosen}")


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


def convert(model: torch.nn.Module, m: int = 4, block: Sequence[int] = (16, 1),
            filter_fn: Callable[[torch.nn.Module, str], bool] | None = None,
            backend: str = "auto", points: Sequence[object] | None = None) -> torch.nn.Module:
    """Swap every eligible conv of ``model`` (in place) for a ``SparseWinogradConv2d``.

    Eligible: ``nn.Conv2d`` with an odd square kernel > 1, stride 1, dilation 1, groups 1, zero
    padding; and layers that pack themselves (pruned ``tritonwino.pruning.WinogradConv2d``, which
    keep their own tile). Works on nested modules and ``nn.Sequential``; if ``model`` itself is
    eligible the new layer is returned. The swaps and skips are recorded in
    ``model.tritonwino_conversion`` as (name, "swapped" | reason) pairs and summarised in one INFO
    line on the ``tritonwino`` logger.

    Args:
        model: the (pruned) model; changed in place.
        m: output tile of F(m, r) for spatial convolutions.
        block: packing granularity (see ``pack_winograd_weight``).
        filter_fn: ``filter_fn(module, fqn) -> bool`` (as in torchao) restricts which are swapped.
        backend: ``"auto"`` (measured dispatch), ``"torch"`` or ``"triton"`` for every swapped layer.
        points: interpolation points for spatial convolutions (default: the standard set).

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
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError("filter_fn must be callable as filter_fn(module, fqn) -> bool")
    log: list[tuple[str, str]] = []
    replaced_root: torch.nn.Module | None = None
    for name, mod in list(model.named_modules()):
        if not (isinstance(mod, torch.nn.Conv2d | SparseWinogradConv2d) or _packs_itself(mod)):
            continue
        reason = ineligible_reason(mod)
        if reason is None and filter_fn is not None and not filter_fn(mod, name):
            reason = "excluded by filter_fn"
        if reason:
            log.append((name, reason))
            continue
        dev = next(iter(mod.parameters()), torch.empty(0)).device
        new = SparseWinogradConv2d.from_conv2d(mod, m, block, backend, points).to(dev)
        if name == "":
            replaced_root = new
        else:
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, new)
        log.append((name, "swapped"))
    out = replaced_root if replaced_root is not None else model
    out.tritonwino_conversion = log
    swapped = sum(1 for _, s in log if s == "swapped")
    left = Counter(s for _, s in log if s != "swapped")
    why = "; ".join(f"{n} x {r}" for r, n in left.most_common())
    logger.info("tritonwino.convert: swapped %d of %d conv layers%s", swapped, len(log),
                f", left {sum(left.values())}: {why}" if left else "")
    return out


def compact_state_dict(model: torch.nn.Module, values_dtype: torch.dtype = torch.float16) -> dict:
    """``model.state_dict()`` with every packed-values buffer stored in ``values_dtype`` (a smaller
    file; Q is then rounded to that dtype). Loads with ``load_state_dict`` into a converted model,
    whose buffers keep their own dtype. Everything else is unchanged.

    Example:
        >>> net = convert(torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1)))
        >>> compact_state_dict(net)["0.packed_values"].dtype
        torch.float16
    """
    if values_dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"values_dtype must be float16, bfloat16 or float32, got {values_dtype}")
    sd = model.state_dict()
    for name, mod in model.named_modules():
        if isinstance(mod, SparseWinogradConv2d):
            key = f"{name}.packed_values" if name else "packed_values"
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
            base = {"layer": name, "type": "SparseWinogradConv2d",
                    "shape": f"{mod.in_channels}->{mod.out_channels} {mod.r}x{mod.r} F({mod.m},{mod.r}) "
                             f"block={mod.block[0]}x{mod.block[1]}",
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
