"""Growth to a stated target: how many neurons each decision adds, and which.

In target mode the significance test does not stop growth: the user has said how large the
network must be and by when (the paper's CIFAR protocol). Each decision adds TINY's best neurons
(largest singular values first, pairs ranked by expressivity gain per parameter) in the amount
a geometric, front-loaded schedule asks for, so that the target is reached before ``by_step``
and never exceeded. The same selection serves the validation-monitored mode, where the quota
is a share of each pair's width and the monitored metric decides when to stop.

Pure decision logic: no Lightning. The callback turns ``target_by`` into a step and calls
:func:`plan_quota` with the quotas of :class:`GrowthTarget`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from lightning_grow.decision.amplitude import inject, search_amplitude
from lightning_grow.decision.planner import (
    GrowthConfig,
    PlannedGrowth,
    Solved,
    layer_neurons,
    prepare_tiny,
    solve_pairs,
)
from lightning_grow.reporting.events import GrowthEvent, Reason, TimingPhase, zero_timings
from lightning_grow.solver.method import Method
from lightning_grow.solver.moments import PairMoments
from lightning_grow.surgery.widen import NewNeurons
from lightning_grow.topology.facts import parameters_per_neuron
from lightning_grow.topology.pairs import GrowablePair

__all__ = ["FRONT_LOAD", "GrowthTarget", "Quota", "plan_quota"]

#: Share of the decisions left over which the remaining neurons are spread: 0.75 finishes the
#: target a quarter of the way before ``by_step``, so that a decision lost to a failed solve or
#: a rank-limited pair is made up before the deadline.
FRONT_LOAD = 0.75


@dataclass
class Quota:
    """What one decision may add: neurons per pair, or parameters for the pairs TINY picks.

    ``last``: the final decision before the deadline, which must close the gap (filler
    neurons make up what TINY's candidates cannot: random input weights, zero output weights).
    """

    neurons: dict[str, int] = field(default_factory=dict)
    parameters: int | None = None
    last: bool = False


@dataclass
class GrowthTarget:
    """A target architecture and the step by which growth must reach it.

    Parameters
    ----------
    spec
        ``{pair name: width}``, a multiplier of the starting widths (float), or ``None`` with
        ``parameters``.
    parameters
        Parameter budget of the grown network (``None`` with ``spec``).
    by
        Optimizer step (int) or fraction of the estimated total steps (float in (0, 1]).
    """

    spec: Mapping[str, int] | float | None = None
    parameters: int | None = None
    by: int | float = 0.5
    widths: dict[str, int] = field(default_factory=dict)
    by_step: int | None = None
    last_decision: int | None = None

    def resolve(self, initial_widths: Mapping[str, int], total_steps: float) -> None:
        """Target widths from the starting widths; the deadline from the estimated steps."""
        if isinstance(self.spec, Mapping):
            self.widths = {name: int(self.spec.get(name, w)) for name, w in initial_widths.items()}
        elif self.spec is not None:
            self.widths = {n: math.ceil(self.spec * w) for n, w in initial_widths.items()}
        if isinstance(self.by, float):
            if not math.isfinite(total_steps):
                raise ValueError(
                    f"target_by={self.by} is a fraction of training, but the trainer cannot "
                    "estimate its total steps (set max_steps or max_epochs, or give a step)"
                )
            self.by_step = max(1, int(self.by * total_steps))
        else:
            self.by_step = int(self.by)

    def quota(self, step: int, widths: Mapping[str, int], total_parameters: int) -> Quota:
        """What the decision after optimizer step ``step`` adds.

        Geometric: each decision multiplies the width (or the parameter count) by the same
        factor, so that the widths that cost the most FLOPs come last; spread over the first
        ``FRONT_LOAD`` of the decisions left, and the last decision closes the gap.
        """
        assert self.by_step is not None
        previous, self.last_decision = self.last_decision, step
        cycle = max(1, step - (previous if previous is not None else 0))
        left = 1 + max(0, self.by_step - 1 - step) // cycle  # decisions before the deadline
        last = step + cycle >= self.by_step
        share = 1 if last else max(1, math.ceil(FRONT_LOAD * left))
        quota = Quota(last=last)
        if self.parameters is not None:
            quota.parameters = _geometric_step(total_parameters, self.parameters, share)
        for name, target in self.widths.items():
            quota.neurons[name] = _geometric_step(widths.get(name, target), target, share)
        return quota

    def reached(self, widths: Mapping[str, int], total_parameters: int, smallest: int) -> bool:
        """Whether nothing is left to add (``smallest``: the fewest parameters a neuron adds)."""
        if self.parameters is not None:
            return self.parameters - total_parameters < smallest
        return all(widths.get(name, w) >= w for name, w in self.widths.items())

    def state_dict(self) -> dict[str, Any]:
        return {"widths": dict(self.widths), "by_step": self.by_step, "last": self.last_decision}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.widths = dict(state.get("widths", {}))
        self.by_step = state.get("by_step")
        self.last_decision = state.get("last")


def _geometric_step(now: int, target: int, share: int) -> int:
    """The increase that multiplies ``now`` by the same factor at each of ``share`` decisions
    (at least 1 while below ``target``, never past it): the large, expensive widths come last."""
    remaining = max(target - now, 0)
    if remaining == 0 or share <= 1 or now < 1:
        return remaining
    factor = (target / now) ** (1.0 / share)
    return min(remaining, max(1, math.ceil(now * (factor - 1.0))))


def _filler(pair: GrowablePair, count: int, seed: int) -> NewNeurons:
    """``count`` units with random input weights (Kaiming) and zero output weights."""
    first, second = pair.first.weight, pair.second.weight
    like = {"dtype": first.dtype, "device": first.device}
    generator = torch.Generator().manual_seed(seed)
    fan_in = max(first[0].numel(), 1)
    weight = torch.randn((count, *first.shape[1:]), generator=generator) * math.sqrt(2 / fan_in)
    if second.dim() > 2:
        columns = torch.zeros(second.shape[0], count, *second.shape[2:], **like)
    else:
        columns = torch.zeros(second.shape[0], count * (second.shape[1] // pair.width), **like)
    bias = None if pair.first.bias is None else torch.zeros(count, **like)
    return NewNeurons(first_weight=weight.to(**like), first_bias=bias, second_weight=columns)


def _concatenate(a: NewNeurons | None, b: NewNeurons) -> NewNeurons:
    if a is None:
        return b
    bias = None if a.first_bias is None else torch.cat([a.first_bias, b.first_bias])
    defaults = {"bn_weight": 1.0, "bn_bias": 0.0, "bn_running_mean": 0.0, "bn_running_var": 1.0}
    bn = {}
    for name, fill in defaults.items():
        first, second = getattr(a, name), getattr(b, name)
        if first is not None or second is not None:
            parts = [
                part if part is not None else torch.full((n.num_neurons,), fill).to(a.first_weight)
                for part, n in ((first, a), (second, b))
            ]
            bn[name] = torch.cat(parts)
    return NewNeurons(
        first_weight=torch.cat([a.first_weight, b.first_weight]),
        first_bias=bias,
        second_weight=torch.cat([a.second_weight, b.second_weight], dim=1),
        **bn,
    )


def _allocate(
    pairs: list[GrowablePair], candidates: Mapping[str, Any], quota: Quota
) -> dict[str, int]:
    """Neurons per pair: per-pair quotas, or a parameter quota spent greedily on the neurons
    with the best expressivity gain per parameter, one pair per shared layer and decision (so
    that the count of added parameters is exact)."""
    if quota.parameters is None:
        return {p.name: quota.neurons.get(p.name, 0) for p in pairs}
    counts: dict[str, int] = {}
    budget, used = quota.parameters, set()

    def first_gain(pair: GrowablePair) -> float:
        gain = candidates[pair.name].gain if pair.name in candidates else torch.zeros(1)
        return float(gain[0]) / parameters_per_neuron(pair) if len(gain) else 0.0

    for pair in sorted(pairs, key=first_gain, reverse=True):
        layers = {id(pair.first), id(pair.second)}
        if layers & used:
            continue
        count = budget // parameters_per_neuron(pair)
        if count > 0:
            counts[pair.name] = int(count)
            budget -= count * parameters_per_neuron(pair)
            used |= layers
    return counts


def plan_quota(
    pairs: list[GrowablePair],
    moments: Mapping[str, PairMoments],
    evaluate: Callable[[], float],
    config: GrowthConfig,
    quota: Quota,
    *,
    total_parameters: int,
    step: int,
    epoch: int,
    decision_index: int,
    statistics_seconds: float = 0.0,
    solved: Solved | None = None,
) -> tuple[list[PlannedGrowth], list[GrowthEvent], bool]:
    """Add the quota's neurons: TINY's best candidates of each pair, amplitude by line search.

    The significance test and gain threshold are not applied (the target or the validation
    metric decides how much to grow). Neurons whose line search finds no loss decrease keep
    zero output weights (function-preserving; they learn from there). For TINY only the
    significant candidates are installed; filler units (random fan-in, zero fan-out) make up
    the rest of the quota, and at the last decision whatever is still missing.
    Same return as :func:`~lightning_grow.decision.planner.plan_growth`.
    """
    wanted = max([*quota.neurons.values(), 1])
    if solved is None:
        options = replace(
            config, max_neurons_per_event=wanted if quota.parameters is None else None
        )
        solved = solve_pairs(pairs, moments, options, decision_index=decision_index)
    candidates, failed, solve_seconds = solved
    counts = _allocate([p for p in pairs if p.name in candidates or quota.last], candidates, quota)
    planned: list[PlannedGrowth] = []
    events: list[GrowthEvent] = []
    added_parameters = 0
    for index, pair in enumerate(pairs):
        count = counts.get(pair.name, 0)
        candidate = candidates.get(pair.name)
        available = 0 if candidate is None else min(count, candidate.max_neurons)
        if candidate is not None and config.method is Method.TINY:
            # Beyond the significant ones, TINY's directions fit the noise of one window (on
            # digits they cost 1 pt of test accuracy): the rest of the quota gets filler units.
            available = min(available, candidate.num_significant)
        started = time.perf_counter()
        neurons, amplitude, before, after = None, 0.0, math.nan, math.nan
        if available > 0:
            neurons = layer_neurons(pair, candidate, available)
            if config.method is Method.TINY:
                before = prepare_tiny(pair, neurons, evaluate, config.preactivation_rms)
                amplitude, after = _search(pair, neurons, before, evaluate, config)
                neurons.second_weight = neurons.second_weight * amplitude
        if count > available and (candidate is not None or quota.last):
            filler = _filler(pair, count - available, config.seed + 7919 * decision_index + index)
            neurons = _concatenate(neurons, filler)
        added = 0 if neurons is None else neurons.num_neurons
        if added:
            planned.append(PlannedGrowth(pair, neurons))
            added_parameters += added * parameters_per_neuron(pair)
        reason = Reason.SOLVE_FAILED if pair.name in failed else Reason.NO_SAMPLES
        if candidate is not None:
            reason = Reason.GROWN if added else Reason.WIDTH_CAP
        gain = float(candidate.gain[available - 1]) if candidate is not None and available else 0.0
        timings = zero_timings() | {
            TimingPhase.STATISTICS.value: statistics_seconds / max(len(pairs), 1),
            TimingPhase.SOLVE.value: solve_seconds / max(len(pairs), 1),
            TimingPhase.SEARCH.value: time.perf_counter() - started,
        }
        events.append(
            GrowthEvent(
                step=step,
                epoch=epoch,
                pair=pair.name,
                accepted=added > 0,
                reason=reason.value,
                neurons_added=added,
                width_before=pair.width,
                width_after=pair.width + added,
                expressivity_gain=gain,
                bottleneck_fraction=math.nan,
                num_significant=0 if candidate is None else candidate.num_significant,
                amplitude=amplitude,
                loss_before=before,
                loss_after=after,
                total_parameters=0,
                method=config.method.value,
                timings=timings,
            )
        )
    for event in events:
        event.total_parameters = total_parameters + added_parameters
    return planned, events, True


def _search(
    pair: GrowablePair,
    neurons: NewNeurons,
    loss_before: float,
    evaluate: Callable[[], float],
    config: GrowthConfig,
) -> tuple[float, float]:
    """The amplitude with the lowest held-out loss (0.0 when none lowers it) and that loss."""
    with inject(pair, neurons, scale=0.0) as set_scale:

        def loss_at(amplitude: float) -> float:
            set_scale(amplitude)
            return evaluate()

        low, high = config.amplitude_range
        result = search_amplitude(loss_at, loss_before, gamma_min=low, gamma_max=high)
    return result.amplitude, result.loss_after
