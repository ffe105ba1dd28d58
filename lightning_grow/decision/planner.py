"""One growth decision: moments → candidates → selection → amplitude → neurons to install.

Runs on one process (rank 0 under DDP) and knows nothing about Lightning: the model's loss on the
held-out batches comes in as a closure.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lightning_grow.decision.amplitude import (
    inject,
    measure_activity,
    measure_carried_norms,
    scale_free,
    scale_neurons,
    search_amplitude,
)
from lightning_grow.decision.policy import PairDecision, select_growth
from lightning_grow.reporting.events import GrowthEvent, Reason, TimingPhase, zero_timings
from lightning_grow.solver.method import Method
from lightning_grow.solver.moments import PairMoments
from lightning_grow.solver.tiny import GrowthCandidates, compute_candidates
from lightning_grow.surgery.widen import NewNeurons
from lightning_grow.topology.facts import parameters_per_neuron
from lightning_grow.topology.pairs import GrowablePair

__all__ = [
    "GrowthConfig",
    "PairOutcome",
    "PlannedGrowth",
    "layer_neurons",
    "plan_growth",
    "prepare_tiny",
    "solve_pairs",
]


@dataclass
class GrowthConfig:
    """Decision parameters shared by every pair (documented on :class:`GrowthCallback`)."""

    method: Method = Method.TINY
    gain_threshold: float = 0.001
    max_neurons_per_event: int | None = None
    max_width: int | Mapping[str, int] | None = None
    max_parameters: int | None = None
    min_loss_decrease: float = 1e-3
    amplitude_range: tuple[float, float] = (2.0**-12, 64.0)
    preactivation_rms: float | None = 1.0
    init_scale: float = 0.1
    seed: int = 0
    confirm_margin: float | None = None
    negative_amplitudes: bool = False
    solver_options: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.method = Method.parse(self.method, "method")


@dataclass
class PlannedGrowth:
    """Neurons to install on one pair."""

    pair: GrowablePair
    neurons: NewNeurons


@dataclass
class PairOutcome:
    """What the amplitude search made of one pair's selected neurons.

    Attributes
    ----------
    neurons
        The neurons to install, or ``None`` when the pair does not grow.
    amplitude
        The chosen amplitude (0.0 when the pair does not grow).
    loss_before, loss_after
        Held-out loss without and with the neurons (NaN when nothing was tried).
    reason
        Why the pair did or did not grow.
    """

    neurons: NewNeurons | None
    amplitude: float
    loss_before: float
    loss_after: float
    reason: Reason


def _unit_output_norms(second_weight: Tensor, units: int) -> Tensor:
    """Norm of each hidden unit's output weights in ``second`` (its K·J columns for
    conv→linear, its input-channel slice for a conv)."""
    if second_weight.dim() > 2:
        return second_weight.transpose(0, 1).flatten(1).norm(dim=1)
    return (
        second_weight.view(second_weight.shape[0], units, -1).transpose(0, 1).flatten(1).norm(dim=1)
    )


def layer_neurons(pair: GrowablePair, candidates: GrowthCandidates, count: int) -> NewNeurons:
    """The first ``count`` candidate neurons in ``pair``'s own weight layouts, dtype and device."""
    reference = pair.first.weight
    like = {"dtype": reference.dtype, "device": reference.device}
    bias = candidates.first_bias(count)
    # The solver's layout is the statistics' 2-D view (a Conv1d's kernel is (1, k)): back to the
    # modules' own weight layouts.
    second = pair.second.weight
    return NewNeurons(
        first_weight=candidates.first_weight(count).reshape(count, *reference.shape[1:]).to(**like),
        first_bias=None if bias is None else bias.to(**like),
        second_weight=candidates.second_weight(count)
        .reshape(second.shape[0], -1, *second.shape[2:])
        .to(**like),
    )


