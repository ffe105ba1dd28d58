"""The norms a hidden tensor may go through: BatchNorm1d/2d and SyncBatchNorm."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from lightning_grow.layers.registry import NormHandler, register_norm

__all__ = ["BATCH_NORM_TYPES", "BatchNormHandler", "cross_unit_reason"]

#: The BatchNorm types, written once (discovery, surgery and checkpoints use them).
BATCH_NORM_TYPES: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)


class BatchNormHandler(NormHandler):
    """BatchNorm: per-unit weight, bias, running mean and variance; a new unit starts as a
    freshly constructed one (1, 0, 0, 1)."""

    module_types = BATCH_NORM_TYPES
    label = "BatchNorm"
    width_attribute = "num_features"
    fresh_values: ClassVar[Mapping[str, float]] = {
        "weight": 1.0,
        "bias": 0.0,
        "running_mean": 0.0,
        "running_var": 1.0,
    }

    def replay(
        self,
        module: nn.Module,
        z: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
    ) -> Tensor:
        assert isinstance(module, nn.modules.batchnorm._BatchNorm)
        shape = (1, -1) + (1,) * (z.dim() - 2)
        if running_mean is not None and running_var is not None:
            z = (z - running_mean.view(shape)) / torch.sqrt(running_var.view(shape) + module.eps)
        else:
            z = z / math.sqrt(1.0 + module.eps)
        if module.affine and weight is not None:
            z = z * weight.view(shape)
        if module.affine and bias is not None:
            z = z + bias.view(shape)
        return z


register_norm(BatchNormHandler())


_ACROSS_UNITS = (
    "normalises every sample over the hidden units, so a new unit enters the {what} that "
    "normalise every existing unit: the existing outputs stay unchanged only if the new units "
    "are at least as many as the old ones and copy them up to a rotation (docs/math.md §1), "
    "never TINY's few chosen units. Put the norm before `first` (pre-norm, as pre-LN "
    "transformers do) to grow this pair"
)


def cross_unit_reason(module: nn.Module) -> str | None:
    """Why a norm that mixes the hidden units cannot sit between a pair's layers (``None``:
    it does not mix them, or it is not such a norm)."""
    if isinstance(module, nn.LayerNorm):
        return _ACROSS_UNITS.format(what="mean and variance")
    if isinstance(module, nn.RMSNorm):
        return _ACROSS_UNITS.format(what="root mean square")
    if isinstance(module, nn.GroupNorm):
        if module.num_groups == module.num_channels:
            return (
                "has one channel per group: new channels would be new groups and leave the "
                "others unchanged, but growing it is not implemented yet"
            )
        return _ACROSS_UNITS.format(what="group means and variances")
    return None
