"""``nn.Conv2d``: a weight layer on feature maps (kernel offsets and output positions)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_grow.layers._unfold import conv_padding
from lightning_grow.layers.registry import LayerHandler, register_layer

__all__ = ["Conv2dHandler"]


class Conv2dHandler(LayerHandler):
    """``nn.Conv2d`` with ``groups=1``, ``dilation=1``, zero padding and any stride/padding.

    The statistics unfold its input into patches (:mod:`lightning_grow.layers._unfold`), so the
    padding must be expressible by ``F.unfold`` (no even kernel with ``padding="same"``).
    """

    module_types = (nn.Conv2d,)
    label = "Conv2d"
    spatial = True
    out_attribute = "out_channels"
    in_attribute = "in_channels"
    unbatched_dims = 3
    channel_dim = 1

    def problem(self, module: nn.Module) -> str | None:
        assert isinstance(module, nn.Conv2d)
        problems = []
        if module.groups != 1:
            problems.append(f"groups={module.groups} (grouped or depthwise)")
        if tuple(module.dilation) != (1, 1):
            problems.append(f"dilation={tuple(module.dilation)}")
        if module.padding_mode != "zeros":
            problems.append(f"padding_mode={module.padding_mode!r}")
        try:
            conv_padding(module)
        except ValueError as error:
            problems.append(str(error))
        if problems:
            return (
                f"Conv2d with {', '.join(problems)} is not supported (growable convolutions have "
                "groups=1, dilation=1, padding_mode='zeros' and any stride/padding)"
            )
        return None

    def input_size(self, module: nn.Module) -> int:
        assert isinstance(module, nn.Conv2d)
        kh, kw = module.kernel_size
        return module.in_channels * kh * kw

    def input_kernel(self, module: nn.Module) -> tuple[int, ...] | None:
        assert isinstance(module, nn.Conv2d)
        kh, kw = module.kernel_size
        return (module.in_channels, kh, kw)

    def kernel_size(self, module: nn.Module) -> tuple[int, ...] | None:
        assert isinstance(module, nn.Conv2d)
        return tuple(module.kernel_size)

    def accepts_norm(self, norm: nn.Module) -> bool:
        return not isinstance(norm, nn.BatchNorm1d)

    def forward(self, module: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        assert isinstance(module, nn.Conv2d)
        return F.conv2d(x, weight, bias, module.stride, module.padding, module.dilation)

    def growth_problem(self, module: nn.Module) -> str | None:
        assert isinstance(module, nn.Conv2d)
        if module.groups != 1:
            return f"has groups={module.groups}; only groups=1 convolutions grow"
        return None

    def resize_problem(self, module: nn.Module, incoming_weight: tuple[int, ...]) -> str | None:
        assert isinstance(module, nn.Conv2d)
        current = tuple(module.weight.shape)
        if incoming_weight[2:] != current[2:]:
            return f"incoming weight {incoming_weight} changes the kernel size {current[2:]}"
        if module.groups != 1:
            return "only groups=1 convolutions are resized"
        return None


register_layer(Conv2dHandler())
