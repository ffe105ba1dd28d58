"""Calibration of the sign-flip significance test (100 seeded trials per setting)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from scipy.stats import f as f_distribution
from test_tiny_reference import DTYPE, ConvSetup, linear_moments, random_conv_pair, with_bias

from lightning_grow.solver.moments import PairGeometry
from lightning_grow.solver.tiny import compute_candidates, noise_multiplier

TRIALS = 100


def _linear_trial(
    g: torch.Generator,
    *,
    d_in: int,
    hidden: int,
    d_v: int,
    n: int,
    signal: tuple[float, ...] = (),
    noise: str = "isotropic",
    activation=torch.tanh,
    spread_scales: bool = False,
):
    """One pair's moments: ``v = B x + noise`` with ``B`` of the given singular values.

    ``spread_scales`` gives the inputs scales from 0.01 to 100 (whitening must undo them).
    """
    X = torch.randn(n, d_in, generator=g, dtype=DTYPE)
    if spread_scales:
        X = X * torch.logspace(-2, 2, d_in, dtype=DTYPE)
    W1 = torch.randn(hidden, d_in, generator=g, dtype=DTYPE)
    H = activation(X @ W1.T)
    eps = torch.randn(n, d_v, generator=g, dtype=DTYPE)
    if noise == "one_direction":  # worst case: all residual noise along one output direction
        direction = torch.nn.functional.normalize(torch.randn(d_v, generator=g, dtype=DTYPE), dim=0)
        eps = eps[:, :1] * direction
    elif noise == "heteroscedastic":
        eps = eps * (0.2 + X[:, :1].abs())
    V = eps
    if signal:
        rank = len(signal)
        left = torch.linalg.qr(torch.randn(d_v, rank, generator=g, dtype=DTYPE)).Q
        right = torch.linalg.qr(torch.randn(d_in, rank, generator=g, dtype=DTYPE)).Q
        V = V + X @ right @ torch.diag(torch.tensor(signal, dtype=DTYPE)) @ left.T
    geometry = PairGeometry("linear", d_in, hidden, d_v, first_bias=True, second_bias=True)
    return linear_moments(with_bias(X), with_bias(H), V), geometry


NULL_SETTINGS = {
    "isotropic": dict(d_in=6, hidden=2, d_v=4, n=300),
    "one_direction": dict(d_in=3, hidden=2, d_v=3, n=300, noise="one_direction"),
    "heteroscedastic": dict(d_in=6, hidden=2, d_v=4, n=300, noise="heteroscedastic"),
    "wide_relu_hidden": dict(d_in=5, hidden=8, d_v=3, n=300, activation=torch.relu),
    "linear_hidden": dict(
        d_in=8, hidden=5, d_v=3, n=300, activation=lambda z: z, spread_scales=True
    ),
}


@pytest.mark.parametrize("name", list(NULL_SETTINGS))
def test_independent_targets_give_no_neuron(name: str) -> None:
    g = torch.Generator().manual_seed(list(NULL_SETTINGS).index(name))
    counts = [
        compute_candidates(*_linear_trial(g, **NULL_SETTINGS[name])).num_significant
        for _ in range(TRIALS)
    ]
    assert sum(count == 0 for count in counts) >= 95, counts


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_planted_rank_r_signal_gives_exactly_r_neurons(rank: int) -> None:
    g = torch.Generator().manual_seed(rank)
    signal = (1.0, 0.7, 0.5)[:rank]  # per-sample noise variance 6 against signal variance ≤ 1.74
    counts = [
        compute_candidates(
            *_linear_trial(g, d_in=16, hidden=3, d_v=6, n=2000, signal=signal)
        ).num_significant
        for _ in range(TRIALS)
    ]
    assert sum(count == rank for count in counts) >= 90, counts


def test_conv_pair_with_independent_gradients_gives_no_neuron() -> None:
    setup = ConvSetup(in_channels=2, hidden=2, out=2, size=4, kernel=(2, 2), pad=0)
    setup.second_kernel, setup.second_pad = (2, 2), 0
    counts = []
    for seed in range(TRIALS):
        moments, geometry, *_ = random_conv_pair(setup, "conv", n=30, seed=seed)
        counts.append(compute_candidates(moments, geometry).num_significant)
    assert sum(count == 0 for count in counts) >= 95, counts


def test_floor_is_an_unbiased_noise_reference() -> None:
    """Under the null λ₁ / floor has median ≈ 1, also when ΔW* used up most directions of x.

    Without the (I - A)^{1/2} correction the floor overstates the noise (median ≈ 0.47 here);
    without whitening it would follow the arbitrary input scales. The ridge makes the reference
    slightly conservative (median ≈ 0.96; 0.87 when the ridge was relative to the mean
    eigenvalue instead of each input's own scale, which the widely spread scales here punish).
    """
    g = torch.Generator().manual_seed(11)
    ratios = []
    for _ in range(TRIALS):
        candidates = compute_candidates(
            *_linear_trial(g, **NULL_SETTINGS["linear_hidden"]), significance_margin=0.0
        )
        ratios.append(float(candidates.singular_values[0]) / candidates.noise_level)
    assert 0.8 < statistics.median(ratios) < 1.2


def test_noise_level_shrinks_like_one_over_root_n() -> None:
    levels = {}
    for n in (400, 1600):
        g = torch.Generator().manual_seed(n)
        levels[n] = statistics.mean(
            compute_candidates(*_linear_trial(g, d_in=6, hidden=2, d_v=4, n=n)).noise_level
            for _ in range(30)
        )
    assert 1.8 < levels[400] / levels[1600] < 2.2


@pytest.mark.parametrize("d", [1, 2, 3, 5, 10, 30, 100])
def test_noise_multiplier_matches_the_worst_case_f_quantile(d: int) -> None:
    exact_95 = math.sqrt(f_distribution.ppf(0.95, d, d))
    assert abs(noise_multiplier(d, 1.6449) / exact_95 - 1) < 0.05
    if d >= 6:
        exact_99 = math.sqrt(f_distribution.ppf(0.99, d, d))
        assert abs(noise_multiplier(d, 2.3263) / exact_99 - 1) < 0.03
    assert noise_multiplier(d, 0.0) == 1.0


def test_margin_orders_the_number_of_significant_neurons() -> None:
    g = torch.Generator().manual_seed(12)
    moments, geometry = _linear_trial(g, d_in=16, hidden=3, d_v=6, n=500, signal=(1.0, 0.4, 0.2))
    counts = [
        compute_candidates(moments, geometry, significance_margin=z).num_significant
        for z in (0.0, 1.0, 2.33, 5.0, 50.0)
    ]
    assert counts == sorted(counts, reverse=True)
    assert counts[-1] == 0 and counts[0] >= 2
