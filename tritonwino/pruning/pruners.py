"""Model-level pruners: step 1 (``SpatialPruner``), step 2 and the Winograd-domain baselines
(``WinogradPruner``), all with one interface:

    pruner.prune(target)        # new per-layer masks (binary-searched thresholds), applied at once
    loss.backward()
    pruner.step(optimizer)      # (step 2: grad ← grad / F̂^α) → optimizer.step() → re-apply masks
    pruner.sparsity()           # Winograd-domain sparsity per layer and overall

Masks live on the layers as bool buffers (``spatial_mask`` on ``nn.Conv2d``, ``mask`` on
``WinogradConv2d``), so they travel with ``state_dict``. Under DistributedDataParallel the masks
are computed from the (synchronised) weights on every rank and then broadcast from rank 0, so
they are identical everywhere; gradient scaling runs after ``backward()``, i.e. on the all-reduced
gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.utils import parametrize

from .. import _checks, dwm
from ..modules import SparseWinogradConv2d
from ..transforms import normalize_points
from .helpers import (
    check_block,
    check_target,
    importance_factor,
    li_importance,
    winograd_weight,
)
from .layers import WinogradConv2d, WinogradWeight, conv_winograd_weight, eligible_convs
from .masks import (
    prune_spatial_magnitude,
    prune_spatial_structured,
    prune_winograd,
    winograd_mask_from_spatial,
)

__all__ = ["SpatialPruner", "WinogradPruner", "attach_spatial_mask", "model_winograd_sparsity", "finalize",
           "export_masks", "load_pruned_state_dict"]


def _unwrap(model: nn.Module) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _select(
    all_layers: dict[str, nn.Module],
    layers: Iterable[str] | Callable[[str, nn.Module], bool] | None,
    keep_dense: str | Iterable[str] | None,
) -> tuple[dict[str, nn.Module], list[str]]:
    if layers is None:
        chosen = dict(all_layers)
    elif callable(layers):
        keep = _checks.module_filter(layers, "layers")
        chosen = {n: mod for n, mod in all_layers.items() if keep(mod, n)}
    else:
        names = list(layers)
        missing = [n for n in names if n not in all_layers]
        if missing:
            raise ValueError(f"layers {missing} are not eligible layers of the model; eligible: {list(all_layers)}")
        chosen = {n: all_layers[n] for n in names}
    if keep_dense == "first":
        dense = list(all_layers)[:1]
    elif keep_dense is None:
        dense = []
    elif isinstance(keep_dense, str):
        raise ValueError(f"keep_dense must be 'first', None or a list of layer names, got {keep_dense!r}")
    else:
        dense = list(keep_dense)
        bad = [n for n in dense if n not in all_layers]
        if bad:
            raise ValueError(f"keep_dense names {bad} are not eligible layers; eligible: {list(all_layers)}")
    out = {n: mod for n, mod in chosen.items() if n not in dense}
    if not out:
        raise ValueError(
            f"no layers left to prune: selected {list(chosen)}, kept dense {dense} "
            "(pass keep_dense=None to prune the first conv too)"
        )
    return out, dense


def _broadcast_mask(mask: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        buf = mask.to(torch.uint8)
        dist.broadcast(buf, src=0)
        return buf.bool()
    return mask


class _Pruner:
    kind = nn.Module

    def __init__(self, model, layers, keep_dense, overrides, block, tol, max_iter, sync):
        self.model = _unwrap(model)
        self.block = check_block(block)
        self.tol = float(tol)
        self.max_iter = int(max_iter)
        self.sync = bool(sync)
        all_layers = self._eligible()
        if not all_layers:
            raise ValueError(f"model has no eligible {self.kind.__name__} layers to prune")
        self.layers, self.dense_layers = _select(all_layers, layers, keep_dense)
        self.overrides: dict[str, float | None] = {}
        for name, t in dict(overrides or {}).items():
            if name not in self.layers:
                raise ValueError(f"override for {name!r}, which is not a pruned layer; pruned: {list(self.layers)}")
            self.overrides[name] = None if t is None else check_target(t, f"overrides[{name!r}]")
        self.thresholds: dict[str, float] = {}
        self.achieved: dict[str, float] = {}

    def _eligible(self) -> dict[str, nn.Module]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _target_for(self, name: str, target: float | Mapping[str, float]) -> float | None:
        if name in self.overrides:
            return self.overrides[name]
        if isinstance(target, Mapping):
            return None if target.get(name) is None else check_target(target[name], f"target[{name!r}]")
        return check_target(target)

    def prune(self, target: float | Mapping[str, float]) -> dict[str, float]:
        """Compute new masks for every pruned layer at ``target`` (or per-layer targets), keep
        everything an earlier stage pruned, apply them. Returns the achieved sparsity per layer."""
        out = {}
        for name, mod in self.layers.items():
            t = self._target_for(name, target)
            if t is None:
                continue
            mask, tau, achieved = self._layer_mask(mod, t)
            mask = _broadcast_mask(mask) if self.sync else mask
            self._set_mask(mod, mask)
            self.thresholds[name] = tau
            self.achieved[name] = achieved
            out[name] = achieved
        self.apply_masks()
        return out

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()`` then re-apply the masks."""
        optimizer.step()
        self.apply_masks()

    def sparsity(self) -> dict[str, float]:
        """Winograd-domain sparsity (exact zeros of Q) of every pruned layer, plus ``"overall"``."""
        return model_winograd_sparsity(self.model, self.m, self.points, list(self.layers))