def prepare_tiny(
    pair: GrowablePair,
    neurons: NewNeurons,
    evaluate: Callable[[], float],
    unit_rms: float | None = None,
) -> float:
    """Size the new units' pre-activations; return the baseline loss.

    Without BatchNorm, each new unit's pre-activation RMS (on the held batches) becomes
    ``unit_rms`` behind an activation that is not positively homogeneous, else (ReLU, LeakyReLU,
    no activation, see :func:`~lightning_grow.decision.amplitude.scale_free`; or ``unit_rms``
    ``None``) the existing units' median. The input weights carry the factor, the output weights
    its inverse, so the first-order contribution (amplitude 1) is unchanged.
    """
    base_loss, existing_rms, mean, var = measure_activity(pair, neurons, evaluate)
    like = {"dtype": neurons.first_weight.dtype, "device": neurons.first_weight.device}
    if pair.batch_norm is not None:
        # BatchNorm standardises the new channel: keep the realised size in the output weights.
        neurons.bn_running_mean = mean.to(**like)
        neurons.bn_running_var = var.to(**like)
        scale_neurons(neurons, torch.ones_like(mean, **like), var.sqrt().to(**like))
    else:
        target = existing_rms
        if unit_rms is not None and not scale_free(pair):
            # The activation's own scale, not the existing units': matching copies the starting
            # network's scale forever (PyTorch's default init: RMS ~0.4 for unit inputs, tanh's
            # linear range), and would start units behind saturated ones saturated.
            target = torch.full_like(target, unit_rms)
        rms = (var + mean.square()).sqrt()
        factor = torch.where(rms > 0, target / rms.clamp_min(1e-30), torch.ones_like(rms))
        factor = factor.to(**like)
        scale_neurons(neurons, factor, 1.0 / factor)
    # Measured with the first norm's entries and the scaling above, as the units will run.
    neurons.carried_norms = measure_carried_norms(pair, neurons, evaluate)
    return base_loss


def _prepare_function_preserving(
    pair: GrowablePair, neurons: NewNeurons, method: Method, init_scale: float
) -> None:
    """GradMax (α = 0) and random (ω = 0) initialisations that new units can learn from."""
    like = {"dtype": neurons.first_weight.dtype, "device": neurons.first_weight.device}
    k = neurons.num_neurons
    if method is Method.GRADMAX:
        target = init_scale * float(
            _unit_output_norms(pair.second.weight.detach(), pair.width).median()
        )
        norms = _unit_output_norms(neurons.second_weight, neurons.num_neurons)
        scale = torch.where(norms > 0, target / norms.clamp_min(1e-30), torch.zeros_like(norms))
        scale_neurons(neurons, torch.ones(k, **like), scale.to(**like))
        if pair.dead_at_zero:
            # PyTorch's ReLU has derivative 0 at exactly 0: a unit with zero fan-in would never
            # receive a gradient. A small positive pre-activation opens the gate.
            nudge = torch.full((k,), 1e-2, **like)
            if pair.batch_norm is not None and pair.batch_norm.affine:
                neurons.bn_bias = nudge
            elif neurons.first_bias is not None:
                neurons.first_bias = nudge
            else:
                generator = torch.Generator().manual_seed(k)
                noise = torch.randn(neurons.first_weight.shape, generator=generator)
                neurons.first_weight = 1e-3 * noise.to(**like)
    elif method is Method.RANDOM:
        neurons.second_weight = torch.zeros_like(neurons.second_weight)


Solved = tuple[dict[str, GrowthCandidates], dict[str, str], float]


def max_neurons_per_event(pair: GrowablePair, config: GrowthConfig) -> int:
    """Candidates to compute for ``pair``: the per-event cap, or its width (at most doubling)."""
    return config.max_neurons_per_event or max(1, pair.width)


def solve_pairs(
    pairs: list[GrowablePair],
    moments: Mapping[str, PairMoments],
    config: GrowthConfig,
    *,
    decision_index: int,
    mine: Callable[[int], bool] = lambda index: True,
) -> Solved:
    """TINY's candidates for the pairs (those whose index ``mine`` accepts), one at a time.

    Returns the candidates by pair name, the pairs whose solve failed (with the error) and the
    seconds spent. A failing solve never raises: an ill-conditioned or non-finite moment (e.g.
    a 1×1 map with mostly zero rows, an eigensolver that does not converge) skips that pair for
    this decision with a warning; its statistics restart and the other pairs grow.
    """
    started = time.perf_counter()
    candidates: dict[str, GrowthCandidates] = {}
    failed: dict[str, str] = {}
    for index, pair in enumerate(pairs):
        if pair.name not in moments or not mine(index):
            continue
        try:
            candidates[pair.name] = compute_candidates(
                moments[pair.name],
                pair.geometry(),
                method=config.method,
                max_neurons=max_neurons_per_event(pair, config),
                activation_slope=pair.activation_slope,
                seed=config.seed + 7919 * decision_index + index,
                **config.solver_options,
            )
        except (RuntimeError, ValueError, ArithmeticError) as error:
            failed[pair.name] = f"{type(error).__name__}: {error}"
            warnings.warn(
                f"GrowthCallback: the solve of pair {pair.name} failed and the pair is skipped "
                f"at this decision ({failed[pair.name]})",
                stacklevel=2,
            )
    return candidates, failed, time.perf_counter() - started


