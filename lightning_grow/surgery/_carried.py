"""Widen the per-channel ops that a pair's new channels pass through besides its own BatchNorm.

A depthwise convolution between ``first`` and ``second`` (MobileNetV2's expand → depthwise →
project) gets one identity filter per new channel (a delta at the kernel's centre, bias 0) and
its ``in_channels``, ``out_channels`` and ``groups`` grow together; a BatchNorm after it gets
fresh entries (1, 0, 0, 1). For a new channel the depthwise conv, and that BatchNorm in eval
mode up to its ``1/sqrt(1 + eps)``, are then the identity (docs/math.md §1). Like the rest of
surgery these are plans (:class:`~lightning_grow.surgery.widen.ModuleEdit`), applied later.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_grow.layers import OpKind
from lightning_grow.layers.depthwise import carried_conv_problem, delta_filters
from lightning_grow.surgery.widen import (
    ModuleEdit,
    _describe,
    _grown_parameter,
    plan_batch_norm_growth,
)
from lightning_grow.topology.pairs import GrowablePair

__all__ = ["plan_carried_growth", "plan_depthwise_growth"]


def plan_depthwise_growth(module: nn.Module, num_new: int, name: str = "") -> ModuleEdit:
    """Plan ``num_new`` new channels of a depthwise conv, each with an identity filter.

    Returns
    -------
    ModuleEdit
        Not applied yet; call :meth:`~lightning_grow.surgery.widen.ModuleEdit.apply`.

    Raises
    ------
    ValueError
        When the conv cannot carry growth (grouped, strided, off-centre padding).
    """
    assert isinstance(module, (nn.Conv1d, nn.Conv2d))
    problem = carried_conv_problem(module, module.in_channels)
    if problem is not None:
        raise ValueError(f"{_describe(module, name)} {problem}")
    edit = ModuleEdit(module, name)
    _grown_parameter(edit, "weight", delta_filters(module, num_new, module.weight), dim=0)
    if module.bias is not None:
        _grown_parameter(edit, "bias", torch.zeros(num_new), dim=0)
    width = module.in_channels + num_new
    edit.attributes.update(in_channels=width, out_channels=width, groups=width)
    return edit


def plan_carried_growth(pair: GrowablePair, num_new: int) -> list[ModuleEdit]:
    """The edits for every depthwise conv of ``pair``, and every BatchNorm but the pair's own."""
    edits = []
    for hidden in pair.between:
        module = hidden.op
        if hidden.kind is OpKind.DEPTHWISE:
            assert isinstance(module, nn.Module)
            if module.in_channels != pair.width:
                raise ValueError(
                    f"{_describe(module, hidden.name)} has {module.in_channels} channels but "
                    f"the pair {pair.name} has {pair.width}"
                )
            edits.append(plan_depthwise_growth(module, num_new, hidden.name))
        elif hidden.kind is OpKind.BATCH_NORM and module is not pair.batch_norm:
            assert isinstance(module, nn.Module)
            if module.num_features != pair.width:
                raise ValueError(
                    f"{_describe(module, hidden.name)} has {module.num_features} features but "
                    f"the pair {pair.name} has {pair.width}"
                )
            edits.append(plan_batch_norm_growth(module, num_new, name=hidden.name))
    return edits
