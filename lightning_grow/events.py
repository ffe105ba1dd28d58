"""The growth-event record: the single source for history, loggers, console and plots."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class GrowthEvent:
    """What happened to one growable pair at one decision step.

    One record is written per pair and decision, accepted or not, so that the history explains
    both where the network grew and where it was considered and why it did not.

    Attributes
    ----------
    step, epoch
        ``trainer.global_step`` and ``trainer.current_epoch`` when the decision was taken.
    pair
        The pair's name (``"<first> -> <second>"`` module names).
    accepted
        Whether neurons were added.
    reason
        Why the pair did or did not grow (``"grown"``, ``"not significant"``, ``"below gain
        threshold"``, ``"no loss decrease"``, ``"budget"``, ``"width cap"``).
    neurons_added, width_before, width_after
        Hidden width of the pair before and after the decision.
    expressivity_gain
        Fraction of the desired update that the added neurons realise (MATH.md §4), or that the
        best candidate would have realised when rejected.
    bottleneck_fraction
        ``E‖Ψ‖² / E‖v‖²``: share of the desired update that the current weights cannot produce.
    num_significant
        Singular values judged to be signal rather than sampling noise.
    amplitude
        Chosen amplitude γ (0.0 when rejected).
    loss_before, loss_after
        Loss on the held samples without and with the new neurons.
    total_parameters
        Parameters of the whole network after the decision.
    method
        ``"tiny"``, ``"gradmax"`` or ``"random"``.
    timings
        Seconds per phase: ``statistics``, ``solve``, ``search``, ``surgery``.
    """

    step: int
    epoch: int
    pair: str
    accepted: bool
    reason: str
    neurons_added: int
    width_before: int
    width_after: int
    expressivity_gain: float
    bottleneck_fraction: float
    num_significant: int
    amplitude: float
    loss_before: float
    loss_after: float
    total_parameters: int
    method: str
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A flat, JSON-friendly dict (timings become ``time_<phase>`` keys)."""
        record = asdict(self)
        timings = record.pop("timings")
        record.update({f"time_{phase}": seconds for phase, seconds in timings.items()})
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> GrowthEvent:
        """Inverse of :meth:`to_dict`."""
        record = dict(record)
        timings = {
            key.removeprefix("time_"): record.pop(key)
            for key in list(record)
            if key.startswith("time_")
        }
        return cls(**record, timings=timings)
