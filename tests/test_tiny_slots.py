"""Conv→conv gains are on the same scale as linear ones: predicted Σλ² vs measured reduction.

With non-overlapping ``first`` patches on white-noise input, the hidden positions' inputs are
uncorrelated, so the cross-slot terms that MATH.md §5's approximation drops vanish in
expectation, and the per-slot average ``Sx / J`` makes the approximated objective exact. TINY's
predicted bottleneck reduction ``λ₁²`` must then match the reduction measured with real conv
layers (without the ``/J`` it would be off by a factor ``J = 9``).
"""

import torch
import torch.nn.functional as F
from torch import nn

from lightning_grow import GrowablePair, PairStatistics, compute_candidates


def test_conv_pair_predicted_reduction_matches_measured_reduction() -> None:
    torch.manual_seed(0)
    first = nn.Conv2d(2, 3, kernel_size=2, stride=2, bias=False).double()
    second = nn.Conv2d(3, 4, kernel_size=3, padding=1, bias=False).double()
    teacher = nn.Sequential(
        nn.Conv2d(2, 5, kernel_size=2, stride=2, bias=False),
        nn.Conv2d(5, 4, kernel_size=3, padding=1, bias=False),
    ).double()
    pair = GrowablePair("first", "second", first, second)
    statistics = PairStatistics(pair, dtype=torch.float64)

    inputs = torch.randn(4000, 2, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        targets = teacher(inputs)
    statistics.open()
    for batch in range(0, len(inputs), 500):
        x = inputs[batch : batch + 500]
        output = second(first(x))  # linear activation: exact first-order theory
        (0.5 * (output - targets[batch : batch + 500]).square().sum() / len(x)).backward()
    statistics.close()
    candidates = compute_candidates(statistics.moments(), pair.geometry(), max_neurons=1, damping=0)
    predicted = float(candidates.gain[0]) * candidates.v_sq

    # Measure on the same data: residual Ψ after the optimal update, and the new neuron's output.
    with torch.no_grad():
        hidden = first(inputs)
        desired = targets - second(hidden)  # v = -∂ℓ/∂z2 for this loss
        delta = candidates.delta_w.reshape(4, 3, 3, 3)
        residual = desired - F.conv2d(hidden, delta, padding=1)
        contribution = F.conv2d(
            F.conv2d(inputs, candidates.first_weight(1), stride=2),
            candidates.second_weight(1),
            padding=1,
        )
    n = len(inputs)
    inner = float((residual * contribution).sum()) / n
    measured_at_unit_amplitude = (
        float(residual.square().sum() - (residual - contribution).square().sum()) / n
    )
    best_possible = inner**2 / (float(contribution.square().sum()) / n)

    assert abs(measured_at_unit_amplitude - predicted) < 0.15 * predicted
    assert abs(best_possible - predicted) < 0.15 * predicted
