"""Facts about one growable pair that several layers need: sizes and parameter counts.

They used to live with the planner, but they are properties of a pair, not of a decision: the
budget sizes statistics windows with :func:`moment_dimension`, the planner prices neurons with
:func:`parameters_per_neuron`, the reporter shows :func:`pair_parameters`.
"""

from __future__ import annotations

from lightning_grow.topology.pairs import GrowablePair

__all__ = ["moment_dimension", "pair_parameters", "parameters_per_neuron"]


def parameters_per_neuron(pair: GrowablePair) -> int:
    """Parameters one new hidden unit adds: its row in ``first``, its BN entries, its columns."""
    geometry = pair.geometry()
    bn = pair.batch_norm
    bn_parameters = 2 if bn is not None and bn.affine else 0
    return geometry.d_x + bn_parameters + geometry.out_features * geometry.num_slots


def moment_dimension(pair: GrowablePair) -> int:
    """The largest side of the pair's moment matrices (``d_x``, ``d_h`` or ``d_v·J``)."""
    geometry = pair.geometry()
    return max(geometry.d_x, geometry.d_h, geometry.d_v * geometry.num_slots)


def pair_parameters(pair: GrowablePair) -> int:
    """Parameters of the pair's own layers: ``first``, its BatchNorm and ``second``."""
    modules = [pair.first, pair.second] + ([pair.batch_norm] if pair.batch_norm else [])
    return sum(p.numel() for module in modules for p in module.parameters())
