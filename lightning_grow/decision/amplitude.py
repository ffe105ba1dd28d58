"""Try candidate neurons without surgery, scale them, and line-search their amplitude.

The first-order theory (docs/math.md §4) fixes the directions of new neurons but not how far to go.
Following the authors (docs/math.md §8), candidates are (a) rescaled so their pre-activations have
the size of the existing ones, or ``preactivation_rms`` behind an activation whose shape depends
on that size (with BatchNorm the scale lives in the output weights), (b) tried with both signs,
and (c) given the amplitude γ from a doubling grid that minimises the loss on held-out training
samples.

Candidates are injected with forward hooks on ``first`` and ``second``: the new units' output is
computed from ``first``'s input and added to ``second``'s output, so trials cost forward passes
only and leave the model untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_grow.layers import OpKind, norm_handler, replay_op
from lightning_grow.surgery._carried import identity_entries
from lightning_grow.surgery.widen import NewNeurons
from lightning_grow.topology.pairs import GrowablePair

__all__ = [
    "AmplitudeResult",
    "NewNeurons",
    "inject",
    "measure_activity",
    "measure_carried_norms",
    "scale_free",
    "scale_neurons",
    "search_amplitude",
]

#: Pre-activations on which :func:`scale_free` tests the activations: both signs, past ReLU6's cap.
_PROBE = torch.linspace(-8.0, 8.0, 33, dtype=torch.float64).view(1, -1)


def scale_free(pair: GrowablePair) -> bool:
    """Whether every activation between ``first`` and ``second`` is positively homogeneous.

    ``σ(c·z) = c·σ(z)`` for ``c > 0`` (ReLU, LeakyReLU, no activation): a unit's pre-activation
    size is then only a split of its weight between input and output, not a change of what the
    unit computes. Behind tanh, sigmoid, GELU, SiLU or ReLU6 it is: a unit whose pre-activations
    stay well below 1 lives in the activation's linear (or, for GELU, quadratic) range. Tested on
    a probe, so it holds for every activation that discovery accepts.
    """
    for hidden in pair.between:
        if hidden.kind is not OpKind.ACTIVATION:
            continue
        doubled = replay_op(hidden.kind, hidden.op, 2.0 * _PROBE.clone())
        once = replay_op(hidden.kind, hidden.op, _PROBE.clone())
        if not torch.allclose(doubled, 2.0 * once, rtol=1e-9, atol=1e-12):
            return False
    return True


def scale_neurons(
    neurons: NewNeurons, input_scale: Tensor, output_scale: Tensor | float = 1.0
) -> None:
    """Multiply neuron k's input weights by ``input_scale[k]`` and its output weights by
    ``output_scale`` (a scalar or one factor per neuron), in place."""
    count = neurons.num_neurons
    if input_scale.numel() != count:
        # A broadcast here would silently add or drop units (a per-token scale once did).
        raise ValueError(f"input_scale has {input_scale.numel()} factors for {count} neurons")
    shape = (-1,) + (1,) * (neurons.first_weight.dim() - 1)
    neurons.first_weight = neurons.first_weight * input_scale.view(shape)
    if neurons.first_bias is not None:
        neurons.first_bias = neurons.first_bias * input_scale
    neurons.second_weight = neurons.second_weight * _per_neuron_columns(
        output_scale, neurons.second_weight, count
    )


def _per_neuron_columns(scale: Tensor | float, second_weight: Tensor, k: int) -> Tensor | float:
    """Broadcast a per-neuron factor onto ``second``'s new columns (K·J columns for conv→linear)."""
    if not isinstance(scale, Tensor):
        return scale
    if second_weight.dim() > 2:  # (C_out, K, kh, kw) or a Conv1d's (C_out, K, k)
        return scale.view(1, k, *([1] * (second_weight.dim() - 2)))
    slots = second_weight.shape[1] // k
    return scale.repeat_interleave(slots).view(1, -1)