def _enforce_spatial_mask(module: nn.Module, args) -> None:
    """Forward pre-hook of a spatially pruned conv: re-zero the pruned weights before the forward
    reads them, so the masks hold whatever loop trains the model (a plain ``optimizer.step()``,
    Lightning, the HF Trainer regrow them; ``pruner.step(opt)`` is then no longer required).
    Skipped while the weight is unchanged since the last masking (same version counter and
    storage), so a model run twice before one backward (gradient accumulation, weight sharing)
    never sees its weight modified in place between the two."""
    mask, w = getattr(module, "spatial_mask", None), getattr(module, "weight", None)
    if not isinstance(mask, torch.Tensor) or not isinstance(w, torch.Tensor):
        return
    state = (w._version, w.data_ptr())
    if getattr(module, "_tritonwino_masked", None) == state:
        return
    with torch.no_grad():
        w.mul_(mask.to(w.dtype))
    module._tritonwino_masked = (w._version, w.data_ptr())


# a converted layer has no spatial mask: convert does not carry this hook over
_enforce_spatial_mask._tritonwino_drop_on_convert = True


def attach_spatial_mask(conv: nn.Conv2d) -> None:
    """Give ``conv`` a ``spatial_mask`` buffer (all kept, unless it has one) and the forward
    pre-hook that enforces it (once)."""
    if not hasattr(conv, "spatial_mask"):
        conv.register_buffer("spatial_mask", torch.ones_like(conv.weight, dtype=torch.bool))
    if _enforce_spatial_mask not in conv._forward_pre_hooks.values():
        conv.register_forward_pre_hook(_enforce_spatial_mask)


