"""Convolution geometry for the statistics: patches of ``first``'s input seen through ``second``.

Notation of docs/math.md §5: ``first`` maps the input to the hidden map (``Hh × Wh`` positions
``p``), ``second`` maps the hidden map to the output (``L`` positions ``q``) through kernel offsets
``j`` (``J = kh2·kw2``). The new neuron's value at hidden position ``p`` is a linear function of the
``first``-input patch ``x_p``; at output position ``q`` it enters through every offset ``j`` whose
hidden position ``p(q, j) = q·stride - padding + j`` lies inside the map (zero padding elsewhere).
A Conv1d is handled as a Conv2d of height 1 (its maps ``(B, C, L)`` as ``(B, C, 1, L)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_padding(conv: nn.Conv1d | nn.Conv2d) -> tuple[int, int]:
    """Numeric ``(pad_h, pad_w)`` of a convolution seen as 2-D, resolving ``"valid"`` and
    ``"same"`` (a Conv1d is a Conv2d of height 1: ``(0, pad)``).

    Raises
    ------
    ValueError
        For ``padding="same"`` with an even kernel size (PyTorch pads asymmetrically then, which
        ``F.unfold`` cannot express).
    """
    kernel = conv_kernel(conv)
    padding = conv.padding
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        if kernel[0] % 2 == 0 or kernel[1] % 2 == 0:
            raise ValueError(
                f"padding='same' with the even kernel {conv.kernel_size} pads asymmetrically"
            )
        return ((kernel[0] - 1) // 2, (kernel[1] - 1) // 2)
    if isinstance(conv, nn.Conv1d):
        return (0, int(padding[0]))  # type: ignore[index]
    return (int(padding[0]), int(padding[1]))  # type: ignore[index]


def conv_kernel(conv: nn.Conv1d | nn.Conv2d) -> tuple[int, int]:
    """``(kh, kw)`` of a convolution seen as 2-D (a Conv1d's kernel ``k`` is ``(1, k)``)."""
    if isinstance(conv, nn.Conv1d):
        return (1, int(conv.kernel_size[0]))
    return (int(conv.kernel_size[0]), int(conv.kernel_size[1]))


def conv_stride(conv: nn.Conv1d | nn.Conv2d) -> tuple[int, int]:
    """``(sh, sw)`` of a convolution seen as 2-D."""
    if isinstance(conv, nn.Conv1d):
        return (1, int(conv.stride[0]))
    return (int(conv.stride[0]), int(conv.stride[1]))


def input_patches(conv: nn.Conv1d | nn.Conv2d, inputs: Tensor, with_bias: bool) -> Tensor:
    """``(B, C_in·kh·kw (+1), P)``: the input patch of every output position of ``conv``.

    The trailing constant-1 row (when ``with_bias``) makes the bias an ordinary weight.
    """
    patches = F.unfold(
        inputs, conv_kernel(conv), padding=conv_padding(conv), stride=conv_stride(conv)
    )
    if with_bias:
        ones = patches.new_ones(patches.shape[0], 1, patches.shape[2])
        patches = torch.cat([patches, ones], dim=1)
    return patches


def through_second(conv: nn.Conv1d | nn.Conv2d, maps: Tensor) -> Tensor:
    """``(B, C·J, L)``: ``maps[b, c, p(q, j)]`` for every output position ``q`` of ``conv``.

    ``maps`` is ``(B, C, Hh, Wh)`` on the hidden grid; positions ``p(q, j)`` that fall in the
    padding read 0. Rows are ``(c, j)`` with ``c`` major (``F.unfold`` order).
    """
    return F.unfold(maps, conv_kernel(conv), padding=conv_padding(conv), stride=conv_stride(conv))


def reach_counts(conv: nn.Conv1d | nn.Conv2d, hidden_size: tuple[int, int], like: Tensor) -> Tensor:
    """``(Hh·Wh,)``: ``c_p``, the number of (output position, offset) pairs reading position p."""
    kh, kw = conv_kernel(conv)
    height, width = hidden_size
    ones = like.new_ones(1, 1, height, width)
    # Unfolding then folding ones counts, per hidden position, the (q, j) that read it.
    counts = F.fold(
        through_second(conv, ones),
        output_size=(height, width),
        kernel_size=(kh, kw),
        padding=conv_padding(conv),
        stride=conv_stride(conv),
    )
    return counts.reshape(-1)
