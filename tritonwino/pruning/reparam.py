"""Retrain Winograd-domain layers through their spatial kernels: ``Q = (G W Gᵀ) ⊙ mask``.

[ours; the joint spatial/Winograd-domain sparsity of Choi, El-Khamy and Lee (ICASSP 2019) is the
nearest prior art.] Step 2 of spatial-Winograd pruning trains Q itself: n² free entries per kernel
(36 for F(4,3)) where the spatial kernel has r² (9). The extra freedom makes the layer position-
dependent within a tile, which generalises badly (docs/pruning.md: retraining Q at lr 3e-4 without
pruning anything loses 1.6 points on Fashion-MNIST); the authors keep the steps tiny (lr 1e-6) and
scale the gradients by F̂^-1.5. Here the trainable parameter is the spatial kernel W instead:
pruning still zeroes Winograd-domain entries (the layer's ``mask``, applied in its forward), but
the kept entries stay those of ``G W Gᵀ``, so the layer keeps r² degrees of freedom per kernel and
retrains at spatial learning rates.

``spatial_kernels(model)`` is a context manager: inside it every chosen ``WinogradConv2d``'s ``q``
is computed from a trainable W (``torch.nn.utils.parametrize``), on exit ``q`` is a plain
``Parameter`` again holding ``G W Gᵀ``. Build optimizers inside the block: the parameters differ.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..transforms import SPATIAL_REL_TOL, fit_spatial_kernel, winograd_matrices
from .layers import WinogradConv2d, eligible_convs

__all__ = ["SpatialKernel", "spatial_kernels"]


class SpatialKernel(nn.Module):
    """The parametrization ``W -> G W Gᵀ`` (computed in float64, returned in W's dtype)."""

    def __init__(self, g: torch.Tensor, mask: torch.Tensor | None = None, name: str = "layer"):
        super().__init__()
        self.register_buffer("g", g.to(torch.float64), persistent=False)
        self._fit_mask = mask  # only for the first right_inverse (registration): which entries must match
        self._name = name

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        g = self.g.to(w.device)
        return (g @ w.to(torch.float64) @ g.t()).to(w.dtype)

    def right_inverse(self, q: torch.Tensor) -> torch.Tensor:
        mask, self._fit_mask = self._fit_mask, None
        w, resid = fit_spatial_kernel(q, mask, self.g)
        if resid > SPATIAL_REL_TOL:
            raise ValueError(
                f"{self._name}: its Winograd-domain weight is not G W Gᵀ of any spatial kernel on the kept entries "
                f"(relative residual {resid:.1e}): it was trained in the Winograd domain (or is a Winograd-ReLU "
                "layer), so spatial kernels would change what it computes. Use them from the conversion of a "
                "spatial model on, in every Winograd-domain stage.")
        return w.to(q.dtype)


@contextmanager
def spatial_kernels(model: nn.Module, layers: Sequence[str] | None = None) -> Iterator[dict[str, WinogradConv2d]]:
    """Inside the block, the ``WinogradConv2d`` layers of ``model`` (or those named in ``layers``)
    train their spatial kernel W: ``q`` is computed as ``G W Gᵀ`` and the layer's forward applies
    its mask as always, so pruning (``WinogradPruner.prune``, which reads ``q``) and the sparsity
    metrics work unchanged. The F̂ gradient scaling of ``WinogradPruner`` does not apply (it scales
    Q-gradients; W is trained like a spatial weight, at spatial learning rates). On exit each ``q``
    is a plain ``Parameter`` holding ``G W Gᵀ`` (unmasked; the mask still applies in the forward).

    Raises ``ValueError`` naming the layer if its ``q ⊙ mask`` is not ``(G W Gᵀ) ⊙ mask`` of any W
    (a layer trained in the Winograd domain, a Winograd-ReLU layer) — the conversion would change
    its function — or if it is decomposed (``tritonwino.dwm``: its pieces share structural zeros).

    Args:
        model: the network with ``WinogradConv2d`` layers (e.g. after ``convert_to_winograd``).
        layers: names of the layers to reparametrize; default every ``WinogradConv2d``.

    Example:
        >>> from tritonwino.pruning import WinogradPruner, convert_to_winograd
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        >>> _ = convert_to_winograd(net)
        >>> with spatial_kernels(net) as layers:
        ...     pruner = WinogradPruner(net, keep_dense=None)
        ...     _ = pruner.prune(0.5)
        ...     opt = torch.optim.SGD(net.parameters(), lr=0.01)
        ...     net(torch.randn(1, 3, 8, 8)).sum().backward()
        ...     pruner.step(opt)
        >>> sorted(layers), tuple(net[0].q.shape), round(pruner.sparsity()["overall"], 2)
        (['0', '2'], (8, 3, 6, 6), 0.5)
    """
    found = eligible_convs(model, None, kinds=(WinogradConv2d,))
    if layers is None:
        chosen = found
    else:
        missing = [n for n in layers if n not in found]
        if missing:
            raise ValueError(f"layers {missing} are not WinogradConv2d layers of the model "
                             f"(those are {sorted(found)})")
        chosen = {n: found[n] for n in layers}
    done: list[WinogradConv2d] = []
    try:
        for name, mod in chosen.items():
            if mod.decomposition is not None:
                raise ValueError(f"{name}: a decomposed layer (kernel {mod.kernel_size}, stride {mod.stride}) "
                                 "cannot train spatial kernels: its pieces share structural zeros")
            if parametrize.is_parametrized(mod, "q"):
                raise ValueError(f"{name}: q is already parametrized (nested spatial_kernels?)")
            _, g, _ = winograd_matrices(mod.m, mod.r, mod.points)
            parametrize.register_parametrization(mod, "q", SpatialKernel(g, mod.mask.clone(), name))
            done.append(mod)
        yield chosen
    finally:
        for mod in done:
            parametrize.remove_parametrizations(mod, "q", leave_parametrized=True)