def plan_growth(
    pairs: list[GrowablePair],
    moments: Mapping[str, PairMoments],
    evaluate: Callable[[], float],
    config: GrowthConfig,
    *,
    total_parameters: int,
    step: int,
    epoch: int,
    decision_index: int,
    statistics_seconds: float = 0.0,
    solved: Solved | None = None,
    confirm: Callable[[], float | list[float]] | None = None,
) -> tuple[list[PlannedGrowth], list[GrowthEvent], bool]:
    """Decide the growth of every pair.

    Returns the neurons to install, one event per pair (accepted or not) and whether any pair
    had a significant neuron. ``solved``: the output of :func:`solve_pairs` when the solves
    already ran (e.g. spread over DDP ranks); otherwise they run here. ``evaluate`` chooses the
    amplitude and sign; ``confirm``, the loss on other held-out samples, must then fall by
    ``min_loss_decrease`` too (``None``: ``evaluate`` confirms its own choice).
    """
    widths = {pair.name: pair.width for pair in pairs}
    by_name = {pair.name: pair for pair in pairs}
    per_neuron = {pair.name: parameters_per_neuron(pair) for pair in pairs}
    max_width = config.max_width
    caps = {
        name: (max_width.get(name) if isinstance(max_width, Mapping) else max_width)
        for name in widths
    }
    per_event = {pair.name: max_neurons_per_event(pair, config) for pair in pairs}

    if solved is None:
        solved = solve_pairs(pairs, moments, config, decision_index=decision_index)
    candidates, failed, solve_seconds = solved
    decisions = select_growth(
        candidates,
        {name: widths[name] for name in candidates},
        per_neuron,
        gain_threshold=config.gain_threshold,
        max_neurons=per_event,
        max_width=caps,
        total_parameters=total_parameters,
        max_parameters=config.max_parameters,
    )

    def event(name: str, reason: Reason, **measured: Any) -> GrowthEvent:
        nan = float("nan")
        record: dict[str, Any] = {
            "step": step,
            "epoch": epoch,
            "pair": name,
            "accepted": False,
            "reason": reason.value,
            "neurons_added": 0,
            "width_before": widths[name],
            "width_after": widths[name],
            "expressivity_gain": 0.0,
            "bottleneck_fraction": nan,
            "num_significant": 0,
            "amplitude": 0.0,
            "loss_before": nan,
            "loss_after": nan,
            "total_parameters": 0,  # filled in once every pair's growth is known
            "method": config.method.value,
            "timings": zero_timings(),
        }
        return GrowthEvent(**(record | measured))

    planned: list[PlannedGrowth] = []
    # Pairs whose window had no finite sample (e.g. early fp16 AMP steps) sit this decision out.
    events = [
        event(pair.name, Reason.SOLVE_FAILED if pair.name in failed else Reason.NO_SAMPLES)
        for pair in pairs
        if pair.name not in candidates
    ]
    added_parameters = 0
    for name, decision in decisions.items():
        pair, candidate = by_name[name], candidates[name]
        started = time.perf_counter()
        outcome = _decide_pair(pair, candidate, decision, evaluate, config, confirm)
        search_seconds = time.perf_counter() - started
        neurons = outcome.neurons
        added = neurons.num_neurons if neurons is not None else 0
        if neurons is not None:
            planned.append(PlannedGrowth(pair, neurons))
            added_parameters += added * per_neuron[name]
        bottleneck_fraction = candidate.bottleneck / candidate.v_sq if candidate.v_sq > 0 else 0.0
        events.append(
            event(
                name,
                outcome.reason,
                accepted=neurons is not None,
                neurons_added=added,
                width_after=widths[name] + added,
                expressivity_gain=decision.expressivity_gain,
                bottleneck_fraction=float(bottleneck_fraction),
                num_significant=candidate.num_significant,
                amplitude=outcome.amplitude,
                loss_before=outcome.loss_before,
                loss_after=outcome.loss_after,
                timings={
                    TimingPhase.STATISTICS.value: statistics_seconds / max(len(pairs), 1),
                    TimingPhase.SOLVE.value: solve_seconds / max(len(pairs), 1),
                    TimingPhase.SEARCH.value: search_seconds,
                    TimingPhase.SURGERY.value: 0.0,
                },
            )
        )
    for event in events:
        event.total_parameters = total_parameters + added_parameters
    any_significant = any(c.num_significant > 0 for c in candidates.values())
    return planned, events, any_significant