def _apply_between(
    pair: GrowablePair, z: Tensor, neurons: NewNeurons, taps: dict[str, _Moments] | None = None
) -> Tensor:
    """The ops between ``first`` and ``second``, for the new units only, in eval semantics.

    Each op is replayed by the kind discovery gave it (never by its name): a norm with the new
    units' own entries, dropout and identity not at all, a flatten as ``flatten(1)``.
    """
    for hidden in pair.between:
        if hidden.kind is OpKind.BATCH_NORM:
            bn = hidden.op
            norm = norm_handler(bn)
            assert isinstance(bn, nn.Module) and norm is not None
            if bn is pair.batch_norm:
                entries = {
                    "weight": neurons.bn_weight,
                    "bias": neurons.bn_bias,
                    "running_mean": neurons.bn_running_mean,
                    "running_var": neurons.bn_running_var,
                }
            else:
                # A norm after a depthwise conv: the entries surgery will give it.
                if taps is not None:
                    taps.setdefault(hidden.name, _Moments()).add(z, pair.first_handler.channel_dim)
                measured = neurons.carried_norms.get(hidden.name)
                entries = {} if measured is None else identity_entries(bn, *measured) or {}
            z = norm.replay(
                bn,
                z,
                entries.get("weight"),
                entries.get("bias"),
                entries.get("running_mean"),
                entries.get("running_var"),
            )
        else:
            z = replay_op(hidden.kind, hidden.op, z)
    if pair.flatten and z.dim() > 2:
        z = z.flatten(1)
    return z


def _first_forward(pair: GrowablePair, x: Tensor, neurons: NewNeurons) -> Tensor:
    weight = neurons.first_weight.to(x.dtype)
    bias = None if neurons.first_bias is None else neurons.first_bias.to(x.dtype)
    return pair.first_handler.forward(pair.first, x, weight, bias)


def _second_forward(pair: GrowablePair, h: Tensor, weight: Tensor) -> Tensor:
    return pair.second_handler.forward(pair.second, h, weight.to(h.dtype), None)


@dataclass
class _Moments:
    """Per-unit sum and sum of squares of new units' values at one op's input."""

    total: Tensor | float = 0.0
    squares: Tensor | float = 0.0
    count: int = 0

    def add(self, z: Tensor, channel_dim: int) -> None:
        z = z.double().movedim(channel_dim, -1).reshape(-1, z.shape[channel_dim])
        self.total = self.total + z.sum(0)
        self.squares = self.squares + z.square().sum(0)
        self.count += z.shape[0]

    def mean_var(self) -> tuple[Tensor, Tensor]:
        """Mean and (biased, as BatchNorm's) variance per unit."""
        n = max(self.count, 1)
        mean = torch.as_tensor(self.total) / n
        return mean, (torch.as_tensor(self.squares) / n - mean.square()).clamp_min(0.0)


@dataclass
class _Capture:
    """Per-unit sums of the new and existing pre-activations seen during an injection."""

    new_sum: Tensor | None = None
    new_sq: Tensor | None = None
    old_sq: Tensor | None = None
    count: int = 0

    def add(self, z_new: Tensor, z_old: Tensor, channel_dim: int) -> None:
        """Add one batch; every position but ``channel_dim`` (batch, tokens, pixels) is a row."""
        z_new = z_new.double().movedim(channel_dim, -1).reshape(-1, z_new.shape[channel_dim])
        z_old = z_old.double().movedim(channel_dim, -1).reshape(-1, z_old.shape[channel_dim])
        count = z_new.shape[0]
        new_sum = z_new.sum(0)
        new_sq = z_new.square().sum(0)
        old_sq = z_old.square().sum(0)
        if self.new_sum is None:
            self.new_sum, self.new_sq, self.old_sq = new_sum, new_sq, old_sq
        else:
            self.new_sum += new_sum
            self.new_sq += new_sq
            self.old_sq += old_sq  # type: ignore[operator]
        self.count += count


