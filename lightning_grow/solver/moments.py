"""The contract between the statistics hooks and the math core: pair geometry and moments.

Notation (docs/math.md §2): ``x`` is the input of ``first``, ``h`` the input of ``second``, ``v``
the desired update ``-∂ℓ/∂z2`` of ``second``'s output. A constant 1 is appended LAST to ``x`` when
``first`` has a bias and to ``h`` when ``second`` has a bias.

Flat layouts
------------
* ``x`` for a Linear ``first``: ``in_features (+1)``. For a Conv2d ``first``: the unfolded input
  patch in ``F.unfold`` order ``(C_in, kh, kw)`` flattened, then the bias entry: ``d_x =
  C_in*kh*kw (+1)``.
* ``h`` for a Linear ``second``: its input vector (the flattened hidden map for conv→linear),
  then the bias entry. For a Conv2d ``second``: the unfolded hidden patch ``(C_h, kh2, kw2)``,
  then the bias entry.
* ``v``: one entry per output feature / output channel of ``second`` (per output position for
  convolutions; positions are summed, never averaged).
* Slots ``J``: how many copies of a new neuron's output weight vector ``second`` holds. ``J = 1``
  for linear→linear, ``J = kh2*kw2`` (kernel offsets, row-major) for conv→conv, ``J = H*W``
  (hidden positions, row-major) for conv→flatten→linear. ``Mx`` and ``omega`` index output
  coordinates as ``(c, j)`` with ``c`` major: column ``c*J + j``.

All moments are sums over samples divided by the number of samples ``n`` (images, for
convolutions: sums over spatial positions are NOT divided by the number of positions).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

import torch
from torch import Tensor

PairKind = Literal["linear", "conv", "conv_linear"]


@dataclass(frozen=True)
class PairGeometry:
    """Shapes that map flat moments and candidates to layer parameters.

    Attributes
    ----------
    kind
        ``"linear"`` (Linear→Linear), ``"conv"`` (Conv2d→Conv2d) or ``"conv_linear"``
        (Conv2d→flatten→Linear).
    in_features
        ``first``'s input size without bias: ``in_features`` or ``C_in*kh*kw``.
    hidden
        Current hidden width (``first.out_features`` / ``out_channels``).
    out_features
        ``second``'s output size (``out_features`` / ``out_channels``).
    first_bias, second_bias
        Whether ``x`` / ``h`` carry the trailing constant-1 entry.
    first_kernel
        ``(C_in, kh, kw)`` for a Conv2d ``first``, else ``None``.
    second_kernel
        ``(kh2, kw2)`` for a Conv2d ``second``, else ``None``.
    hidden_positions
        ``H*W`` of the hidden map for conv→linear (``second.in_features // hidden``), else
        ``None``.
    """

    kind: PairKind
    in_features: int
    hidden: int
    out_features: int
    first_bias: bool
    second_bias: bool
    first_kernel: tuple[int, int, int] | None = None
    second_kernel: tuple[int, int] | None = None
    hidden_positions: int | None = None

    def __post_init__(self) -> None:
        if self.kind == "conv" and (self.first_kernel is None or self.second_kernel is None):
            raise ValueError("conv geometry needs first_kernel and second_kernel")
        if self.kind == "conv_linear" and (
            self.first_kernel is None or self.hidden_positions is None
        ):
            raise ValueError("conv_linear geometry needs first_kernel and hidden_positions")

    @property
    def num_slots(self) -> int:
        """``J``: copies of a neuron's output weights in ``second`` (see module docstring)."""
        if self.kind == "conv":
            assert self.second_kernel is not None
            return self.second_kernel[0] * self.second_kernel[1]
        if self.kind == "conv_linear":
            assert self.hidden_positions is not None
            return self.hidden_positions
        return 1

    @property
    def d_x(self) -> int:
        """Length of ``x`` including the bias entry."""
        return self.in_features + int(self.first_bias)

    @property
    def d_h(self) -> int:
        """Length of ``h`` including the bias entry."""
        per_unit = self.num_slots if self.kind in ("conv", "conv_linear") else 1
        return self.hidden * per_unit + int(self.second_bias)

    @property
    def d_v(self) -> int:
        """Length of ``v`` (outputs of ``second``)."""
        return self.out_features


@dataclass
class PairMoments:
    """Uncentred second moments of one growable pair (docs/math.md §2 and §5).

    Attributes
    ----------
    S
        ``(d_h, d_h)``: ``E[h hᵀ]``.
    M
        ``(d_v, d_h)``: ``E[v hᵀ]`` (= minus the gradient of the loss w.r.t. ``second``'s
        flattened weight, with the bias column last).
    Sx
        ``(d_x, d_x)``: ``E[Σ_j x_(j) x_(j)ᵀ]``. For conv→conv this is ``Σ_p c_p x_p x_pᵀ`` with
        ``c_p`` the number of output positions hidden position ``p`` reaches (the authors'
        approximation, docs/math.md §5); for conv→linear ``Σ_p x_p x_pᵀ``; for linear ``E[x xᵀ]``.
    Mx
        ``(d_x, d_v * J)``: ``E[Σ_j x_(j) v_jᵀ]`` in ``(c, j)`` layout, where ``x_(j)`` is the
        ``x`` of the hidden position feeding slot ``j`` (zero when that position is padding).
    P
        ``(d_x, J, d_h)``: ``E[Σ_q x_(q,j) h_qᵀ]``, the cross moment through ``second``'s
        geometry, so that ``N = Mx - einsum("xji,ci->xcj", P, ΔW*)`` is ``E[x Ψᵀ]``.
    v_sq
        Scalar ``E‖v‖²`` (summed over output positions).
    n
        Number of samples the sums cover.
    Mx_noise, P_noise
        Same shapes as ``Mx`` and ``P`` but with every sample's contribution multiplied by a
        sign ``ε_i = ±1`` (+1 for even, -1 for odd positions in each batch). Under the null
        hypothesis "no signal", ``N`` and ``N_noise`` have the same distribution: the math core
        uses ``N_noise`` as its sampling-noise reference for the significance test.
    """

    S: Tensor
    M: Tensor
    Sx: Tensor
    Mx: Tensor
    P: Tensor
    v_sq: Tensor
    n: int
    Mx_noise: Tensor
    P_noise: Tensor

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        """A copy with every tensor converted (``n`` unchanged)."""
        changes = {
            f.name: getattr(self, f.name).to(dtype=dtype, device=device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **changes)

    def check(self, geometry: PairGeometry) -> None:
        """Raise ``ValueError`` naming the first tensor whose shape does not fit ``geometry``."""
        d_x, d_h, d_v, slots = geometry.d_x, geometry.d_h, geometry.d_v, geometry.num_slots
        expected = {
            "S": (d_h, d_h),
            "M": (d_v, d_h),
            "Sx": (d_x, d_x),
            "Mx": (d_x, d_v * slots),
            "P": (d_x, slots, d_h),
            "Mx_noise": (d_x, d_v * slots),
            "P_noise": (d_x, slots, d_h),
        }
        for name, shape in expected.items():
            actual = tuple(getattr(self, name).shape)
            if actual != shape:
                raise ValueError(f"moment {name} has shape {actual}, expected {shape}")
