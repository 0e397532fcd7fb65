"""``WinogradConv2d``: a trainable Winograd-domain convolution (parameter Q), and model conversion.

The layer is the authors' "Winograd layer" [code ``WinogradPruning/newLayers/Winograd2d.py``]:
parameters are Q ∈ R^{K×C×n×n}, initialised from a spatial conv as ``Q = G W Gᵀ``
(``load_state_normal``); positions that spatial pruning zeroed start at exactly 0. The forward
runs the library's own pure-torch Winograd path (``reference.winograd_conv2d_q``), which is
differentiable in Q.

Every layer remembers its (m, r, points). They are saved in the ``state_dict`` (``_extra_state``)
and loading a Q built with a different tile or point set raises ``ValueError`` [ours].

Stride-2 and large-kernel convolutions are decomposed (``tritonwino.dwm``) [ours, after Huang et
al.'s DWM]: Q is then the pieces' (K, C·pieces, n, n) weight of F(m, r_piece), so pruning and the
importance factors apply per piece.

``WinogradReLUConv2d`` is Liu et al.'s Winograd-ReLU layer (ReLU moved after the input transform,
``Aᵀ[Q ⊙ ReLU(Bᵀ X B)]A``) [paper; code xingyul/sparse-winograd-cnn], and
``convert_to_winograd_relu`` rewrites ReLU→Conv2d pairs of a model into it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import nn
from torch.nn.utils import parametrize

from .. import _checks, dwm
from ..modules import SparseWinogradConv2d
from ..packing import PackedWinogradWeight, pack_winograd_weight
from ..reference import winograd_conv2d_q
from ..transforms import normalize_points, tile_size
from .helpers import check_m, points_key, position_support, winograd_weight

__all__ = ["WinogradConv2d", "WinogradReLUConv2d", "WinogradWeight", "conv_winograd_weight", "convert_to_winograd",
           "convert_to_winograd_relu", "eligible_convs", "winograd_sparsity"]


def conv_winograd_weight(conv: nn.Conv2d, m: int, points: Sequence[object] | None = None,
                         decompose: bool | None = None) -> torch.Tensor:
    """Q (float64) of an ``nn.Conv2d`` for tile ``m``: ``G (W ⊙ spatial_mask) Gᵀ``, over the pieces
    (K, C·pieces, n, n) when the conv is decomposed (stride 2, kernels > 3; ``tritonwino.dwm.plan``)."""
    w = conv.weight.detach()
    mask = getattr(conv, "spatial_mask", None)
    if isinstance(mask, torch.Tensor):
        w = w * mask.to(w.dtype)
    d = dwm.plan(conv.kernel_size[0], conv.stride[0], decompose)
    return winograd_weight(w if d is None else dwm.expand_weight(w, d), m, points)


@dataclass(frozen=True)
class WinogradWeight:
    """A finalized Winograd-domain weight: what ``pack_winograd_weight(q, block, r, points)`` takes.

    ``q`` (K, C, n, n) has exact zeros at every pruned entry; ``m, r, points`` are those it was
    built with; ``bias`` and ``padding`` come from the layer.
    """

    q: torch.Tensor
    m: int
    r: int
    points: tuple[Fraction, ...]
    bias: torch.Tensor | None
    padding: tuple[int, int]
    decomposition: tuple[int, int] | None = None  # (kernel, stride) of a decomposed conv (tritonwino.dwm)

    @property
    def sparsity(self) -> float:
        return float((self.q == 0).sum()) / self.q.numel()


class WinogradConv2d(nn.Module):
    """Conv2d (dilation 1, groups 1) whose trainable weight lives in the Winograd domain.

    Attributes: ``q`` (Parameter, (K, C, n, n)), ``bias`` (Parameter or None), ``mask`` (bool
    buffer, True = kept), ``m``, ``r``, ``points`` (tuple of ``Fraction``), ``padding``,
    ``kernel_size``, ``stride``, ``decomposition``. A stride-2 or larger-than-3×3 kernel is
    decomposed (``tritonwino.dwm``): ``r`` is then the piece size and ``q`` is (K, C·pieces, n, n).

    Example:
        >>> layer = WinogradConv2d(8, 16, 3, padding=1, m=4)
        >>> tuple(layer(torch.randn(1, 8, 10, 10)).shape), tuple(layer.q.shape)
        ((1, 16, 10, 10), (16, 8, 6, 6))
    """

    winograd_relu = False  # Liu et al.'s Winograd-domain ReLU (WinogradReLUConv2d)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        padding: int | tuple[int, int] = 0,
        bias: bool = True,
        m: int = 4,
        points: Sequence[object] | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        stride: int = 1,
        decompose: bool | None = None,
    ):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("kernel_size", kernel_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        d = dwm.plan(kernel_size, stride, decompose)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = kernel_size, stride
        self.decomposition = None if d is None else (kernel_size, stride)
        self.r = kernel_size if d is None else d.r
        self.m = m
        self.points = normalize_points(m, self.r, points)
        self.padding = _checks.check_padding(padding)
        n = tile_size(m, self.r)
        self.n = n
        w = torch.empty(out_channels, in_channels, kernel_size, kernel_size, dtype=torch.float64)
        nn.init.kaiming_uniform_(w, a=5 ** 0.5)
        w = w if d is None else dwm.expand_weight(w, d)
        self.q = nn.Parameter(winograd_weight(w, m, self.points).to(dtype=dtype, device=device))
        if bias:
            bound = 1 / (in_channels * kernel_size * kernel_size) ** 0.5
            self.bias = nn.Parameter(torch.empty(out_channels, dtype=dtype, device=device).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)
        self.register_buffer("mask", torch.ones(self.q.shape, dtype=torch.bool, device=device))

    @property
    def dwm(self) -> dwm.Decomposition | None:
        """The pieces of a decomposed layer (None for a plain F(m, r) one)."""
        return None if self.decomposition is None else dwm.decomposition(*self.decomposition)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_conv2d(
        cls,
        conv: nn.Conv2d,
        m: int = 4,
        points: Sequence[object] | None = None,
        spatial_mask: torch.Tensor | None = None,
        decompose: bool | None = None,
    ) -> WinogradConv2d:
        """Build from an ``nn.Conv2d``: ``Q = G (W ⊙ spatial_mask) Gᵀ`` in float64, then cast
        (over the pieces for a decomposed conv, ``tritonwino.dwm``).

        ``spatial_mask`` defaults to the conv's ``spatial_mask`` buffer if spatial pruning attached
        one. Entries of Q that are exactly zero start pruned (mask False) [code: they start at 0].
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        reason = _checks.conv_ineligible_reason(conv)
        if reason:
            raise ValueError(f"cannot convert {conv}: {reason}")
        k, c, ks, _ = conv.weight.shape
        layer = cls(c, k, ks, _checks.conv_padding(conv), conv.bias is not None, m, points,
                    dtype=conv.weight.dtype, device=conv.weight.device, stride=conv.stride[0], decompose=decompose)
        w = conv.weight.detach()
        if spatial_mask is None:
            spatial_mask = getattr(conv, "spatial_mask", None)
        if spatial_mask is not None:
            w = w * spatial_mask.to(w.dtype)
        d = layer.dwm
        q64 = winograd_weight(w if d is None else dwm.expand_weight(w, d), m, layer.points)
        with torch.no_grad():
            layer.q.copy_(q64.to(layer.q.dtype))
            layer.mask.copy_(layer.q != 0)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias.detach())
        return layer

    @classmethod
    def from_q(
        cls,
        q: torch.Tensor,
        bias: torch.Tensor | None = None,
        padding: int | tuple[int, int] = 0,
        m: int = 4,
        r: int = 3,
        points: Sequence[object] | None = None,
        decomposition: tuple[int, int] | None = None,
    ) -> WinogradConv2d:
        """Build from a Winograd-domain weight ``q`` (K, C, n, n) that was built with (m, r, points)
        (for a decomposed conv, ``decomposition = (kernel, stride)``, r the piece size and C the input
        channels · pieces)."""
        n = tile_size(m, r)
        if not isinstance(q, torch.Tensor) or q.dim() != 4 or q.shape[2:] != (n, n):
            raise ValueError(f"q must be a (K, C, {n}, {n}) tensor for F({m},{r})")
        k, c = q.shape[:2]
        if decomposition is None:
            layer = cls(c, k, r, padding, bias is not None, m, points, dtype=q.dtype, device=q.device, decompose=False)
        else:
            d = dwm.decomposition(*decomposition)
            if d.r != r:
                raise ValueError(f"a {d.kernel}x{d.kernel} stride-{d.stride} kernel has {d.r}x{d.r} pieces, not r={r}")
            layer = cls(_checks.real_channels(c, d), k, d.kernel, padding, bias is not None, m, points, dtype=q.dtype,
                        device=q.device, stride=d.stride, decompose=True)
        with torch.no_grad():
            layer.q.copy_(q)
            layer.mask.copy_(q != 0)
            if bias is not None:
                layer.bias.copy_(bias)
        return layer

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Q ⊙ mask, not Q: the mask holds whatever loop trains the layer (a plain optimizer.step()
        # regrows pruned entries of q; they never reach the output, the metric or the packed weight).
        return winograd_conv2d_q(x, self.masked_q(), self.bias, self.padding, self.m, self.r, self.points,
                                 winograd_relu=self.winograd_relu, decomposition=self.dwm)

    def masked_q(self) -> torch.Tensor:
        """``Q ⊙ mask``: the weight the layer computes with (differentiable in ``q``)."""
        return self.q * self.mask.to(self.q.dtype)

    # -- pruning support ----------------------------------------------------------------------
    @torch.no_grad()
    def apply_mask(self) -> None:
        """Re-zero pruned entries of Q (the authors' ``mask.apply()``). A no-op while ``q`` is
        computed from spatial kernels (``spatial_kernels``): there the forward's mask is the only one."""
        if parametrize.is_parametrized(self, "q"):
            return
        self.q.mul_(self.mask.to(self.q.dtype))

    def finalize(self) -> WinogradWeight:
        """Make pruning permanent and return the packer's input (exact zeros at pruned entries)."""
        self.apply_mask()
        q = self.q.detach().clone()
        b = None if self.bias is None else self.bias.detach().clone()
        return WinogradWeight(q, self.m, self.r, self.points, b, self.padding, self.decomposition)

    @torch.no_grad()
    def to_packed(self, block: Sequence[int] = (16, 1), dtype: torch.dtype | None = None) -> PackedWinogradWeight:
        """The packed weight of ``q ⊙ mask`` at granularity ``block``, values in ``dtype`` (default:
        the layer's dtype). What ``convert`` and ``SparseWinogradConv2d.from_conv2d`` build from this
        layer; the layer is not modified.

        Example:
            >>> layer = WinogradConv2d(8, 16, 3, padding=1)
            >>> layer.to_packed((16, 1)).density
            1.0
        """
        return pack_winograd_weight(self.masked_q().detach(), block, r=self.r, points=self.points,
                                    dtype=dtype or self.q.dtype, decomposition=self.decomposition)

    def spatial_mask_of(self) -> torch.Tensor:
        raise ValueError(
            "a Winograd-direct layer has no spatial weight, so its mask has no spatial-domain form; "
            "export it in the Winograd domain"
        )

    def support(self) -> torch.Tensor:
        return position_support(self.m, self.r, self.points)

    # -- state_dict: remember the tile and the points -----------------------------------------
    def get_extra_state(self) -> dict:
        return {"m": self.m, "r": self.r, "points": list(points_key(self.m, self.r, self.points)),
                "decomposition": None if self.decomposition is None else list(self.decomposition),
                "winograd_relu": self.winograd_relu}

    def set_extra_state(self, state: dict) -> None:
        if not isinstance(state, dict) or not {"m", "r", "points"} <= set(state):
            raise ValueError(f"bad WinogradConv2d extra state: {state!r}")
        mine = self.get_extra_state()
        if (state["m"], state["r"], list(state["points"])) != (mine["m"], mine["r"], mine["points"]):
            raise ValueError(
                f"this state_dict holds Q built for F({state['m']},{state['r']}) with points "
                f"{state['points']}, but the layer is F({self.m},{self.r}) with points {mine['points']}; "
                "a Q built with one point set cannot run with another"
            )
        theirs = state.get("decomposition")  # absent in files written before decomposed layers existed
        if (None if theirs is None else list(theirs)) != mine["decomposition"]:
            raise ValueError(f"this state_dict holds a layer decomposed as {theirs} (kernel, stride), but this "
                             f"layer's is {mine['decomposition']}")
        if bool(state.get("winograd_relu", False)) != self.winograd_relu:
            raise ValueError("this state_dict holds a " + ("Winograd-ReLU" if state.get("winograd_relu") else "plain")
                             + f" Winograd layer, but this layer is a {type(self).__name__}: they compute different "
                               "functions (use convert_to_winograd_relu on the model first)")

    def extra_repr(self) -> str:
        pts = ", ".join(points_key(self.m, self.r, self.points))
        shape = f"kernel_size={self.r}"
        if self.decomposition is not None:
            shape = (f"kernel_size={self.kernel_size}, stride={self.stride}, decomposed into "
                     f"{self.dwm.pieces} pieces of {self.r}x{self.r}")
        return (f"{self.in_channels}, {self.out_channels}, {shape}, padding={self.padding}, "
                f"bias={self.bias is not None}, F({self.m},{self.r}), points=({pts})")


class WinogradReLUConv2d(WinogradConv2d):
    """Liu et al.'s Winograd-ReLU convolution: ``Y = Aᵀ[Q ⊙ ReLU(Bᵀ X B)]A`` summed over input
    channels, with the trainable weight ``q`` in the Winograd domain and the ReLU of the previous
    layer moved after the input transform, so both Q and the transformed activations are sparse
    [paper, ICLR 2018; code xingyul/sparse-winograd-cnn ``WinogradImTrans(x, relu)``].

    Same arguments, attributes, pruning (``WinogradPruner``, e.g. ``method="liu"``), ``to_packed``
    and ``state_dict`` as :class:`WinogradConv2d`; ``convert`` turns it into a
    ``SparseWinogradConv2d(winograd_relu=True)``. Its input is the previous layer's *pre*-activation
    (:func:`convert_to_winograd_relu` removes that ReLU). Not a spatial convolution: the result
    depends on the tile grid (m) and has no ``nn.Conv2d`` equivalent.

    Example:
        >>> layer = WinogradReLUConv2d(8, 16, 3, padding=1, m=2)
        >>> tuple(layer(torch.randn(1, 8, 10, 10)).shape)
        (1, 16, 10, 10)
    """

    winograd_relu = True


def _layer_kinds(kinds: tuple) -> tuple:
    # the layer classes among ``kinds`` (subclasses count: a WinogradReLUConv2d is a WinogradConv2d)
    return tuple(k for k in kinds if k is not nn.Conv2d)


def _kernel_of(mod: nn.Module) -> int:
    ks = mod.kernel_size
    return ks[0] if isinstance(ks, tuple) else ks


def eligible_convs(model: nn.Module, r: int | None = None, kinds: tuple = (nn.Conv2d,)) -> dict[str, nn.Module]:
    """Named modules of type ``kinds`` (``nn.Conv2d``, ``WinogradConv2d``, converted
    ``SparseWinogradConv2d``) that a Winograd F(m, r) can run (in module order)."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, WinogradConv2d | SparseWinogradConv2d) and isinstance(mod, _layer_kinds(kinds)):
            if r is None or _kernel_of(mod) == r:
                out[name] = mod
        elif isinstance(mod, nn.Conv2d) and nn.Conv2d in kinds and _checks.conv_ineligible_reason(mod, r) is None:
            out[name] = mod
    return out


def convert_to_winograd(
    model: nn.Module,
    m: int = 4,
    points: Sequence[object] | None = None,
    r: int | None = 3,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> dict[str, WinogradConv2d]:
    """Swap every eligible r×r ``nn.Conv2d`` of ``model`` (in place) for a ``WinogradConv2d``
    (stride-2 ones decomposed, ``tritonwino.dwm``; ``r=None``: every eligible kernel size).

    Spatial masks attached by :class:`SpatialPruner` carry over as exact zeros of Q. Returns the
    new layers by name. ``filter_fn(module, name) -> bool`` may exclude layers (the argument order
    of ``tritonwino.sparse_conv.convert``; a ``(name, module)`` filter still works, with a
    DeprecationWarning, until the next release).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    keep = _checks.module_filter(filter_fn, "filter_fn")
    convs = eligible_convs(model, r)
    out = {}
    for name, conv in convs.items():
        if keep is not None and not keep(conv, name):
            continue
        layer = WinogradConv2d.from_conv2d(conv, m=m, points=points)
        model.set_submodule(name, layer)
        out[name] = layer
    return out


# Modules that commute with a ReLU (max(relu(x)) = relu(max(x))): a ReLU may be moved past them.
_COMMUTES_WITH_RELU = (nn.MaxPool2d, nn.Identity, nn.Dropout)


def convert_to_winograd_relu(
    model: nn.Module,
    m: int = 4,
    points: Sequence[object] | None = None,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> dict[str, WinogradReLUConv2d]:
    """Rewrite every ReLU→Conv2d pair of ``model`` (in place) into Liu et al.'s Winograd-ReLU form:
    the ``nn.ReLU`` becomes ``nn.Identity`` and the conv a :class:`WinogradReLUConv2d` initialised
    with ``Q = G W Gᵀ``, so the ReLU acts on the transformed tiles instead of the spatial input.

    Pairs are found inside ``nn.Sequential`` containers (where a child's output feeds only the next
    child): a ReLU, any ``MaxPool2d`` / ``Identity`` / ``Dropout`` between (they commute with a ReLU),
    then a stride-1 ``nn.Conv2d`` that plain Winograd runs (3×3, odd square). This changes the
    function (Liu's network is a different network): retrain afterwards. Returns the new layers by name.

    Args:
        model: changed in place.
        m: output tile of F(m, 3) (Liu et al. used F(2, 3)).
        points: interpolation points (default: the standard set).
        filter_fn: ``filter_fn(conv, conv_name) -> bool`` may exclude convs (the argument order of
            every filter in the library; a ``(name, module)`` filter still works, with a DeprecationWarning).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        ...                     nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        >>> sorted(convert_to_winograd_relu(net, m=2))
        ['3']
        >>> type(net[1]).__name__, type(net[3]).__name__
        ('Identity', 'WinogradReLUConv2d')
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    keep = _checks.module_filter(filter_fn, "filter_fn")
    out: dict[str, WinogradReLUConv2d] = {}
    for seq_name, seq in list(model.named_modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for i, (relu_name, relu) in enumerate(children):
            if type(relu) is not nn.ReLU:
                continue
            j = i + 1
            while j < len(children) and isinstance(children[j][1], _COMMUTES_WITH_RELU):
                j += 1
            if j == len(children) or type(children[j][1]) is not nn.Conv2d:
                continue
            conv_name, conv = children[j]
            full = f"{seq_name}.{conv_name}" if seq_name else conv_name
            if (_checks.conv_ineligible_reason(conv) is not None
                    or dwm.plan(conv.kernel_size[0], conv.stride[0]) is not None):
                continue
            if keep is not None and not keep(conv, full):
                continue
            setattr(seq, conv_name, WinogradReLUConv2d.from_conv2d(conv, m=m, points=points))
            setattr(seq, relu_name, nn.Identity())
            out[full] = getattr(seq, conv_name)
    return out


def winograd_sparsity(
    weight_or_q: torch.Tensor | nn.Module, m: int, r: int = 3, points: Sequence[object] | None = None
) -> float:
    """The paper's metric [code ``print_mask_info_winograd``]: the fraction of exact zeros of ``Q``.

    ``weight_or_q`` may be
    - a spatial weight (K, C, r, r): ``Q = G W Gᵀ`` is computed in float64 first;
    - a Winograd-domain weight (K, C, n, n), n = m + r − 1 (taken as is);
    - an ``nn.Conv2d`` (its weight times its spatial mask, decomposed if stride 2 / larger than 3×3)
      or a ``WinogradConv2d`` (its ``q``; ``m`` must match the layer's).

    With m == 1 (n == r) a tensor is read as a spatial weight. For a whole model use
    :func:`tritonwino.pruning.model_winograd_sparsity`.
    """
    check_m(m)
    if isinstance(weight_or_q, WinogradConv2d):
        if weight_or_q.m != m:
            raise ValueError(f"layer was built for F({weight_or_q.m},{weight_or_q.r}) but m={m} was given")
        q = weight_or_q.masked_q().detach()
        return float((q == 0).sum()) / q.numel()
    if isinstance(weight_or_q, nn.Conv2d):  # its own decomposition, if any
        q = conv_winograd_weight(weight_or_q, m, points)
        return float((q == 0).sum()) / q.numel()
    if not isinstance(weight_or_q, torch.Tensor):
        raise TypeError(
            f"weight_or_q must be a tensor, nn.Conv2d or WinogradConv2d, got {type(weight_or_q).__name__}"
        )
    if weight_or_q.dim() != 4 or weight_or_q.shape[2] != weight_or_q.shape[3]:
        raise ValueError(f"expected a (K, C, s, s) tensor, got shape {tuple(weight_or_q.shape)}")
    s = weight_or_q.shape[-1]
    n = tile_size(m, r)
    if s == r:
        q = winograd_weight(weight_or_q.detach(), m, points)
    elif s == n:
        q = weight_or_q.detach()
    else:
        raise ValueError(
            f"last dims {s}x{s} match neither a spatial {r}x{r} kernel nor a {n}x{n} Winograd tile of F({m},{r})"
        )
    return float((q == 0).sum()) / q.numel()