@contextmanager
def inject(
    pair: GrowablePair,
    neurons: NewNeurons,
    scale: float = 1.0,
    capture: _Capture | None = None,
    taps: dict[str, _Moments] | None = None,
) -> Iterator[Callable[[float], None]]:
    """Add ``scale ×`` the new neurons' output to ``second``'s output while the context is open.

    Yields a setter for the scale so one injection serves a whole line search.
    """
    state = {"scale": scale}
    pending: list[Tensor] = []

    def on_first(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        z_new = _first_forward(pair, inputs[0], neurons)
        if capture is not None:
            capture.add(z_new, output, pair.first_handler.channel_dim)
        pending.append(_apply_between(pair, z_new, neurons, taps))

    def on_second(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        h_new = pending.pop(0)
        if state["scale"] == 0.0:
            return output
        return output + state["scale"] * _second_forward(pair, h_new, neurons.second_weight)

    handles = [
        pair.first.register_forward_hook(on_first),
        pair.second.register_forward_hook(on_second),
    ]

    def set_scale(value: float) -> None:
        state["scale"] = value

    try:
        yield set_scale
    finally:
        for handle in handles:
            handle.remove()


def measure_activity(
    pair: GrowablePair, neurons: NewNeurons, evaluate: Callable[[], float]
) -> tuple[float, Tensor, Tensor, Tensor]:
    """Run ``evaluate`` once with the candidates injected at scale 0.

    Returns the baseline loss, the median RMS of the existing units' pre-activations, and the new
    units' pre-activation mean and variance (one per neuron).
    """
    capture = _Capture()
    with inject(pair, neurons, scale=0.0, capture=capture):
        base_loss = evaluate()
    assert capture.new_sum is not None and capture.new_sq is not None
    assert capture.old_sq is not None
    n = max(capture.count, 1)
    mean = capture.new_sum / n
    var = (capture.new_sq / n - mean.square()).clamp_min(0.0)
    existing_rms = float((capture.old_sq / n).sqrt().median())
    return base_loss, torch.tensor(existing_rms), mean, var


def measure_carried_norms(
    pair: GrowablePair, neurons: NewNeurons, evaluate: Callable[[], float]
) -> dict[str, tuple[Tensor, Tensor]]:
    """The new units' mean and variance at the input of each BatchNorm after a depthwise conv
    (one ``evaluate`` at scale 0, with the pair's own norm entries as set); empty when none.

    Surgery turns them into entries that make those norms the identity for the new units in
    eval mode and about so in train mode (docs/math.md §1).
    """
    carried = [
        hidden
        for hidden in pair.between
        if hidden.kind is OpKind.BATCH_NORM and hidden.op is not pair.batch_norm
    ]
    if not carried:
        return {}
    taps: dict[str, _Moments] = {}
    with inject(pair, neurons, scale=0.0, taps=taps):
        evaluate()
    like = {"dtype": neurons.first_weight.dtype, "device": neurons.first_weight.device}
    measured = {}
    for name, moments in taps.items():
        mean, var = moments.mean_var()
        measured[name] = (mean.to(**like), var.to(**like))
    return measured


@dataclass
class AmplitudeResult:
    """Outcome of a line search: the best signed amplitude and the losses around it."""

    amplitude: float
    loss_before: float
    loss_after: float
    evaluations: int


def search_amplitude(
    loss_at: Callable[[float], float],
    loss_before: float,
    *,
    gamma_min: float = 2.0**-12,
    gamma_max: float = 64.0,
    start: float = 1.0,
    required_loss: float | None = None,
    signs: tuple[float, ...] = (1.0, -1.0),
) -> AmplitudeResult:
    """Line search of the signed amplitude on a doubling grid, keeping the best loss.

    Candidates arrive scaled so that ``γ = 1`` is the first-order step, so the search starts
    there and walks the grid ``{2^k}`` up (while the loss keeps improving) or down (when
    ``γ = 1`` overshoots), assuming the loss is unimodal in ``γ``. ``signs`` are tried in
    order, the next only when the previous one finds no improvement (first-order theory makes
    ``+`` the descent direction; the callback tries ``-`` only with ``negative_amplitudes``).
    Non-finite losses count as worse. The amplitude is 0.0 only when nothing beat
    ``loss_before``.

    ``required_loss`` (the loss a candidate must reach to be accepted) prunes hopeless walks
    down: with ``L`` convex in ``γ``, once ``L(γ/2) < L(γ)`` every smaller amplitude has
    ``L ≥ 2 L(γ/2) − L(γ)`` (the chord through both points extended towards 0). When that bound
    is already above ``required_loss``, the walk stops: it could not change the decision, and on
    a large network each evaluation is a forward pass over the held batches (a rejected pair
    walked 12 halvings per sign, ~28 evaluations, where the bound stops it after ~4).
    """
    evaluations = 0

    def evaluate(amplitude: float) -> float:
        nonlocal evaluations
        evaluations += 1
        loss = loss_at(amplitude)
        return loss if math.isfinite(loss) else math.inf

    for sign in signs:
        gamma = min(max(start, gamma_min), gamma_max)
        loss = evaluate(sign * gamma)
        up = evaluate(sign * gamma * 2.0) if gamma * 2.0 <= gamma_max else math.inf
        step = 2.0 if up < loss else 0.5
        previous = up  # the loss one grid point further from 0 than `gamma` (walking down)
        if up < loss:
            gamma, loss = gamma * 2.0, up
        while gamma_min <= gamma * step <= gamma_max:
            if step < 1.0 and required_loss is not None and 2.0 * loss - previous > required_loss:
                break  # no smaller amplitude can reach the required loss (docstring)
            candidate = evaluate(sign * gamma * step)
            if candidate >= loss:
                break
            previous = loss
            gamma, loss = gamma * step, candidate
        if loss < loss_before:
            return AmplitudeResult(sign * gamma, loss_before, loss, evaluations)
    return AmplitudeResult(0.0, loss_before, loss_before, evaluations)
