"""Conv→conv moment sums from a random subset of output positions (the compute budget's estimator).

The exact sums of :mod:`lightning_grow.statistics._moment_sums` cost ``d_x·J·(d_v + d_h)`` per
output position and ``d_x²`` per hidden position: for a ResNet's 512-channel layer that is ~45
MFLOP a
position, hundreds of times the training step of a narrow network. Here each image contributes
``k`` output positions ``q`` drawn uniformly without replacement from its ``L`` positions (and,
for ``Sx``, ``k`` hidden positions ``p`` drawn from its ``Hh·Wh``), each weighted by ``L / k``
(``Hh·Wh / k``), which makes every sum an unbiased estimate of the exact one.

Positions are drawn independently for every image, so each image's contribution stays an
independent sample: the significance test's Rademacher reference (signs by image) then includes
the variance of the position draw, and the correlation of positions of one image is accounted for
by counting images, not positions, as samples.

The patches are gathered directly from ``first``'s padded input with precomputed index maps, so
the cost is proportional to the sampled positions, never to the full unfold.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_grow.layers._unfold import conv_kernel, conv_padding, conv_stride


@dataclass(frozen=True)
class ConvIndex:
    """Index maps from (output position, slot, kernel offset) to cells of the padded input.

    ``x_cells[q, j, t]``: the flat cell of ``first``'s input read by kernel offset ``t`` of the
    hidden position that output position ``q`` reads through slot ``j`` (``H·W``, the appended
    zero cell, for padding). ``p_cells[p, t]``: the same for hidden position ``p``.
    ``h_cells[q, j]``: hidden position read by ``(q, j)`` (``Hh·Wh``: the zero cell).
    ``valid[q, j]``: whether that hidden position is inside the map. ``reach[p]``: ``c_p``.
    """

    x_cells: Tensor
    p_cells: Tensor
    h_cells: Tensor
    valid: Tensor
    reach: Tensor
    input_size: tuple[int, int]
    hidden_size: tuple[int, int]

    @property
    def output_positions(self) -> int:
        return self.h_cells.shape[0]

    @property
    def hidden_positions(self) -> int:
        return self.p_cells.shape[0]


def _grid(
    size_out: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int], padding
) -> tuple[Tensor, Tensor]:
    """Row and column read by every (output position, kernel offset): two ``(P, K)`` tensors."""
    rows = torch.arange(size_out[0])[:, None, None, None] * stride[0] - padding[0]
    cols = torch.arange(size_out[1])[None, :, None, None] * stride[1] - padding[1]
    rows = rows + torch.arange(kernel[0])[None, None, :, None]
    cols = cols + torch.arange(kernel[1])[None, None, None, :]
    rows, cols = torch.broadcast_tensors(rows, cols)
    positions = size_out[0] * size_out[1]
    return rows.reshape(positions, -1), cols.reshape(positions, -1)


def conv_index(
    first: nn.Conv1d | nn.Conv2d,
    second: nn.Conv1d | nn.Conv2d,
    input_size: tuple[int, int],
    hidden_size: tuple[int, int],
    output_size: tuple[int, int],
    device: torch.device | str = "cpu",
) -> ConvIndex:
    """The index maps of a conv→conv pair for the given spatial sizes (built once per shape)."""
    height, width = input_size
    hidden_h, hidden_w = hidden_size
    rows, cols = _grid(hidden_size, conv_kernel(first), conv_stride(first), conv_padding(first))
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    p_cells = torch.where(inside, rows * width + cols, height * width)
    # One extra hidden "position" whose patch is all zero cells: slots that read padding.
    p_padded = torch.cat([p_cells, p_cells.new_full((1, p_cells.shape[1]), height * width)])

    rows, cols = _grid(output_size, conv_kernel(second), conv_stride(second), conv_padding(second))
    valid = (rows >= 0) & (rows < hidden_h) & (cols >= 0) & (cols < hidden_w)
    h_cells = torch.where(valid, rows * hidden_w + cols, hidden_h * hidden_w)
    reach = torch.bincount(h_cells[valid], minlength=hidden_h * hidden_w)
    return ConvIndex(
        x_cells=p_padded[h_cells].to(device),
        p_cells=p_cells.to(device),
        h_cells=h_cells.to(device),
        valid=valid.to(device),
        reach=reach.to(device),
        input_size=input_size,
        hidden_size=hidden_size,
    )


def draw_positions(images: int, total: int, count: int, generator: torch.Generator) -> Tensor:
    """``(images, count)`` distinct positions per image, uniform without replacement."""
    return torch.rand(images, total, generator=generator).topk(count, dim=1).indices


def _gather(flat: Tensor, cells: Tensor) -> Tensor:
    """``flat[i, c, cells[i, ...]]`` for every image ``i`` and channel ``c``."""
    images, channels = flat.shape[:2]
    index = cells.reshape(images, 1, -1).expand(images, channels, -1)
    return flat.gather(2, index).view(images, channels, *cells.shape[1:])


def _padded_flat(maps: Tensor) -> Tensor:
    """``(B, C, H·W + 1)``: the maps flattened, with a zero cell appended for padding reads."""
    flat = maps.flatten(2)
    return torch.cat([flat, flat.new_zeros(*flat.shape[:2], 1)], dim=2)


def sampled_conv_sums(
    index: ConvIndex,
    parts: dict[str, Tensor],
    x: Tensor,
    h: Tensor,
    v: Tensor,
    *,
    positions: int,
    first_bias: bool,
    second_bias: bool,
    generator: torch.Generator,
) -> None:
    """Add the unbiased position-sampled sums of a batch to ``parts`` (see module docstring).

    ``x``, ``h``, ``v`` are ``(B, C, H, W)`` maps (``first``'s input, ``second``'s input and
    the per-sample ``v``); ``parts`` are the views of ``SumLayout.split``.
    """
    images = x.shape[0]
    out_positions, hidden_positions = index.output_positions, index.hidden_positions
    k_out, k_hidden = min(positions, out_positions), min(positions, hidden_positions)
    device = x.device
    q = draw_positions(images, out_positions, k_out, generator).to(device)
    p = draw_positions(images, hidden_positions, k_hidden, generator).to(device)
    x_flat = _padded_flat(x)
    slots = index.h_cells.shape[1]

    # x̃_(q, j): (images, C_in, k, J, T) → rows (image, q), columns ((c, t), j), a major.
    x_tilde = _gather(x_flat, index.x_cells[q])
    x_rows = x_tilde.permute(0, 2, 1, 4, 3).reshape(images * k_out, -1)
    valid = index.valid.to(device=device, dtype=x.dtype)[q].reshape(images * k_out, slots)
    if first_bias:
        x_rows = torch.cat([x_rows, valid], dim=1)
    h_tilde = _gather(_padded_flat(h), index.h_cells[q])  # (images, C_h, k, J)
    h_rows = h_tilde.permute(0, 2, 1, 3).reshape(images * k_out, -1)
    v_rows = v.flatten(2).gather(2, q[:, None, :].expand(-1, v.shape[1], -1))
    v_rows = v_rows.transpose(1, 2).reshape(images * k_out, -1)
    columns = [v_rows, h_rows] + ([h_rows.new_ones(images * k_out, 1)] if second_bias else [])
    r_rows = torch.cat(columns, dim=1)
    d_v = v_rows.shape[1]

    weight = out_positions / k_out
    # XR rows are ((a, j)) with a major: x_rows holds (a, j) already, the bias a last.
    per_image = x_rows.view(images, k_out, -1)
    r_image = r_rows.view(images, k_out, -1)
    for parity, name in ((0, "XR_even"), (1, "XR_odd")):
        x_part = per_image[parity::2].reshape(-1, per_image.shape[-1])
        if x_part.shape[0]:
            r_part = r_image[parity::2].reshape(-1, r_rows.shape[1])
            parts[name].addmm_(x_part.T, r_part, alpha=weight)
    parts["RH"].addmm_(r_rows.T, r_rows[:, d_v:], alpha=weight)

    # Sx = Σ_p c_p x_p x_pᵀ from k sampled hidden positions per image.
    x_p = _gather(x_flat, index.p_cells[p])  # (images, C_in, k, T)
    x_p = x_p.permute(0, 2, 1, 3).reshape(images * k_hidden, -1)
    if first_bias:
        x_p = torch.cat([x_p, x_p.new_ones(x_p.shape[0], 1)], dim=1)
    reach = index.reach.to(device=device, dtype=x.dtype)[p].reshape(-1, 1)
    weighted = x_p * (reach * (hidden_positions / k_hidden)).sqrt()
    parts["Sx"].addmm_(weighted.T, weighted)
    parts["v_sq"].add_(v.square().sum())
