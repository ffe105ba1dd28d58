"""One batch's contribution to the moment sums of a pair, as a few large matrix products.

Every sum is kept in a layout that one GEMM fills (``moments()`` reorders at the end):

* ``RH = [v | h]ᵀ h`` of shape ``(d_v + d_h, d_h)``: ``M`` (top rows) and ``S`` (the rest).
* ``Sx``: ``Σ x xᵀ`` (weighted by ``c_p`` for conv→conv, docs/math.md §5).
* ``XR_even``, ``XR_odd`` of shape ``(d_x·J, d_v + d_h)``: ``Σ x_(j) [v | h]ᵀ`` over the samples
  at even / odd positions of each batch, rows ``(a, j)`` with ``a`` (the x coordinate) major.
  Their sum gives ``Mx`` and ``P``; their difference gives the sign-flipped ``Mx_noise`` and
  ``P_noise`` (``ε_i = +1`` even, ``-1`` odd) at no extra cost.
* ``v_sq``; then two counters (samples, skipped batches) filled by the caller.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_grow.layers._unfold import input_patches, reach_counts, through_second
from lightning_grow.solver.moments import PairGeometry
from lightning_grow.topology.pairs import GrowablePair


class SumLayout:
    """Where each sum lives in the flat buffer of a pair with geometry ``geometry``."""

    def __init__(self, geometry: PairGeometry) -> None:
        self.geometry = geometry
        self.d_x, self.d_h, self.d_v = geometry.d_x, geometry.d_h, geometry.d_v
        self.slots = geometry.num_slots
        columns = self.d_v + self.d_h
        self.shapes: dict[str, tuple[int, ...]] = {
            "RH": (columns, self.d_h),
            "Sx": (self.d_x, self.d_x),
            "XR_even": (self.d_x * self.slots, columns),
            "XR_odd": (self.d_x * self.slots, columns),
            "v_sq": (1,),
            "counts": (2,),
        }
        #: the moments each buffer holds, for messages
        self.holds = {
            "RH": "M and S",
            "Sx": "Sx",
            "XR_even": "Mx and P",
            "XR_odd": "Mx_noise and P_noise",
            "v_sq": "v_sq",
            "counts": "the counts",
        }
        self.sizes = [math.prod(shape) for shape in self.shapes.values()]
        self.total = sum(self.sizes)

    @classmethod
    def of(cls, geometry: PairGeometry) -> SumLayout:
        """The layout of ``geometry``."""
        return cls(geometry)

    def split(self, flat: Tensor) -> dict[str, Tensor]:
        """Views of ``flat`` shaped as :attr:`shapes`."""
        parts = torch.split(flat, self.sizes)
        return {
            name: part.view(shape)
            for (name, shape), part in zip(self.shapes.items(), parts, strict=True)
        }


def batch_sums(
    pair: GrowablePair,
    layout: SumLayout,
    x: Tensor,
    h: Tensor,
    v: Tensor,
    chunk_elements: int,
    out: Tensor,
    overwrite: bool,
) -> None:
    """Add (or, with ``overwrite``, write) the flat sums of one batch into ``out``.

    Parameters
    ----------
    pair, layout
        The pair and its sum layout.
    x, h, v
        ``first``'s input, ``second``'s input and ``v = -∂ℓ_i/∂z2`` (per-sample scale applied),
        all in the accumulation dtype.
    chunk_elements
        Rough bound on the temporary elements of one chunk (convolutions only).
    out
        A flat buffer of ``layout.total`` elements. The two trailing counters are left alone,
        or set to 0 with ``overwrite``.
    overwrite
        Replace ``out``'s sums by this batch's instead of adding to them.
    """
    parts = layout.split(out)
    if layout.geometry.kind == "linear":
        _linear_sums(layout, parts, x, h, v, overwrite)
    else:
        if overwrite:
            out.zero_()
        _conv_sums(pair, layout, parts, x, h, v, chunk_elements)
    if overwrite:
        out[-2:] = 0.0


def _product(target: Tensor, left: Tensor, right: Tensor, overwrite: bool) -> None:
    if overwrite:
        torch.mm(left, right, out=target)
    else:
        target.addmm_(left, right)


def _with_ones(t: Tensor, bias: bool) -> Tensor:
    return torch.cat([t, t.new_ones((*t.shape[:-1], 1))], dim=-1) if bias else t


def _linear_sums(
    layout: SumLayout, parts: dict[str, Tensor], x: Tensor, h: Tensor, v: Tensor, overwrite: bool
) -> None:
    """Linear → Linear; extra dimensions between batch and features (sequences) are summed."""
    if x.dim() == 1:
        x, h, v = x[None], h[None], v[None]
    geometry = layout.geometry
    x = _with_ones(x, geometry.first_bias)
    r = _with_ones(torch.cat([v, h], dim=-1), geometry.second_bias)  # [v | h]
    x_rows, r_rows = x.reshape(-1, layout.d_x), r.reshape(-1, r.shape[-1])
    _product(parts["RH"], r_rows.T, r_rows[:, layout.d_v :], overwrite)
    _product(parts["Sx"], x_rows.T, x_rows, overwrite)
    for parity, name in ((0, "XR_even"), (1, "XR_odd")):
        x_part = x[parity::2].reshape(-1, layout.d_x)
        r_part = r[parity::2].reshape(-1, r.shape[-1])
        if x_part.shape[0]:
            _product(parts[name], x_part.T, r_part, overwrite)
        elif overwrite:  # a batch of one sample has no odd position
            parts[name].zero_()
    v_sq = v.square().sum()
    parts["v_sq"].copy_(v_sq) if overwrite else parts["v_sq"].add_(v_sq)


def _conv_sums(
    pair: GrowablePair,
    layout: SumLayout,
    parts: dict[str, Tensor],
    x: Tensor,
    h: Tensor,
    v: Tensor,
    chunk_elements: int,
) -> None:
    """Conv2d → Conv2d and Conv2d → flatten → Linear, chunked over the batch."""
    if x.dim() == 3:  # an unbatched Conv2d call
        x, h, v = x[None], h[None], v[None]
    geometry = layout.geometry
    d_x, d_v, slots = layout.d_x, layout.d_v, layout.slots
    columns = d_v + layout.d_h
    to_conv = geometry.kind == "conv"
    if to_conv:
        hidden_size = (h.shape[-2], h.shape[-1])
        hidden_positions = hidden_size[0] * hidden_size[1]
        out_positions = v.shape[-2] * v.shape[-1]
        # Sx = Σ_p c_p x_p x_pᵀ = (x √c)(x √c)ᵀ: the authors' approximation that drops the
        # cross-offset terms Σ_q x_(q,j) x_(q,j')ᵀ, j ≠ j' (docs/math.md §5).
        root_counts = reach_counts(pair.second, hidden_size, v).sqrt()  # type: ignore[arg-type]
        per_sample = 3 * d_x * hidden_positions + out_positions * (2 * d_x * slots + columns)
    else:
        hidden_positions, out_positions = slots, 1
        per_sample = 4 * d_x * hidden_positions + columns
    chunk = max(1, chunk_elements // per_sample)
    batch = x.shape[0]
    for parity, name in ((0, "XR_even"), (1, "XR_odd")):
        for start in range(parity, batch, 2 * chunk):
            rows = slice(start, min(batch, start + 2 * chunk), 2)
            x_part, h_part, v_part = x[rows], h[rows], v[rows]
            size = x_part.shape[0]
            patches = input_patches(pair.first, x_part, geometry.first_bias)  # type: ignore[arg-type]
            if patches.shape[-1] != hidden_positions:
                raise RuntimeError(
                    f"pair {pair.name}: {pair.first_name} produces {patches.shape[-1]} positions "
                    f"but {pair.second_name} reads {hidden_positions}"
                )
            r = v.new_empty(size, out_positions, columns)  # [v | h | 1] per output position
            if to_conv:
                r[..., :d_v] = v_part.flatten(2).transpose(1, 2)
                hidden_patches = through_second(pair.second, h_part)  # type: ignore[arg-type]
                r[..., d_v : d_v + hidden_patches.shape[1]] = hidden_patches.transpose(1, 2)
                x_maps = patches.view(size, d_x, *hidden_size)
                x_reach = through_second(pair.second, x_maps)  # type: ignore[arg-type]
                # (d_x·J, size·L): contract over samples and output positions in one GEMM.
                x_rows = x_reach.transpose(0, 1).reshape(d_x * slots, size * out_positions)
                weighted = patches * root_counts
            else:
                r[:, 0, :d_v] = v_part
                r[:, 0, d_v : d_v + h_part.shape[1]] = h_part
                x_rows = patches.permute(1, 2, 0).reshape(d_x * slots, size)
                weighted = patches
            if geometry.second_bias:
                r[..., -1] = 1.0
            r_rows = r.view(size * out_positions, columns)
            parts[name].addmm_(x_rows, r_rows)
            parts["RH"].addmm_(r_rows.T, r_rows[:, d_v:])
            x_flat = weighted.transpose(0, 1).reshape(d_x, -1)
            parts["Sx"].addmm_(x_flat, x_flat.T)
            parts["v_sq"].add_(v_part.square().sum())
