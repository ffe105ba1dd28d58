"""The growth-event record: the single source for history, loggers, console and plots."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn

from lightning_grow.solver.method import Vocabulary


class Reason(Vocabulary):
    """Why a pair did or did not grow at a decision (an event's ``reason``)."""

    GROWN = "grown"
    NOT_SIGNIFICANT = "not significant"  # no singular value above the sampling-noise floor
    BELOW_GAIN_THRESHOLD = "below gain threshold"  # significant, but realises too little
    WIDTH_CAP = "width cap"  # max_width reached
    BUDGET = "budget"  # max_parameters reached (pairs with the best gain per parameter first)
    NO_LOSS_DECREASE = "no loss decrease"  # the line search found no amplitude that helps
    NO_SAMPLES = "no samples"  # every batch of the window was skipped (NaN/inf)
    SOLVE_FAILED = "solve failed"  # the eigensolver failed; the pair sits this decision out


class TimingPhase(Vocabulary):
    """The phases of growth whose seconds are kept (an event's ``timings``, logged per phase)."""

    STATISTICS = "statistics"
    SOLVE = "solve"
    SEARCH = "search"
    SURGERY = "surgery"


def zero_timings() -> dict[str, float]:
    """``{phase: 0.0}`` for every :class:`TimingPhase`, keyed by the plain names."""
    return dict.fromkeys(TimingPhase.values(), 0.0)


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
        Why the pair did or did not grow: a :class:`Reason` value (``"grown"``, ``"not
        significant"``, ``"below gain threshold"``, ``"width cap"``, ``"budget"``, ``"no loss
        decrease"``, ``"no samples"``, ``"solve failed"``), stored as the plain string.
    neurons_added, width_before, width_after
        Hidden width of the pair before and after the decision.
    expressivity_gain
        Fraction of the desired update that the added neurons realise (docs/math.md §4), or that the
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
        A :class:`~lightning_grow.solver.method.Method` value: ``"tiny"``, ``"gradmax"`` or
        ``"random"``.
    training_step_calls
        Calls of the module's ``training_step`` (or of ``loss_fn`` when given) that this
        decision made to measure the new units' activity and search their amplitude, all pairs
        together: the same number on every event of one decision. Each call's side effects other
        than logging and metric updates (counters, random draws, prints) really happen.
    timings
        Seconds per :class:`TimingPhase`: ``statistics``, ``solve``, ``search``, ``surgery``.
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
    training_step_calls: int = 0
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


def warn_no_samples(statistics: Mapping[str, Any]) -> bool:
    """Warn (on rank 0) about pairs whose statistics window has no usable sample.

    Such pairs sit the decision out with the reason ``"no samples"``; without a warning nobody
    learns that every batch was skipped for NaN or inf.

    Parameters
    ----------
    statistics
        Pair name → its :class:`~lightning_grow.statistics.accumulator.PairStatistics`.

    Returns
    -------
    bool
        Whether a warning was issued (the callback warns once).
    """
    empty = {name: s.skipped_batches for name, s in statistics.items() if not s.num_samples}
    if empty:
        rank_zero_warn(_no_samples_message(empty))
    return bool(empty)


def _no_samples_message(skipped_batches: Mapping[str, int]) -> str:
    pairs = ", ".join(
        f"{name} ({count} batches skipped)" for name, count in skipped_batches.items()
    )
    return (
        f"GrowthCallback: a statistics window ended without any usable sample for {pairs}. "
        "Batches whose inputs, activations or gradients contain NaN or inf are skipped; when "
        "all of them are, these pairs cannot grow (their events say 'no samples'). Check the "
        "data and the weights for NaN/inf (fp16 AMP skips only the first few steps). This "
        "warning is shown once."
    )
