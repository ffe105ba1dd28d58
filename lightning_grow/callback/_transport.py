"""What rank 0 sends to every rank after a decision, and fitting it to each rank's model.

Rank 0 decides alone (statistics reduced, solves spread or not); the other ranks wait in one
``strategy.broadcast`` of a :class:`DecisionPayload` and then apply the same growth, so that the
replicas stay identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from lightning_grow.callback._lightning import rewrap_ddp
from lightning_grow.decision.planner import PlannedGrowth
from lightning_grow.surgery.widen import NewNeurons, all_or_nothing, grow_pair
from lightning_grow.topology.pairs import GrowablePair

__all__ = ["DecisionPayload", "apply_growth", "fit_to_current_shapes", "to_payload"]

#: ``(pair name, NewNeurons fields on the CPU)`` for one grown pair.
GrowthPayload = tuple[str, dict[str, Any]]


@dataclass
class DecisionPayload:
    """Rank 0's decision, broadcast to every rank.

    Attributes
    ----------
    growth
        The neurons to install, per grown pair (:func:`to_payload`).
    events
        Every pair's event, as ``GrowthEvent.to_dict()`` records.
    any_significant
        Whether any pair had a significant neuron (the schedule's patience counts on it).
    wait
        Steps to pause before the next window (the compute budget's pacing).
    plan
        A recalibrated statistics plan (``StatisticsPlan.to_dict()``), or ``None`` to keep it.
    error
        ``"<type>: <message>"`` when the decision failed on rank 0: every rank then raises.
    """

    growth: list[GrowthPayload] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    any_significant: bool = False
    wait: int = 0
    plan: dict[str, Any] | None = None
    error: str | None = None


def to_payload(item: PlannedGrowth) -> GrowthPayload:
    """``(pair name, NewNeurons fields on the CPU)``: what rank 0 broadcasts."""
    tensors = {entry.name: getattr(item.neurons, entry.name) for entry in fields(item.neurons)}
    # Tensors, or collections of them (the measured statistics of norms after a depthwise conv).
    return item.pair.name, {key: _on_cpu(value) for key, value in tensors.items()}


def _on_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _on_cpu(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(_on_cpu(item) for item in value)
    return value


def fit_to_current_shapes(pair: GrowablePair, tensors: dict[str, Any]) -> dict[str, Any]:
    """Zero-pad planned neurons for units a neighbouring pair added in the same decision.

    Adjacent pairs share a layer (``second`` of one is ``first`` of the next). Candidates were
    computed and tried on the model before this decision, so the new units of two neighbouring
    pairs are not connected to each other: zero weights between them.
    """
    first_weight, second_weight = tensors["first_weight"], tensors["second_weight"]
    missing_inputs = pair.first.weight.shape[1] - first_weight.shape[1]
    if missing_inputs > 0:
        shape = (first_weight.shape[0], missing_inputs, *first_weight.shape[2:])
        padding = first_weight.new_zeros(shape)
        tensors["first_weight"] = torch.cat([first_weight, padding], dim=1)
    missing_outputs = pair.second.weight.shape[0] - second_weight.shape[0]
    if missing_outputs > 0:
        padding = second_weight.new_zeros((missing_outputs, *second_weight.shape[1:]))
        tensors["second_weight"] = torch.cat([second_weight, padding], dim=0)
    return tensors


def apply_growth(
    trainer: pl.Trainer, pairs: list[GrowablePair], growth: list[GrowthPayload]
) -> set[str]:
    """Install the planned neurons on this rank; return the names of the grown pairs."""
    by_name = {pair.name: pair for pair in pairs}
    grown: set[str] = set()
    # All pairs or none: a failure on one undoes the pairs grown before it.
    with all_or_nothing() as journal:
        for name, tensors in growth:
            pair = by_name[name]
            device = pair.first.weight.device
            tensors = fit_to_current_shapes(pair, move_data_to_device(tensors, device))
            neurons = NewNeurons(**tensors)
            grow_pair(pair, neurons, trainer.optimizers, journal=journal)
            grown.add(name)
    if grown:
        rewrap_ddp(trainer)
    return grown
