"""Depthwise convolutions on the hidden tensor (MobileNet's expand → depthwise → project).

A depthwise convolution (``groups == in_channels == out_channels``) filters each hidden channel
on its own, so, like a BatchNorm, it can grow with ``first``: a new channel gets its own filter.
The filter chosen for a new channel is the identity, a delta at the kernel's centre with a zero
bias. With stride 1 and a padding that keeps that centre on the output position
(``padding == dilation * (k - 1) / 2`` for an odd ``k``), the new channel's depthwise output is
its input, so what TINY solves for (the new units' first layer seen at ``second``'s positions)
is unchanged by the depthwise conv (docs/math.md §1, "Depthwise convolutions between a pair").
Everything else is refused here, with the reason and the fix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DEPTHWISE_TYPES",
    "carried_conv_problem",
    "delta_filters",
    "is_grouped_conv",
    "replay_depthwise",
]

#: The convolution types that may sit between a pair as a depthwise filter of the hidden map.
DEPTHWISE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d)


def is_grouped_conv(module: object) -> bool:
    """Whether ``module`` is a Conv1d/Conv2d with ``groups > 1`` (depthwise or grouped)."""
    return isinstance(module, DEPTHWISE_TYPES) and module.groups > 1


def carried_conv_problem(module: nn.Module, width: int) -> str | None:
    """Why the grouped convolution ``module`` cannot carry growth of ``width`` hidden channels
    (``None``: it can, with a delta filter for each new channel).

    Parameters
    ----------
    module
        A Conv1d/Conv2d with ``groups > 1`` between ``first`` and ``second``.
    width
        The hidden width (``first``'s output channels).
    """
    assert isinstance(module, DEPTHWISE_TYPES)
    if not module.groups == module.in_channels == module.out_channels:
        return (
            f"has groups={module.groups}, in_channels={module.in_channels}, out_channels="
            f"{module.out_channels}: only a depthwise convolution (groups = in = out channels) "
            "grows with the hidden channels; in a grouped convolution a new channel would have "
            "to join a group and be read by that group's other filters. Make it depthwise, or "
            "pair the layers around it separately"
        )
    if module.in_channels != width:
        return f"has {module.in_channels} channels but the hidden width is {width}"
    if any(s != 1 for s in module.stride):
        return (
            f"has stride={tuple(module.stride)}: a new channel's delta filter would subsample "
            "its map, so its first layer would act at other positions than the statistics "
            "measure; only stride-1 depthwise convolutions carry growth (with stride 2 the "
            "block's expand and project layers are not offered as a pair)"
        )
    kernel = tuple(module.kernel_size)
    if any(k % 2 == 0 for k in kernel):
        return f"has the even kernel {kernel}: an identity filter needs a centre tap"
    centred = tuple(d * (k - 1) // 2 for d, k in zip(module.dilation, kernel, strict=True))
    if module.padding != "same" and tuple(module.padding) != centred:
        return (
            f"has padding={tuple(module.padding)} with kernel {kernel} and dilation "
            f"{tuple(module.dilation)}: the identity filter needs padding={centred} so that the "
            "map keeps its size and the centre tap reads the output position"
        )
    return None


def delta_filters(module: nn.Module, count: int, like: Tensor) -> Tensor:
    """``count`` identity filters for ``module``: ``(count, 1, *kernel)``, 1 at the centre."""
    assert isinstance(module, DEPTHWISE_TYPES)
    kernel = tuple(module.kernel_size)
    filters = torch.zeros((count, 1, *kernel), dtype=like.dtype, device=like.device)
    filters[(slice(None), 0, *(k // 2 for k in kernel))] = 1.0
    return filters


def replay_depthwise(module: nn.Module, z: Tensor) -> Tensor:
    """New channels' maps ``z`` through ``module`` with their delta filters and zero biases.

    The convolution is run for real (not skipped as an identity), so that a padding or
    dilation that did not keep the map would show up in the amplitude search.
    """
    assert isinstance(module, DEPTHWISE_TYPES)
    count = z.shape[1]
    weight = delta_filters(module, count, z)
    if isinstance(module, nn.Conv1d):
        return F.conv1d(z, weight, None, module.stride, module.padding, module.dilation, count)
    return F.conv2d(z, weight, None, module.stride, module.padding, module.dilation, count)