class SpatialPruner(_Pruner):
    """Step 1: spatial structured pruning (``method="structured"``) or the spatial unstructured
    magnitude baseline (``method="magnitude"``; its target is a **spatial** sparsity).

    A stride-2 or larger-than-3×3 conv is pruned per piece of its decomposition (``tritonwino.dwm``):
    step 1 runs on the pieces' (K, C·pieces, r, r) weight with the groups and supports of the piece
    tile F(m, r_piece), and the mask folds back onto the k×k kernel (each weight is in one piece).

    Args:
        model: the network (or its DDP wrapper); eligible layers are r×r ``nn.Conv2d`` (stride 1 or 2;
            ``r=None``: every eligible kernel size).
        m, points: the Winograd tile the sparsity is measured (and the groups defined) for.
        block: granularity (1, 1) element (paper), (bk, 1) vector, (bk, bc) block.
        layers: names (or a ``filter(module, name) -> bool``) of layers to prune; default all eligible.
        keep_dense: ``"first"`` (default: the first eligible conv stays dense) [ours; the authors
            prune layer 0 to a fixed 20%, available through ``overrides``], ``None`` or names.
        overrides: ``{name: target}`` per-layer targets that replace the global one.
        tol: binary-search tolerance on the layer's sparsity (authors: 1e-4).
    """

    kind = nn.Conv2d

    def __init__(
        self,
        model: nn.Module,
        m: int = 4,
        points: Sequence[object] | None = None,
        r: int | None = 3,
        method: str = "structured",
        block=(1, 1),
        layers=None,
        keep_dense="first",
        overrides: Mapping[str, float | None] | None = None,
        tol: float = 1e-4,
        max_iter: int = 60,
        sync: bool = True,
    ):
        if method not in ("structured", "magnitude"):
            raise ValueError(f"method must be 'structured' or 'magnitude', got {method!r}")
        self.m, self.r, self.points, self.method = m, r, points, method
        if r is not None:
            winograd_weight(torch.zeros(1, 1, r, r), m, points)  # validates (m, r, points)
        super().__init__(model, layers, keep_dense, overrides, block, tol, max_iter, sync)
        if method == "magnitude" and self.block != (1, 1):
            raise ValueError("the spatial magnitude baseline is element-wise; use block=(1, 1)")
        for mod in self.layers.values():
            attach_spatial_mask(mod)

    def _eligible(self):
        return eligible_convs(self.model, self.r, kinds=(nn.Conv2d,))

    def _layer_mask(self, mod, t):
        if self.method == "magnitude":
            return prune_spatial_magnitude(mod.weight, t, mod.spatial_mask)
        d = dwm.plan(mod.kernel_size[0], mod.stride[0])
        if d is None:
            return prune_spatial_structured(mod.weight, t, self.m, self.points, self.block,
                                            mod.spatial_mask, self.tol, self.max_iter)
        # per piece: the pieces' zero padding is pruned from the start (it is zero), so it counts
        # like any other zero of Q; the mask folds back onto the k×k kernel
        mask, tau, achieved = prune_spatial_structured(
            dwm.expand_weight(mod.weight.detach(), d), t, self.m, self.points, self.block,
            dwm.expand_weight(mod.spatial_mask, d), self.tol, self.max_iter)
        return dwm.fold_weight(mask, d), tau, achieved

    def _set_mask(self, mod, mask):
        mod.spatial_mask.copy_(mask)

    @torch.no_grad()
    def apply_masks(self) -> None:
        for mod in self.layers.values():
            mod.weight.mul_(mod.spatial_mask.to(mod.weight.dtype))

    def masks(self, domain: str = "spatial") -> dict[str, torch.Tensor]:
        return export_masks(self.model, domain, self.m, self.points, list(self.layers))


class WinogradPruner(_Pruner):
    """Step 2 (``method="yu"``, Winograd-direct pruning with the importance factor) and the
    Winograd-domain baselines ``"li"`` (Li et al. native pruning: A-only position scaling) and
    ``"liu"`` (Liu et al.: plain magnitude to a density, i.e. target = 1 − density).

    The model must contain ``WinogradConv2d`` layers (see ``convert_to_winograd``).
    Score = ``|Q| · S`` with S = F̂ (yu), outer(‖Aᵀ cols‖) (li) or 1 (liu); per-layer τ by binary
    search. ``alpha``: gradients are divided by F̂^alpha before the optimizer step; default 1.5 for
    "yu" [code, GradOptimizer] and 0 for the baselines [ours: their papers scale no gradient].
    Weight decay inside the optimizer is therefore not scaled [code].
    """

    kind = WinogradConv2d

    def __init__(
        self,
        model: nn.Module,
        method: str = "yu",
        alpha: float | None = None,
        block=(1, 1),
        layers=None,
        keep_dense="first",
        overrides: Mapping[str, float | None] | None = None,
        tol: float = 1e-4,
        max_iter: int = 60,
        sync: bool = True,
    ):
        if method not in ("yu", "li", "liu"):
            raise ValueError(f"method must be 'yu', 'li' or 'liu', got {method!r}")
        self.method = method
        if alpha is None:
            alpha = 1.5 if method == "yu" else 0.0
        if isinstance(alpha, bool) or not isinstance(alpha, int | float):
            raise TypeError(f"alpha must be a number, got {type(alpha).__name__}")
        self.alpha = float(alpha)
        super().__init__(model, layers, keep_dense, overrides, block, tol, max_iter, sync)
        ms = {(mod.m, mod.r, mod.points) for mod in self.layers.values()}
        first = next(iter(self.layers.values()))
        self.m, self.points = first.m, first.points
        self.mixed_tiles = len(ms) > 1

    def _eligible(self):
        return eligible_convs(self.model, None, kinds=(WinogradConv2d,))

    def importance(self, mod: WinogradConv2d) -> torch.Tensor | None:
        if self.method == "yu":
            return importance_factor(mod.m, mod.r, mod.points)
        if self.method == "li":
            return li_importance(mod.m, mod.r, mod.points)
        return None

    def _layer_mask(self, mod, t):
        return prune_winograd(mod.q, t, self.importance(mod), self.block, mod.mask, self.tol, self.max_iter)

    def _set_mask(self, mod, mask):
        mod.mask.copy_(mask)

    @torch.no_grad()
    def apply_masks(self) -> None:
        for mod in self.layers.values():
            mod.apply_mask()

    @torch.no_grad()
    def scale_gradients(self) -> None:
        """``grad_Q ← grad_Q / F̂^alpha`` on every pruned layer (call after ``backward()``)."""
        if self.alpha == 0.0:
            return
        for mod in self.layers.values():
            if parametrize.is_parametrized(mod, "q"):
                continue  # spatial kernels (pruning.reparam): W is trained, not Q
            if mod.q.grad is not None:
                f = importance_factor(mod.m, mod.r, mod.points).pow(-self.alpha)
                mod.q.grad.mul_(f.to(device=mod.q.grad.device, dtype=mod.q.grad.dtype))

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """scale gradients → ``optimizer.step()`` → re-apply masks."""
        self.scale_gradients()
        optimizer.step()
        self.apply_masks()

    def sparsity(self) -> dict[str, float]:
        return model_winograd_sparsity(self.model, layers=list(self.layers))

    def masks(self, domain: str = "winograd") -> dict[str, torch.Tensor]:
        return export_masks(self.model, domain, layers=list(self.layers))


