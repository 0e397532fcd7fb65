"""``WinogradConv2d``: a trainable Winograd-domain convolution (parameter Q), and model conversion.

The layer is the authors' "Winograd layer" [code ``WinogradPruning/newLayers/Winograd2d.py``]:
parameters are Q ∈ R^{K×C×n×n}, initialised from a spatial conv as ``Q = G W Gᵀ``
(``load_state_normal``); positions that spatial pruning zeroed start at exactly 0. The forward
runs the library's own pure-torch Winograd path (``reference.winograd_conv2d_q``), which is
differentiable in Q.

Every layer remembers its (m, r, points). They are saved in the ``state_dict`` (``_extra_state``)
and loading a Q built with a different tile or point set raises ``ValueError`` [ours].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import nn

from .. import _checks
from ..modules import SparseWinogradConv2d
from ..packing import PackedWinogradWeight, pack_winograd_weight
from ..reference import winograd_conv2d_q
from ..transforms import normalize_points, tile_size
from .helpers import check_m, points_key, position_support, winograd_weight

__all__ = ["WinogradConv2d", "WinogradWeight", "convert_to_winograd", "eligible_convs", "winograd_sparsity"]


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

    @property
    def sparsity(self) -> float:
        return float((self.q == 0).sum()) / self.q.numel()


class WinogradConv2d(nn.Module):
    """Conv2d (stride 1, dilation 1, groups 1) whose trainable weight lives in the Winograd domain.

    Attributes: ``q`` (Parameter, (K, C, n, n)), ``bias`` (Parameter or None), ``mask`` (bool
    buffer, True = kept), ``m``, ``r``, ``points`` (tuple of ``Fraction``), ``padding``.
    """

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
    ):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("kernel_size", kernel_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.r = kernel_size
        self.m = m
        self.points = normalize_points(m, kernel_size, points)
        self.padding = _checks.check_padding(padding)
        n = tile_size(m, kernel_size)
        self.n = n
        w = torch.empty(out_channels, in_channels, kernel_size, kernel_size, dtype=torch.float64)
        nn.init.kaiming_uniform_(w, a=5 ** 0.5)
        self.q = nn.Parameter(winograd_weight(w, m, self.points).to(dtype=dtype, device=device))
        if bias:
            bound = 1 / (in_channels * kernel_size * kernel_size) ** 0.5
            self.bias = nn.Parameter(torch.empty(out_channels, dtype=dtype, device=device).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)
        self.register_buffer("mask", torch.ones(out_channels, in_channels, n, n, dtype=torch.bool, device=device))

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_conv2d(
        cls,
        conv: nn.Conv2d,
        m: int = 4,
        points: Sequence[object] | None = None,
        spatial_mask: torch.Tensor | None = None,
    ) -> WinogradConv2d:
        """Build from an ``nn.Conv2d``: ``Q = G (W ⊙ spatial_mask) Gᵀ`` in float64, then cast.

        ``spatial_mask`` defaults to the conv's ``spatial_mask`` buffer if spatial pruning attached
        one. Entries of Q that are exactly zero start pruned (mask False) [code: they start at 0].
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        reason = _checks.conv_ineligible_reason(conv)
        if reason:
            raise ValueError(f"cannot convert {conv}: {reason}")
        k, c, r, _ = conv.weight.shape
        layer = cls(c, k, r, _checks.conv_padding(conv), conv.bias is not None, m, points,
                    dtype=conv.weight.dtype, device=conv.weight.device)
        w = conv.weight.detach()
        if spatial_mask is None:
            spatial_mask = getattr(conv, "spatial_mask", None)
        if spatial_mask is not None:
            w = w * spatial_mask.to(w.dtype)
        q64 = winograd_weight(w, m, layer.points)
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
    ) -> WinogradConv2d:
        """Build from a Winograd-domain weight ``q`` (K, C, n, n) that was built with (m, r, points)."""
        n = tile_size(m, r)
        if not isinstance(q, torch.Tensor) or q.dim() != 4 or q.shape[2:] != (n, n):
            raise ValueError(f"q must be a (K, C, {n}, {n}) tensor for F({m},{r})")
        k, c = q.shape[:2]
        layer = cls(c, k, r, padding, bias is not None, m, points, dtype=q.dtype, device=q.device)
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
        return winograd_conv2d_q(x, self.masked_q(), self.bias, self.padding, self.m, self.r, self.points)

    def masked_q(self) -> torch.Tensor:
        """``Q ⊙ mask``: the weight the layer computes with (differentiable in ``q``)."""
        return self.q * self.mask.to(self.q.dtype)

    # -- pruning support ----------------------------------------------------------------------
    @torch.no_grad()
    def apply_mask(self) -> None:
        """Re-zero pruned entries of Q (the authors' ``mask.apply()``)."""
        self.q.mul_(self.mask.to(self.q.dtype))

    def finalize(self) -> WinogradWeight:
        """Make pruning permanent and return the packer's input (exact zeros at pruned entries)."""
        self.apply_mask()
        q = self.q.detach().clone()
        b = None if self.bias is None else self.bias.detach().clone()
        return WinogradWeight(q, self.m, self.r, self.points, b, self.padding)

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
                                    dtype=dtype or self.q.dtype)

    def spatial_mask_of(self) -> torch.Tensor:
        raise ValueError(
            "a Winograd-direct layer has no spatial weight, so its mask has no spatial-domain form; "
            "export it in the Winograd domain"
        )

    def support(self) -> torch.Tensor:
        return position_support(self.m, self.r, self.points)

    # -- state_dict: remember the tile and the points -----------------------------------------
    def get_extra_state(self) -> dict:
        return {"m": self.m, "r": self.r, "points": list(points_key(self.m, self.r, self.points))}

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

    def extra_repr(self) -> str:
        pts = ", ".join(points_key(self.m, self.r, self.points))
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.r}, padding={self.padding}, "
                f"bias={self.bias is not None}, F({self.m},{self.r}), points=({pts})")


