"""When, where and how many neurons to add: the growth schedule and the selection rule.

Pure decision logic: no Lightning, no modules. The callback feeds it optimizer-step counts and
the math core's candidates; it answers with a phase and per-pair neuron counts.

The cycle (all counts in optimizer steps, identical on every rank)::

    warm-up ──► collect (statistics window) ──► hold (held-out batches) ──► decide ──► cooldown ─┐
                   ▲                                                                              │
                   └──────────────────────────────────────────────────────────────────────────────┘

Growth stops for good at ``stop_step``. After ``patience`` consecutive exhausted windows in which
no pair had a significant neuron it *pauses* for as many steps as it has gone without finding
one, then looks again: training moves the network, and a network stuck short of its task often
shows a new bottleneck later. Each pause is at least as long as the idle stretch before it, so
at most half of the remaining steps collect statistics, and ever fewer while nothing is found.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from lightning_grow.reporting.events import Reason

if TYPE_CHECKING:
    from lightning_grow.solver.tiny import GrowthCandidates

__all__ = ["GrowthSchedule", "PairDecision", "Phase", "select_growth"]


class Phase(str, Enum):
    WARMUP = "warmup"
    COLLECT = "collect"
    HOLD = "hold"
    COOLDOWN = "cooldown"
    STOPPED = "stopped"


@dataclass
class GrowthSchedule:
    """The growth cycle as a small state machine driven by the optimizer step count.

    Parameters
    ----------
    warmup_steps
        Optimizer steps before the first statistics window opens.
    window_steps
        Optimizer steps of one statistics window.
    hold_steps
        Optimizer steps whose batches are held out for the amplitude search.
    cooldown_steps
        Optimizer steps after a decision before the next window opens.
    stop_step
        No window opens at or after this step (``None``: never stop for that reason).
    patience
        Pause after this many consecutive exhausted windows without any significant neuron
        (``None``: never pause).
    """

    warmup_steps: int
    window_steps: int
    hold_steps: int
    cooldown_steps: int = 0
    stop_step: int | None = None
    patience: int | None = 3
    phase: Phase = Phase.WARMUP
    phase_start: int = 0
    decisions: int = 0
    idle_decisions: int = 0
    wait_steps: int = 0
    active_step: int = 0

    def __post_init__(self) -> None:
        for name in ("warmup_steps", "cooldown_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("window_steps", "hold_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def advance(self, step: int) -> Phase:
        """Move to the phase that holds for the batch about to run at optimizer step ``step``."""
        if self.phase is Phase.STOPPED:
            return self.phase
        if self.stop_step is not None and step >= self.stop_step and self.phase is not Phase.HOLD:
            # A window still collecting when the stop step arrives is abandoned; a hold phase
            # completes so that statistics already paid for are used.
            self.phase = Phase.STOPPED
            return self.phase
        if self.phase is Phase.WARMUP and step >= self.warmup_steps:
            self.active_step = step
            self._enter(Phase.COLLECT, step)
        elif self.phase is Phase.COLLECT and step - self.phase_start >= self.window_steps:
            self._enter(Phase.HOLD, step)
        elif self.phase is Phase.COOLDOWN and step - self.phase_start >= self.wait_steps:
            self._enter(Phase.COLLECT, step)
        return self.phase

    def ready_to_decide(self, step: int) -> bool:
        """Whether the held-out batches are complete after the optimizer step ``step``."""
        return self.phase is Phase.HOLD and step - self.phase_start >= self.hold_steps

    def decided(
        self, step: int, *, any_significant: bool, count_idle: bool = True, wait: int = 0
    ) -> None:
        """Record a decision taken after optimizer step ``step``.

        ``count_idle=False`` (a statistics window is being extended) keeps an insignificant
        decision from counting toward ``patience``: only exhausted windows do. ``wait``: steps
        to wait at least before the next window (the compute budget's pacing).
        """
        self.decisions += 1
        if any_significant:
            self.idle_decisions = 0
            self.active_step = step
        elif count_idle:
            self.idle_decisions += 1
        if self.patience is not None and self.idle_decisions >= self.patience:
            # Pause as long as the search has gone without finding anything: a network stuck
            # short of its task gets looked at again, an idle one costs ever less.
            self.idle_decisions = 0
            self.wait_steps = max(step - self.active_step, self.cooldown_steps, wait)
            self._enter(Phase.COOLDOWN, step)
        elif max(self.cooldown_steps, wait) == 0:
            self._enter(Phase.COLLECT, step)
        else:
            self.wait_steps = max(self.cooldown_steps, wait)
            self._enter(Phase.COOLDOWN, step)

    @property
    def paused(self) -> bool:
        """Whether growth is waiting out a pause after ``patience`` idle windows."""
        return self.phase is Phase.COOLDOWN and self.wait_steps > self.cooldown_steps

    def _enter(self, phase: Phase, step: int) -> None:
        self.phase, self.phase_start = phase, step

    def state_dict(self) -> dict[str, object]:
        return {
            "phase": self.phase.value,
            "phase_start": self.phase_start,
            "decisions": self.decisions,
            "idle_decisions": self.idle_decisions,
            "wait_steps": self.wait_steps,
            "active_step": self.active_step,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.phase = Phase(state["phase"])
        self.phase_start = int(state["phase_start"])  # type: ignore[arg-type]
        self.decisions = int(state["decisions"])  # type: ignore[arg-type]
        self.idle_decisions = int(state["idle_decisions"])  # type: ignore[arg-type]
        self.wait_steps = int(state.get("wait_steps", self.cooldown_steps))  # type: ignore[arg-type]
        self.active_step = int(state.get("active_step", 0))  # type: ignore[arg-type]


@dataclass
class PairDecision:
    """How many neurons one pair gets at one decision, and why."""

    pair: str
    neurons: int
    reason: Reason
    expressivity_gain: float = 0.0
    parameters_per_neuron: int = 0
    extra: dict[str, float] = field(default_factory=dict)


def neurons_above_gain(candidates: GrowthCandidates, gain_threshold: float) -> int:
    """Leading neurons whose own share ``λ_k² / E‖v‖²`` of the desired update is ≥ the threshold."""
    gains = candidates.gain.tolist()
    count, previous = 0, 0.0
    for cumulative in gains:
        if cumulative - previous < gain_threshold:
            break
        count += 1
        previous = cumulative
    return count


def select_growth(
    candidates: dict[str, GrowthCandidates],
    widths: dict[str, int],
    parameters_per_neuron: dict[str, int],
    *,
    gain_threshold: float,
    max_neurons: dict[str, int],
    max_width: dict[str, int | None],
    total_parameters: int,
    max_parameters: int | None,
) -> dict[str, PairDecision]:
    """Decide how many neurons every pair gets.

    A pair gets ``K = min(significant, above gain threshold, per-event cap, width cap)`` neurons.
    When a parameter budget is set, pairs are served in order of expressivity gain per added
    parameter and each takes what still fits.

    Parameters
    ----------
    candidates
        Math-core output per pair name.
    widths
        Current hidden width per pair.
    parameters_per_neuron
        Parameters one new neuron adds to each pair (its row, its BN entries, its columns).
    gain_threshold
        Minimum share of the desired update each added neuron must realise.
    max_neurons
        Per-event cap per pair.
    max_width
        Width cap per pair (``None``: uncapped).
    total_parameters
        Parameters of the network now.
    max_parameters
        Parameter budget of the whole network (``None``: unlimited).
    """
    decisions: dict[str, PairDecision] = {}
    for name, candidate in candidates.items():
        significant = candidate.num_significant
        above_gain = neurons_above_gain(candidate, gain_threshold)
        cap = max_width[name]
        room = math.inf if cap is None else max(cap - widths[name], 0)
        count = int(min(significant, above_gain, max_neurons[name], room))
        if significant == 0:
            reason = Reason.NOT_SIGNIFICANT
        elif above_gain == 0:
            reason = Reason.BELOW_GAIN_THRESHOLD
        elif room == 0:
            reason = Reason.WIDTH_CAP
        else:
            reason = Reason.GROWN
        gain = float(candidate.gain[count - 1]) if count > 0 else 0.0
        best_gain = float(candidate.gain[0]) if len(candidate.gain) else 0.0
        decisions[name] = PairDecision(
            pair=name,
            neurons=count,
            reason=reason,
            expressivity_gain=gain if count else best_gain,
            parameters_per_neuron=parameters_per_neuron[name],
        )
    if max_parameters is None:
        return decisions

    budget = max_parameters - total_parameters

    def gain_per_parameter(decision: PairDecision) -> float:
        return decision.expressivity_gain / max(
            decision.neurons * decision.parameters_per_neuron, 1
        )

    for decision in sorted(decisions.values(), key=gain_per_parameter, reverse=True):
        if decision.neurons == 0:
            continue
        affordable = max(budget, 0) // max(decision.parameters_per_neuron, 1)
        if affordable < decision.neurons:
            decision.neurons = int(affordable)
            if decision.neurons == 0:
                decision.reason = Reason.BUDGET
                continue
            decision.expressivity_gain = float(candidates[decision.pair].gain[decision.neurons - 1])
        budget -= decision.neurons * decision.parameters_per_neuron
    return decisions