def _layer_q(mod: nn.Module, m: int, points) -> torch.Tensor:
    if isinstance(mod, WinogradConv2d):
        if mod.m != m and m is not None:
            raise ValueError(f"layer is F({mod.m},{mod.r}) but m={m} was asked for")
        return mod.masked_q().detach()
    return conv_winograd_weight(mod, m, points)  # W ⊙ spatial_mask, over its pieces if decomposed


def model_winograd_sparsity(
    model: nn.Module,
    m: int | None = 4,
    points: Sequence[object] | None = None,
    layers: Sequence[str] | None = None,
    min_sparsity: float = 0.0,
) -> dict[str, float]:
    """Winograd-domain sparsity per layer and ``"overall"`` (zeros / entries summed over layers).

    Layers: ``layers`` by name, else every eligible 3×3 conv, ``WinogradConv2d`` and converted
    ``SparseWinogradConv2d``. The last two use their own tile (pass ``m=None`` for models with
    only those); a ``WinogradConv2d`` counts ``Q ⊙ mask``, what it computes with.
    ``min_sparsity``: the overall figure only counts layers above it (authors: 0.05) [code].
    """
    model = _unwrap(model)
    mods = dict(model.named_modules())
    if layers is None:
        layers = list(eligible_convs(model, None, kinds=(nn.Conv2d, WinogradConv2d, SparseWinogradConv2d)))
    out: dict[str, float] = {}
    zeros = total = 0
    for name in layers:
        if name not in mods:
            raise ValueError(f"no layer named {name!r} in the model")
        mod = mods[name]
        if isinstance(mod, SparseWinogradConv2d):
            z, n = mod.winograd_zeros()  # its own tile and points
        else:
            if isinstance(mod, WinogradConv2d):
                q = mod.masked_q().detach()  # its own tile and points
            elif m is None:
                raise ValueError(f"layer {name!r} is an nn.Conv2d; give m to measure its Winograd sparsity")
            else:
                q = _layer_q(mod, m, points)
            z, n = int((q == 0).sum()), q.numel()
        out[name] = z / n if n else 0.0
        if out[name] > min_sparsity:
            zeros += z
            total += n
    out["overall"] = zeros / total if total else 0.0
    return out


def _pruned_layer_names(mods: dict[str, nn.Module]) -> list[str]:
    """Layers a pruner has touched: Winograd-domain layers and convs carrying a spatial mask."""
    return [n for n, mod in mods.items()
            if isinstance(mod, WinogradConv2d) or (isinstance(mod, nn.Conv2d) and hasattr(mod, "spatial_mask"))]


