"""First-order fidelity (issue 9, section 5): predicted vs measured loss decrease as γ → 0.

A digits MLP ``64-16-16-10`` is trained (plain loop, protocol settings). Its last pair
``fc2 → σ → head`` gets the TINY candidates of ``lightning_grow.solver.tiny.compute_candidates`` on
exact moments of the whole training set (built in :mod:`benchmarks.pair_math`). With amplitude γ
both α and ω are scaled by √γ, so the head's output changes by ``√γ Σ_k ω_k σ(√γ α_kᵀ x)``.
The measured decrease ``L(0) - L(γ)`` (float64, same samples as the moments) is compared with

* the library's linearised prediction ``γ · first_order_decrease`` (``σ'(0) Σ α_kᵀ Mx ω_k``,
  exact first order for a smooth σ), and
* the paper's ``γ σ'(0) Σ λ_k²``, which neglects the cross term ``α_kᵀ P ΔW*ᵀ ω_k`` (they agree
  when the head is at a stationary point, ``M = 0``).

For tanh both ratios must tend to 1 (up to that cross term for the second) with an ``O(γ)``
error. For ReLU ``σ(√γ a) = √γ σ(a)`` exactly, so the change is exactly linear in γ and the ratio
is constant: ``E[vᵀ ω relu(αᵀx)] / E[vᵀ ω αᵀx]``, not 1; the linearisation at 0 does not hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmarks.common import seed_everything
from benchmarks.digits import DigitsProtocol, DigitsSplit, build_mlp, train_plain
from benchmarks.pair_math import linear_geometry, moments_from_samples, pair_loss, pair_samples

__all__ = ["FidelityResult", "measure_fidelity"]

AMPLITUDES = tuple(2.0**-k for k in range(0, 25, 2))


@dataclass
class FidelityResult:
    """Predicted and measured decreases on a γ grid for one activation.

    Attributes
    ----------
    activation
        ``"tanh"`` or ``"relu"``.
    neurons
        Number of candidate neurons added (the leading ones).
    amplitudes
        The γ grid, decreasing.
    measured
        ``L(0) - L(γ)`` for each γ.
    predicted_first_order
        ``γ · σ'(0) Σ α_kᵀ Mx ω_k`` (the library's ``first_order_decrease``).
    predicted_lambda
        ``γ · σ'(0) Σ λ_k²`` (the paper's formula).
    """

    activation: str
    neurons: int
    amplitudes: list[float]
    measured: list[float]
    predicted_first_order: list[float]
    predicted_lambda: list[float]

    @property
    def ratio_first_order(self) -> list[float]:
        """measured / predicted (library)."""
        return [m / p for m, p in zip(self.measured, self.predicted_first_order)]

    @property
    def ratio_lambda(self) -> list[float]:
        """measured / predicted (Σλ²)."""
        return [m / p for m, p in zip(self.measured, self.predicted_lambda)]


def measure_fidelity(
    split: DigitsSplit,
    activation: str = "tanh",
    neurons: int = 4,
    seed: int = 0,
    epochs: int = 60,
    hidden: int = 16,
    amplitudes: tuple[float, ...] = AMPLITUDES,
) -> FidelityResult:
    """Train the MLP, compute TINY candidates for ``fc2 → head`` and measure along γ.

    Parameters
    ----------
    split
        The digits protocol split (training set: moments and measurement).
    activation
        ``"tanh"`` or ``"relu"`` (the MLP's activation).
    neurons
        Leading candidates to add.
    seed
        Seed of the MLP's initialisation and data order.
    epochs
        Training epochs before the measurement.
    hidden
        Width of both hidden layers.
    amplitudes
        γ grid.

    Returns
    -------
    FidelityResult
    """
    from lightning_grow.solver.tiny import compute_candidates

    seed_everything(seed)
    model = build_mlp((hidden, hidden), activation)
    protocol = DigitsProtocol(epochs=epochs)
    train_plain(
        model,
        split.train_inputs,
        split.train_labels,
        seed=seed,
        epochs=epochs,
        batch_size=protocol.batch_size,
        learning_rate=protocol.learning_rate,
    )
    model.eval()
    labels = split.train_labels
    with torch.no_grad():
        # The pair's input: everything before fc2 (float32 as trained), then float64 throughout.
        features = model.act1(model.fc1(split.train_inputs)).double()
    first, sigma, second = model.fc2, model.act2, model.head
    samples = pair_samples(first, sigma, second, features, labels)
    candidates = compute_candidates(
        moments_from_samples(samples),
        linear_geometry(first, second),
        max_neurons=neurons,
        activation_slope=1.0,  # tanh'(0) = 1; ReLU's one-sided derivative is 1 as well
    )
    alpha, omega = candidates.alpha[:neurons], candidates.omega[:, :neurons]
    predicted_unit = float(candidates.first_order_decrease[neurons - 1])
    lambda_unit = float(candidates.singular_values[:neurons].square().sum())

    weight1, bias1 = first.weight.detach().double(), first.bias.detach().double()
    weight2, bias2 = second.weight.detach().double(), second.bias.detach().double()

    def loss_at(amplitude: float) -> float:
        hidden_out = sigma(features @ weight1.T + bias1)
        outputs = hidden_out @ weight2.T + bias2
        if amplitude > 0:
            root = amplitude**0.5
            new_units = sigma(root * samples.x @ alpha.T)
            outputs = outputs + root * new_units @ omega.T
        return float(pair_loss(outputs, labels, "cross_entropy"))

    with torch.no_grad():
        base = loss_at(0.0)
        measured = [base - loss_at(gamma) for gamma in amplitudes]
    return FidelityResult(
        activation=activation,
        neurons=neurons,
        amplitudes=list(amplitudes),
        measured=measured,
        predicted_first_order=[gamma * predicted_unit for gamma in amplitudes],
        predicted_lambda=[gamma * lambda_unit for gamma in amplitudes],
    )
