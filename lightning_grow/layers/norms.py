"""The norms a hidden tensor may go through: BatchNorm1d/2d and SyncBatchNorm."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from lightning_grow.layers.registry import NormHandler, register_norm

__all__ = ["BATCH_NORM_TYPES", "BatchNormHandler"]

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
