"""Size of new units' pre-activations: tanh's own scale, or the existing units' behind ReLU.

A tanh network grown from PyTorch's default init (pre-activation RMS ~0.4 for unit-variance
inputs) got new units matched to that small size: they stayed in tanh's linear range and the
teacher–student students under-fitted (``GrowthCallback.preactivation_rms``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_grow.decision.amplitude import scale_free
from lightning_grow.decision.planner import prepare_tiny
from lightning_grow.surgery.widen import NewNeurons
from lightning_grow.topology.pairs import find_growable_pairs

F64 = torch.float64


class _Functional(nn.Module):
    """Linear → ``activation`` (a function) → Linear, traced as one pair."""

    def __init__(self, activation) -> None:
        super().__init__()
        self.fc1, self.fc2, self.activation = nn.Linear(4, 3), nn.Linear(3, 2), activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


@pytest.mark.parametrize(
    ("activation", "expected"),
    [
        (nn.ReLU(), True),
        (nn.ReLU(inplace=True), True),
        (nn.LeakyReLU(0.1), True),
        (nn.Identity(), True),
        (nn.Dropout(0.5), True),
        (nn.Tanh(), False),
        (nn.GELU(), False),
        (nn.Sigmoid(), False),
        (nn.SiLU(), False),
        (nn.ReLU6(), False),  # homogeneous below 6 only: the probe reaches past the cap
    ],
)
def test_only_positively_homogeneous_activations_are_scale_free(activation, expected) -> None:
    net = nn.Sequential(nn.Linear(4, 3), activation, nn.Linear(3, 2))
    assert scale_free(find_growable_pairs(net)[0]) is expected


@pytest.mark.parametrize(("function", "expected"), [(F.relu, True), (torch.tanh, False)])
def test_functional_activations_are_probed_too(function, expected) -> None:
    assert scale_free(find_growable_pairs(_Functional(function))[0]) is expected


def _prepared(activation: nn.Module, unit_rms: float | None):
    """Two candidate units prepared on a network whose units have small pre-activations."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), activation, nn.Linear(3, 2)).to(F64)
    with torch.no_grad():
        net[0].weight.mul_(0.1)  # existing pre-activations well inside tanh's linear range
        net[0].bias.mul_(0.1)
    pair = find_growable_pairs(net)[0]
    neurons = NewNeurons(
        torch.randn(2, 4, dtype=F64), torch.randn(2, dtype=F64), torch.randn(2, 2, dtype=F64)
    )
    before = neurons.second_weight[:, :, None] * neurons.first_weight[None]  # ω_k α_kᵀ
    x = torch.randn(64, 4, dtype=F64)
    with torch.no_grad():
        prepare_tiny(pair, neurons, lambda: float(net(x).sum()), unit_rms)
        existing = net[0](x).square().mean(0).sqrt().median()
    z_new = x @ neurons.first_weight.T + neurons.first_bias
    after = neurons.second_weight[:, :, None] * neurons.first_weight[None]
    return z_new.square().mean(0).sqrt(), float(existing), before, after


def test_new_tanh_units_get_the_activations_scale_and_keep_the_first_order_step() -> None:
    rms, existing, before, after = _prepared(nn.Tanh(), 1.0)
    assert existing < 0.2  # the scale that matching would have copied
    torch.testing.assert_close(rms, torch.ones(2, dtype=F64))
    # Input × f, output × 1/f: the linearised contribution ω_k α_kᵀ is unchanged.
    torch.testing.assert_close(after, before)


@pytest.mark.parametrize(("activation", "unit_rms"), [(nn.ReLU(), 1.0), (nn.Tanh(), None)])
def test_new_units_match_the_existing_ones_behind_relu_or_when_switched_off(
    activation, unit_rms
) -> None:
    rms, existing, before, after = _prepared(activation, unit_rms)
    torch.testing.assert_close(rms, torch.full((2,), existing, dtype=F64))
    torch.testing.assert_close(after, before)


def test_the_callback_hands_the_option_to_the_decisions() -> None:
    from lightning_grow import GrowthCallback

    assert GrowthCallback().config.preactivation_rms == 1.0
    assert GrowthCallback(preactivation_rms=0.5).config.preactivation_rms == 0.5
    assert GrowthCallback(preactivation_rms=None).config.preactivation_rms is None