def eligible_convs(model: nn.Module, r: int | None = None, kinds: tuple = (nn.Conv2d,)) -> dict[str, nn.Module]:
    """Named modules of type ``kinds`` (``nn.Conv2d``, ``WinogradConv2d``, converted
    ``SparseWinogradConv2d``) that a Winograd F(m, r) can run (in module order)."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, WinogradConv2d | SparseWinogradConv2d) and type(mod) in kinds:
            if r is None or mod.r == r:
                out[name] = mod
        elif isinstance(mod, nn.Conv2d) and nn.Conv2d in kinds and _checks.conv_ineligible_reason(mod, r) is None:
            out[name] = mod
    return out


def convert_to_winograd(
    model: nn.Module,
    m: int = 4,
    points: Sequence[object] | None = None,
    r: int = 3,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> dict[str, WinogradConv2d]:
    """Swap every eligible r×r ``nn.Conv2d`` of ``model`` (in place) for a ``WinogradConv2d``.

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


def winograd_sparsity(
    weight_or_q: torch.Tensor | nn.Module, m: int, r: int = 3, points: Sequence[object] | None = None
) -> float:
    """The paper's metric [code ``print_mask_info_winograd``]: the fraction of exact zeros of ``Q``.

    ``weight_or_q`` may be
    - a spatial weight (K, C, r, r): ``Q = G W Gᵀ`` is computed in float64 first;
    - a Winograd-domain weight (K, C, n, n), n = m + r − 1 (taken as is);
    - an ``nn.Conv2d`` (its weight) or a ``WinogradConv2d`` (its ``q``; ``m`` must match the layer's).

    With m == 1 (n == r) a tensor is read as a spatial weight. For a whole model use
    :func:`tritonwino.pruning.model_winograd_sparsity`.
    """
    check_m(m)
    if isinstance(weight_or_q, WinogradConv2d):
        if weight_or_q.m != m:
            raise ValueError(f"layer was built for F({weight_or_q.m},{weight_or_q.r}) but m={m} was given")
        q = weight_or_q.masked_q().detach()
        return float((q == 0).sum()) / q.numel()
    if isinstance(weight_or_q, nn.Conv2d):
        weight_or_q = weight_or_q.weight
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