def _decide_pair(
    pair: GrowablePair,
    candidate: GrowthCandidates,
    decision: PairDecision,
    evaluate: Callable[[], float],
    config: GrowthConfig,
    confirm: Callable[[], float | list[float]] | None = None,
) -> PairOutcome:
    """Prepare the selected neurons of one pair, search their amplitude, confirm the decrease.

    The search picks the best of about ten amplitudes and signs by ``evaluate``: on pure noise
    that minimum lies below the loss without the neurons by chance alone, so the decrease is
    confirmed on ``confirm``'s samples, which played no part in the choice (docs/math.md §8).
    """
    nan = float("nan")
    if decision.neurons == 0:
        return PairOutcome(None, 0.0, nan, nan, decision.reason)
    neurons = layer_neurons(pair, candidate, decision.neurons)
    if config.method is not Method.TINY:
        _prepare_function_preserving(pair, neurons, config.method, config.init_scale)
        with inject(pair, neurons, scale=0.0):
            loss_before = evaluate()
        with inject(pair, neurons, scale=1.0):
            loss_after = evaluate()
        return PairOutcome(neurons, 1.0, loss_before, loss_after, Reason.GROWN)

    loss_before = prepare_tiny(pair, neurons, evaluate, config.preactivation_rms)
    gamma_min, gamma_max = config.amplitude_range
    with inject(pair, neurons, scale=0.0) as set_scale:

        def loss_at(amplitude: float) -> float:
            set_scale(amplitude)
            return evaluate()

        required = loss_before - config.min_loss_decrease * max(abs(loss_before), 1e-12)
        result = search_amplitude(
            loss_at,
            loss_before,
            gamma_min=gamma_min,
            gamma_max=gamma_max,
            required_loss=required,
            signs=(1.0, -1.0) if config.negative_amplitudes else (1.0,),
        )
        loss_after = result.loss_after
        chosen = loss_after <= required
        confirmed = True
        if confirm is not None and result.amplitude != 0.0 and chosen:
            set_scale(0.0)
            before_parts = confirm()
            set_scale(result.amplitude)
            after_parts = confirm()
            loss_before, loss_after = _mean(before_parts), _mean(after_parts)
            margin = config.confirm_margin
            # Held batches that cannot be cut give one loss: no test then, only the decrease.
            if margin is not None and isinstance(before_parts, list) and len(before_parts) > 1:
                confirmed = paired_t(before_parts, after_parts) >= margin  # type: ignore[arg-type]
    decrease = (loss_before - loss_after) / max(abs(loss_before), 1e-12)
    if result.amplitude == 0.0 or decrease < config.min_loss_decrease or not confirmed:
        return PairOutcome(None, 0.0, loss_before, loss_after, Reason.NO_LOSS_DECREASE)
    neurons.second_weight = neurons.second_weight * result.amplitude
    if pair.batch_norm is not None and not pair.batch_norm.track_running_stats:
        # The trials normalised with the measured statistics; this BatchNorm keeps none.
        neurons.bn_running_mean = neurons.bn_running_var = None
    return PairOutcome(neurons, result.amplitude, loss_before, loss_after, Reason.GROWN)


def _mean(losses: float | list[float]) -> float:
    return losses if isinstance(losses, float) else sum(losses) / max(len(losses), 1)


def paired_t(before: Sequence[float], after: Sequence[float]) -> float:
    """One-sample ``t`` of the paired decreases ``before_i - after_i`` (two or more pairs).

    ``±inf`` when every decrease is the same (the sign of the decrease decides).
    """
    if len(before) != len(after) or len(before) < 2:
        raise ValueError(f"need two or more paired losses, got {len(before)} and {len(after)}")
    differences = [b - a for b, a in zip(before, after, strict=True)]
    count = len(differences)
    mean = sum(differences) / count
    variance = sum((d - mean) ** 2 for d in differences) / (count - 1)
    if variance <= 0:
        return math.inf if mean > 0 else -math.inf
    return mean / math.sqrt(variance / count)
