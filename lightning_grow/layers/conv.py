"""``nn.Conv2d`` and ``nn.Conv1d``: weight layers on feature maps (kernel offsets and positions).

A Conv1d is a Conv2d of height 1 for the statistics (:mod:`lightning_grow.layers._unfold`): its
handler lifts maps and kernels to 2-D, and everything else is the Conv2d code.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_grow.layers._unfold import conv_kernel, conv_padding
from lightning_grow.layers.registry import LayerHandler, register_layer

__all__ = ["Conv1dHandler", "Conv2dHandler"]


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
        assert isinstance(module, self.module_types)
        problems = []
        if module.groups != 1:
            problems.append(f"groups={module.groups} (grouped or depthwise)")
        if any(d != 1 for d in module.dilation):
            problems.append(f"dilation={tuple(module.dilation)}")
        if module.padding_mode != "zeros":
            problems.append(f"padding_mode={module.padding_mode!r}")
        try:
            conv_padding(module)
        except ValueError as error:
            problems.append(str(error))
        if problems:
            return (
                f"{self.label} with {', '.join(problems)} is not supported (growable "
                "convolutions have groups=1, dilation=1, padding_mode='zeros' and any "
                "stride/padding)"
            )
        return None

    def input_size(self, module: nn.Module) -> int:
        assert isinstance(module, self.module_types)
        kh, kw = conv_kernel(module)
        return module.in_channels * kh * kw

    def input_kernel(self, module: nn.Module) -> tuple[int, ...] | None:
        assert isinstance(module, self.module_types)
        kh, kw = conv_kernel(module)
        return (module.in_channels, kh, kw)

    def kernel_size(self, module: nn.Module) -> tuple[int, ...] | None:
        assert isinstance(module, self.module_types)
        return conv_kernel(module)

    def accepts_norm(self, norm: nn.Module) -> bool:
        return not isinstance(norm, nn.BatchNorm1d)

    def forward(self, module: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        assert isinstance(module, nn.Conv2d)
        return F.conv2d(x, weight, bias, module.stride, module.padding, module.dilation)

    def growth_problem(self, module: nn.Module) -> str | None:
        assert isinstance(module, self.module_types)
        if module.groups != 1:
            return f"has groups={module.groups}; only groups=1 convolutions grow"
        return None

    def resize_problem(self, module: nn.Module, incoming_weight: tuple[int, ...]) -> str | None:
        assert isinstance(module, self.module_types)
        current = tuple(module.weight.shape)
        if incoming_weight[2:] != current[2:]:
            return f"incoming weight {incoming_weight} changes the kernel size {current[2:]}"
        if _depthwise(module):
            # A depthwise conv grown with its pair keeps one filter per channel.
            if incoming_weight[1] != 1:
                return f"incoming weight {incoming_weight} is not a depthwise filter bank"
        elif module.groups != 1:
            return "only groups=1 and depthwise convolutions are resized"
        return None

    def resized_widths(self, module: nn.Module, weight: tuple[int, ...]) -> dict[str, int]:
        assert isinstance(module, self.module_types)
        if _depthwise(module):
            return {"in_channels": weight[0], "out_channels": weight[0], "groups": weight[0]}
        return super().resized_widths(module, weight)


def _depthwise(module: nn.Conv1d | nn.Conv2d) -> bool:
    return module.groups > 1 and module.groups == module.in_channels == module.out_channels


class Conv1dHandler(Conv2dHandler):
    """``nn.Conv1d`` (sequences, audio, time series) with the Conv2d rules: a Conv2d of height 1
    for the statistics; its own ``(C_out, C_in, k)`` weights for surgery and checkpoints."""

    module_types = (nn.Conv1d,)
    label = "Conv1d"
    unbatched_dims = 2

    def to_map(self, t: Tensor) -> Tensor:
        return t.unsqueeze(-2)  # (B, C, L) -> (B, C, 1, L)

    def accepts_norm(self, norm: nn.Module) -> bool:
        return not isinstance(norm, nn.BatchNorm2d)

    def forward(self, module: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        assert isinstance(module, nn.Conv1d)
        weight = weight.reshape(weight.shape[0], weight.shape[1], -1)  # (·, ·, 1, k) from 2-D
        return F.conv1d(x, weight, bias, module.stride, module.padding, module.dilation)


register_layer(Conv2dHandler())
register_layer(Conv1dHandler())
