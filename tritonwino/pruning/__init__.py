"""Spatial-Winograd pruning (Yu, Park, Naumov 2019) and its baselines.

Step 1 (``SpatialPruner``): spatial structured pruning — L∞ group importance over the support of
each row of G⊗G, per-layer threshold by binary search to a target Winograd-domain sparsity.
Step 2 (``WinogradPruner(method="yu")``): Winograd-direct pruning of a trainable Winograd-domain
layer (``WinogradConv2d``) with importance ``|Q|·F̂`` and gradients scaled by ``F̂^-1.5``.
Baselines: ``SpatialPruner(method="magnitude")``, ``WinogradPruner(method="li")`` (Li et al. native
pruning), ``WinogradPruner(method="liu")`` (Liu et al. magnitude pruning). See ``docs/pruning.md``.
"""

from .helpers import (
    check_block,
    importance_factor,
    li_importance,
    position_support,
    winograd_weight,
)
from .layers import (
    WinogradConv2d,
    WinogradReLUConv2d,
    WinogradWeight,
    conv_winograd_weight,
    convert_to_winograd,
    convert_to_winograd_relu,
    eligible_convs,
    winograd_sparsity,
)
from .masks import (
    prune_spatial_magnitude,
    prune_spatial_structured,
    prune_winograd,
    spatial_group_importance,
    spatial_structured_mask,
    winograd_mask_from_spatial,
    winograd_score,
)
from .pruners import (
    SpatialPruner,
    WinogradPruner,
    attach_spatial_mask,
    export_masks,
    finalize,
    load_pruned_state_dict,
    model_winograd_sparsity,
)
from .reparam import SpatialKernel, spatial_kernels
from .schedule import LIU_DENSITIES, check_schedule, cubic_schedule, linear_schedule, liu_schedule, run_schedule
from .sensitivity import format_table, sensitivity_scan

__all__ = [
    "SpatialKernel",
    "spatial_kernels",
    "importance_factor",
    "li_importance",
    "winograd_sparsity",
    "winograd_weight",
    "position_support",
    "check_block",
    "WinogradConv2d",
    "WinogradReLUConv2d",
    "WinogradWeight",
    "conv_winograd_weight",
    "convert_to_winograd",
    "convert_to_winograd_relu",
    "eligible_convs",
    "spatial_group_importance",
    "spatial_structured_mask",
    "prune_spatial_structured",
    "prune_spatial_magnitude",
    "winograd_mask_from_spatial",
    "winograd_score",
    "prune_winograd",
    "SpatialPruner",
    "WinogradPruner",
    "attach_spatial_mask",
    "model_winograd_sparsity",
    "export_masks",
    "finalize",
    "load_pruned_state_dict",
    "cubic_schedule",
    "linear_schedule",
    "liu_schedule",
    "LIU_DENSITIES",
    "check_schedule",
    "run_schedule",
    "sensitivity_scan",
    "format_table",
]
