"""Widen the per-channel ops that a pair's new channels pass through besides its own BatchNorm.

A depthwise convolution between ``first`` and ``second`` (MobileNetV2's expand → depthwise →
project) gets one identity filter per new channel (a delta at the kernel's centre, bias 0) and
its ``in_channels``, ``out_channels`` and ``groups`` grow together; a BatchNorm after it gets
entries that make it the identity for the new channels (from their measured mean and variance,
else fresh ones: 1, 0, 0, 1). For a new channel the depthwise conv and that BatchNorm are then
the identity (docs/math.md §1). Like the rest of
surgery these are plans (:class:`~lightning_grow.surgery.widen.ModuleEdit`), applied later.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_grow.layers import OpKind
from lightning_grow.layers.depthwise import carried_conv_problem, delta_filters
from lightning_grow.surgery.widen import (
    ModuleEdit,
    NewNeurons,
    _describe,
    _grown_parameter,
    plan_batch_norm_growth,
)
from lightning_grow.topology.pairs import GrowablePair

__all__ = ["identity_entries", "plan_carried_growth", "plan_depthwise_growth"]


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


def identity_entries(module: nn.Module, mean: Tensor, var: Tensor) -> dict[str, Tensor] | None:
    """BatchNorm entries that pass new channels of input mean ``mean`` and variance ``var``
    unchanged: running statistics ``(mean, var)``, ``weight = sqrt(var + eps)``, ``bias = mean``.

    In eval mode the norm is then exactly the identity for them, and in train mode, where it
    standardises with the batch's statistics, it is the identity up to how far those are from
    the measured ones (a fresh entry would standardise them instead). ``None`` when the norm has
    no affine entries to undo the standardisation with (it then keeps fresh entries).
    """
    if getattr(module, "weight", None) is None or getattr(module, "bias", None) is None:
        return None
    entries = {"weight": (var + module.eps).sqrt(), "bias": mean}
    if getattr(module, "running_mean", None) is not None:
        entries.update(running_mean=mean, running_var=var)
    return entries


def plan_carried_growth(pair: GrowablePair, neurons: NewNeurons) -> list[ModuleEdit]:
    """The edits for every depthwise conv of ``pair``, and every BatchNorm but the pair's own
    (fresh entries, or :func:`identity_entries` of ``neurons.carried_norms``)."""
    num_new = neurons.num_neurons
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
            measured = neurons.carried_norms.get(hidden.name)
            entries = None if measured is None else identity_entries(module, *measured)
            edits.append(
                plan_batch_norm_growth(module, num_new, **(entries or {}), name=hidden.name)
            )
    return edits
