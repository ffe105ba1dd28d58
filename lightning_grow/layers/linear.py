"""``nn.Linear``: a weight layer on vectors (extra leading dimensions are positions)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_grow.layers.registry import LayerHandler, register_layer

__all__ = ["LinearHandler"]


class LinearHandler(LayerHandler):
    """``nn.Linear``: ``out_features × in_features`` weights, BatchNorm1d after it."""

    module_types = (nn.Linear,)
    label = "Linear"
    spatial = False
    out_attribute = "out_features"
    in_attribute = "in_features"
    unbatched_dims = 1
    channel_dim = -1  # (B, ..., D): tokens are positions, as a convolution's are

    def accepts_norm(self, norm: nn.Module) -> bool:
        return not isinstance(norm, nn.BatchNorm2d)

    def forward(self, module: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)


register_layer(LinearHandler())
