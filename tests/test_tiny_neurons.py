"""TINY, GradMax and random candidates of a linear pair, checked on the stacked samples."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_tiny_reference import DTYPE, linear_moments, with_bias

from lightning_grow.solver.moments import PairGeometry
from lightning_grow.solver.tiny import compute_candidates

D_IN, HIDDEN, D_V, N = 6, 3, 4, 120
GEOMETRY = PairGeometry("linear", D_IN, HIDDEN, D_V, first_bias=True, second_bias=True)


def _linear_pair(seed: int = 0, n: int = N):
    """A linear-activation pair (h = W1 x + b1) whose desired update is nonlinear in x."""
    g = torch.Generator().manual_seed(seed)
    X = with_bias(torch.randn(n, D_IN, generator=g, dtype=DTYPE))
    W1 = torch.randn(HIDDEN, D_IN + 1, generator=g, dtype=DTYPE)
    H = with_bias(X @ W1.T)
    V = torch.tanh(X @ torch.randn(D_IN + 1, D_V, generator=g, dtype=DTYPE))
    V = V + 0.3 * torch.randn(n, D_V, generator=g, dtype=DTYPE)
    return X, H, V


def _exact(moments, **kwargs):
    return compute_candidates(moments, GEOMETRY, damping=0.0, eig_cutoff=1e-12, **kwargs)


def _new_contribution(candidates, X, k: int):
    """Δz2 of the first ``k`` candidates applied as real Linear weights (identity activation)."""
    new_hidden = F.linear(X[:, :-1], candidates.first_weight(k), candidates.first_bias(k))
    return F.linear(new_hidden, candidates.second_weight(k))


def _mean_sq(values):
    return (values**2).sum(1).mean()


def test_neurons_reduce_the_bottleneck_by_exactly_the_sum_of_squared_singular_values() -> None:
    X, H, V = _linear_pair()
    candidates = _exact(linear_moments(X, H, V))
    residual = V - H @ candidates.delta_w.T
    torch.testing.assert_close(torch.tensor(candidates.bottleneck, dtype=DTYPE), _mean_sq(residual))
    torch.testing.assert_close(torch.tensor(candidates.v_sq, dtype=DTYPE), _mean_sq(V))
    for k in (1, 2, 3):
        reduction = _mean_sq(residual) - _mean_sq(residual - _new_contribution(candidates, X, k))
        torch.testing.assert_close(reduction, (candidates.singular_values[:k] ** 2).sum())
        torch.testing.assert_close(candidates.gain[k - 1], reduction / _mean_sq(V))
    assert torch.all(candidates.singular_values[:-1] >= candidates.singular_values[1:])


@pytest.mark.parametrize("k", [1, 2, 3])
def test_tiny_beats_random_rank_k_neurons_at_their_best_amplitude(k: int) -> None:
    X, H, V = _linear_pair(seed=1)
    candidates = _exact(linear_moments(X, H, V))
    residual = V - H @ candidates.delta_w.T
    tiny_objective = _mean_sq(residual - _new_contribution(candidates, X, k))
    g = torch.Generator().manual_seed(100 + k)
    alpha_norm, omega_norm = candidates.alpha[:k].norm(), candidates.omega[:, :k].norm()
    for _ in range(100):
        alpha = torch.randn(k, D_IN + 1, generator=g, dtype=DTYPE)
        omega = torch.randn(D_V, k, generator=g, dtype=DTYPE)
        alpha, omega = alpha * alpha_norm / alpha.norm(), omega * omega_norm / omega.norm()
        change = (X @ alpha.T) @ omega.T
        assert tiny_objective < _mean_sq(residual - change)
        # Even rescaled to its own best amplitude a random rank-k update is no better.
        best = _mean_sq(residual) - (residual * change).sum(1).mean() ** 2 / _mean_sq(change)
        assert tiny_objective <= best + 1e-12
    # Small perturbations of TINY's own neurons only make things worse (it is the optimum).
    for _ in range(20):
        alpha = candidates.alpha[:k] + 1e-3 * torch.randn(k, D_IN + 1, generator=g, dtype=DTYPE)
        omega = candidates.omega[:, :k] + 1e-3 * torch.randn(D_V, k, generator=g, dtype=DTYPE)
        assert tiny_objective <= _mean_sq(residual - (X @ alpha.T) @ omega.T)


def test_all_singular_values_together_explain_at_most_the_bottleneck() -> None:
    X, H, V = _linear_pair(seed=2)
    candidates = _exact(linear_moments(X, H, V))
    assert (candidates.singular_values**2).sum() <= candidates.bottleneck + 1e-12
    assert candidates.gain[-1] <= candidates.bottleneck / candidates.v_sq + 1e-12


@pytest.mark.parametrize("method", ["tiny", "gradmax", "random"])
def test_first_order_decrease_is_the_measured_linearised_decrease(method: str) -> None:
    X, H, V = _linear_pair(seed=3)
    slope = 0.5
    candidates = compute_candidates(
        linear_moments(X, H, V), GEOMETRY, method=method, activation_slope=slope
    )
    for k in range(1, candidates.max_neurons + 1):
        measured = slope * (V * _new_contribution(candidates, X, k)).sum(1).mean()
        torch.testing.assert_close(candidates.first_order_decrease[k - 1], measured)
    if method == "tiny":
        assert torch.all(candidates.first_order_decrease > 0)
    else:  # function-preserving: α = 0 or ω = 0
        assert torch.all(candidates.first_order_decrease == 0)


def test_gradmax_omega_spans_the_top_left_singular_subspace_of_e_v_x() -> None:
    X, H, V = _linear_pair(seed=4)
    moments = linear_moments(X, H, V)
    tiny = compute_candidates(moments, GEOMETRY)
    gradmax = compute_candidates(moments, GEOMETRY, method="gradmax")
    assert torch.all(gradmax.alpha == 0)
    e_vx = V.T @ X / N  # (d_v, d_x), from the samples
    eigenvalues, eigenvectors = torch.linalg.eigh(e_vx @ e_vx.T)
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    for k in (1, 2, 3):
        top = eigenvectors[:, :k]
        omega = gradmax.omega[:, :k]
        basis = torch.linalg.qr(omega).Q
        torch.testing.assert_close(basis @ basis.T, top @ top.T)
    # Documented scale: ‖ω_k‖² is the k-th singular value of E[v xᵀ]; columns are orthogonal.
    gram = gradmax.omega.T @ gradmax.omega
    torch.testing.assert_close(gram, torch.diag(eigenvalues[: gram.shape[0]].sqrt()))
    # Where and how many stay TINY's decision.
    torch.testing.assert_close(gradmax.singular_values, tiny.singular_values)
    torch.testing.assert_close(gradmax.gain, tiny.gain)
    assert gradmax.num_significant == tiny.num_significant
    assert gradmax.noise_level == tiny.noise_level


def test_random_candidates_are_seeded_kaiming_with_zero_output() -> None:
    in_features = 10
    geometry = PairGeometry("linear", in_features, 3, 20, first_bias=True, second_bias=True)
    g = torch.Generator().manual_seed(5)
    X = with_bias(torch.randn(50, in_features, generator=g, dtype=DTYPE))
    H = with_bias(torch.randn(50, 3, generator=g, dtype=DTYPE))
    V = torch.randn(50, 20, generator=g, dtype=DTYPE)
    moments = linear_moments(X, H, V)
    first = compute_candidates(moments, geometry, method="random", seed=7)
    again = compute_candidates(moments, geometry, method="random", seed=7)
    other = compute_candidates(moments, geometry, method="random", seed=8)
    tiny = compute_candidates(moments, geometry)
    torch.testing.assert_close(first.alpha, again.alpha, rtol=0, atol=0)
    assert not torch.allclose(first.alpha, other.alpha)
    assert torch.all(first.omega == 0)
    torch.testing.assert_close(first.singular_values, tiny.singular_values)
    assert first.num_significant == tiny.num_significant
    # Kaiming normal: std √(2 / fan_in), fan-in WITHOUT the bias (√(2/11) would be 4.7 % off).
    pooled = torch.cat(
        [
            compute_candidates(moments, geometry, method="random", seed=seed).alpha
            for seed in range(100)
        ]
    )
    assert torch.all(pooled[:, -1] == 0)  # bias entry
    weights = pooled[:, :-1]
    expected_std = math.sqrt(2.0 / in_features)
    assert abs(weights.std().item() / expected_std - 1) < 0.02  # ~11,000 draws: 0.7 % noise
    assert abs(weights.mean().item()) < 4 * expected_std / math.sqrt(weights.numel())


def test_max_neurons_is_clipped_and_counts_are_checked() -> None:
    X, H, V = _linear_pair(seed=6)
    moments = linear_moments(X, H, V)
    two = compute_candidates(moments, GEOMETRY, max_neurons=2)
    assert two.alpha.shape == (2, D_IN + 1) and two.omega.shape == (D_V, 2)
    assert two.singular_values.shape == (2,) and two.gain.shape == (2,)
    many = compute_candidates(moments, GEOMETRY, max_neurons=100)
    assert many.max_neurons == min(D_IN + 1, D_V)
    torch.testing.assert_close(many.singular_values[:2], two.singular_values)
    with pytest.raises(ValueError, match="asked for 3"):
        two.first_weight(3)
    assert two.first_weight(0).shape == (0, D_IN)
    assert two.second_weight(2).shape == (D_V, 2)
    assert two.first_bias(2).shape == (2,)


def test_candidates_are_reproducible_with_canonical_signs() -> None:
    X, H, V = _linear_pair(seed=7)
    moments = linear_moments(X, H, V)
    first = compute_candidates(moments, GEOMETRY)
    flipped = compute_candidates(moments.to(dtype=torch.float32), GEOMETRY)
    largest = first.omega.abs().argmax(0)
    assert torch.all(first.omega[largest, torch.arange(first.max_neurons)] > 0)
    # The same neurons (not sign-flipped ones) come out of a float32 copy.
    torch.testing.assert_close(flipped.alpha, first.alpha, rtol=1e-3, atol=1e-4)