def export_masks(
    model: nn.Module,
    domain: str = "winograd",
    m: int = 4,
    points: Sequence[object] | None = None,
    layers: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Masks by layer name (bool, True = kept).

    ``domain="spatial"``: (K, C, r, r) for spatially pruned convs (a ``WinogradConv2d`` has no
    spatial form and raises). ``domain="winograd"``: (K, C, n, n) — a spatial mask is mapped to the
    Winograd entries it makes structurally zero (tile ``m``/``points``; (K, C·pieces, n, n) over the
    pieces of a decomposed conv); a ``WinogradConv2d`` gives its own mask.
    """
    if domain not in ("spatial", "winograd"):
        raise ValueError(f"domain must be 'spatial' or 'winograd', got {domain!r}")
    model = _unwrap(model)
    mods = dict(model.named_modules())
    if layers is None:
        layers = _pruned_layer_names(mods)
    out = {}
    for name in layers:
        mod = mods[name]
        if isinstance(mod, WinogradConv2d):
            if domain == "spatial":
                mod.spatial_mask_of()
            out[name] = mod.mask.clone()
        else:
            sm = mod.spatial_mask if hasattr(mod, "spatial_mask") else torch.ones_like(mod.weight, dtype=torch.bool)
            d = dwm.plan(mod.kernel_size[0], mod.stride[0])
            if domain == "spatial":
                out[name] = sm.clone()
            else:
                out[name] = winograd_mask_from_spatial(sm if d is None else dwm.expand_weight(sm, d), m, points)
    return out


@torch.no_grad()
def finalize(
    model: nn.Module, m: int = 4, points: Sequence[object] | None = None, layers: Sequence[str] | None = None
) -> dict[str, WinogradWeight]:
    """Make pruning permanent and produce, per layer, the Winograd-domain weight for the packer.

    ``WinogradConv2d``: ``q ⊙ mask`` with its own (m, r, points). Spatially pruned ``nn.Conv2d``:
    the weight is zeroed in place, and ``Q = G (W ⊙ mask) Gᵀ`` is computed in float64 for tile
    ``m``/``points`` and cast to the weight's dtype (exact zeros survive the cast).
    Feed each result to ``pack_winograd_weight(w.q, block=..., r=w.r, points=w.points)``.
    """
    model = _unwrap(model)
    mods = dict(model.named_modules())
    if layers is None:
        layers = _pruned_layer_names(mods)
    out = {}
    for name in layers:
        mod = mods[name]
        if isinstance(mod, WinogradConv2d):
            out[name] = mod.finalize()
        elif isinstance(mod, nn.Conv2d):
            if hasattr(mod, "spatial_mask"):
                mod.weight.mul_(mod.spatial_mask.to(mod.weight.dtype))
            d = dwm.plan(mod.kernel_size[0], mod.stride[0])
            r = mod.weight.shape[-1] if d is None else d.r
            q = conv_winograd_weight(mod, m, points).to(mod.weight.dtype)
            b = None if mod.bias is None else mod.bias.detach().clone()
            out[name] = WinogradWeight(q, m, r, normalize_points(m, r, points), b, tuple(mod.padding),
                                       None if d is None else (d.kernel, d.stride))
        else:
            raise ValueError(f"layer {name!r} is a {type(mod).__name__}, not a conv layer")
    return out


def load_pruned_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True):
    """Load a pruned model's ``state_dict`` into a freshly built model.

    Adds the ``spatial_mask`` buffers a spatially pruned model carries, and swaps ``nn.Conv2d``
    layers that were ``WinogradConv2d`` when saved (their tile, points and decomposition come from
    the saved extra state). Then calls ``model.load_state_dict(state_dict, strict)``. A model with
    Winograd-ReLU layers must be rewritten first (``convert_to_winograd_relu``): which ReLU moved is
    not in the file.
    """
    model = _unwrap(model)
    mods = dict(model.named_modules())
    for key, val in state_dict.items():
        if key.endswith(".spatial_mask"):
            name = key[: -len(".spatial_mask")]
            mod = mods.get(name)
            if isinstance(mod, nn.Conv2d):
                attach_spatial_mask(mod)
        elif key.endswith("._extra_state") and isinstance(val, dict) and {"m", "r", "points"} <= set(val):
            name = key[: -len("._extra_state")]
            mod = mods.get(name)
            if isinstance(mod, nn.Conv2d):
                if val.get("winograd_relu"):
                    raise ValueError(f"layer {name!r} was saved as a WinogradReLUConv2d: apply "
                                     "convert_to_winograd_relu to the model before loading")
                layer = WinogradConv2d.from_conv2d(mod, m=val["m"], points=val["points"],
                                                   decompose=val.get("decomposition") is not None)
                model.set_submodule(name, layer)
    return model.load_state_dict(state_dict, strict=strict)
