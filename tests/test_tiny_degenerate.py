"""Degenerate statistics: inputs on a large scale, too few samples, and solves that fail."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_tiny_reference import DTYPE, ConvSetup, linear_moments, random_conv_pair, with_bias

import lightning_grow.solver.linalg as linalg_module
from lightning_grow.solver.linalg import SolveError, pseudo_inverse_psd
from lightning_grow.solver.moments import PairGeometry
from lightning_grow.solver.tiny import compute_candidates

RUNS = 20
CALLBACK_MARGIN = 1.0  # GrowthCallback's default significance_margin


def _scaled_trial(
    seed: int,
    scale: float,
    *,
    n: int = 300,
    d_in: int = 6,
    hidden: int = 4,
    d_v: int = 3,
    signal: tuple[float, ...] = (),
):
    """``x`` at ``scale`` (its bias entry stays 1), ReLU hidden units, ``v`` = noise with a mean.

    The mean of ``v`` is what only the bias column of ``second`` can fit: when a solve loses the
    bias direction, that mean is left in ``E[x Ψᵀ]`` and looks like a bottleneck. Returns float32
    moments, as the statistics deliver them.
    """
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d_in, generator=g, dtype=DTYPE)
    W1 = torch.randn(hidden, d_in, generator=g, dtype=DTYPE)
    H = torch.relu(X @ W1.T)
    V = torch.randn(n, d_v, generator=g, dtype=DTYPE) + 0.5
    if signal:
        rank = len(signal)
        left = torch.linalg.qr(torch.randn(d_v, rank, generator=g, dtype=DTYPE)).Q
        right = torch.linalg.qr(torch.randn(d_in, rank, generator=g, dtype=DTYPE)).Q
        V = V + X @ right @ torch.diag(torch.tensor(signal, dtype=DTYPE)) @ left.T
    moments = linear_moments(with_bias(X * scale), with_bias(H * scale), V)
    geometry = PairGeometry("linear", d_in, hidden, d_v, first_bias=True, second_bias=True)
    return moments.to(dtype=torch.float32), geometry


# ---------------------------------------------------------------------------------------------
# Inputs on a large scale


@pytest.mark.parametrize("scale", [1e4, 1e5, 1e6])
def test_noise_at_a_large_input_scale_is_not_significant(scale: float) -> None:
    counts = [
        compute_candidates(
            *_scaled_trial(seed, scale), significance_margin=CALLBACK_MARGIN
        ).num_significant
        for seed in range(RUNS)
    ]
    assert counts == [0] * RUNS


@pytest.mark.parametrize("scale", [1e4, 1e5, 1e6])
def test_planted_signal_at_a_large_input_scale_is_found(scale: float) -> None:
    # One hidden unit cannot absorb the planted rank-2 linear map: it stays a bottleneck.
    counts = [
        compute_candidates(
            *_scaled_trial(seed, scale, n=1000, hidden=1, signal=(1.0, 0.7))
        ).num_significant
        for seed in range(RUNS)
    ]
    assert sum(count == 2 for count in counts) >= RUNS - 1, counts


def test_candidates_do_not_depend_on_the_input_scale() -> None:
    """Scaling x and h by c scales α by 1/c and leaves λ, the threshold and ω unchanged.

    (From 1e3 on, the bias entry is far off the features' scale at both ends: see linalg.)
    """
    options = {"n": 1000, "hidden": 1, "signal": (1.0,)}
    reference = compute_candidates(*_scaled_trial(0, 1e3, **options))
    scaled = compute_candidates(*_scaled_trial(0, 1e5, **options))
    assert scaled.num_significant == reference.num_significant == 1
    tolerance = {"rtol": 1e-4, "atol": 1e-6}  # float32 moments
    torch.testing.assert_close(scaled.singular_values, reference.singular_values, **tolerance)
    assert abs(scaled.noise_level / reference.noise_level - 1) < 1e-4
    torch.testing.assert_close(scaled.omega, reference.omega, **tolerance)
    unscaled_alpha = scaled.alpha.clone()
    unscaled_alpha[:, :-1] *= 1e2  # the bias entry of x is not scaled
    torch.testing.assert_close(unscaled_alpha, reference.alpha, **tolerance)


# ---------------------------------------------------------------------------------------------
# Too few samples


def _null_linear(seed: int, n: int, d_in: int = 6):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d_in, generator=g, dtype=DTYPE)
    H = torch.tanh(X @ torch.randn(2, d_in, generator=g, dtype=DTYPE).T)
    V = torch.randn(n, 3, generator=g, dtype=DTYPE)
    geometry = PairGeometry("linear", d_in, 2, 3, first_bias=True, second_bias=True)
    return linear_moments(with_bias(X), with_bias(H), V), geometry


@pytest.mark.parametrize("kind", ["linear", "conv", "conv_linear"])
def test_a_single_sample_is_never_significant(kind: str) -> None:
    setup = ConvSetup(in_channels=2, hidden=2, out=2, size=4, kernel=(2, 2), pad=0)
    setup.second_kernel, setup.second_pad = (2, 2), 0
    for seed in range(RUNS):
        if kind == "linear":
            moments, geometry = _null_linear(seed, n=1)
        else:
            moments, geometry, *_ = random_conv_pair(setup, kind, n=1, seed=seed)
        # Even the most permissive margin: one sample is no evidence of anything.
        assert compute_candidates(moments, geometry, significance_margin=0.0).num_significant == 0


@pytest.mark.parametrize("n", [2, 3, 4, 5, 7])
def test_linear_pair_with_no_more_samples_than_inputs_is_never_significant(n: int) -> None:
    """n ≤ rank(Sx) = n: the whitened samples are orthogonal and N, N_noise look alike."""
    counts = [
        compute_candidates(
            *_null_linear(seed, n=n), significance_margin=CALLBACK_MARGIN
        ).num_significant
        for seed in range(RUNS)
    ]
    assert counts == [0] * RUNS


def test_the_sample_bound_is_exactly_rank_of_sx() -> None:
    """A strong planted signal at margin 0: found from n = rank(Sx) + 1 = 8 on, never at 7."""
    for n, expected in ((7, 0), (8, 1)):
        counts = [
            compute_candidates(
                *_scaled_trial(seed, 1.0, n=n, hidden=1, signal=(5.0,)), significance_margin=0.0
            ).num_significant
            for seed in range(RUNS)
        ]
        assert counts == [expected] * RUNS, (n, counts)


# ---------------------------------------------------------------------------------------------
# Solves that fail


def _sparse_conv_linear(seed: int):
    """conv → linear on a 1×1 hidden map where 10 of 12 channels are dead: S is mostly zero."""
    setup = ConvSetup(in_channels=3, hidden=12, out=4, size=3, kernel=(3, 3), pad=0)
    alive = torch.zeros(12, 1, 1, dtype=DTYPE)
    alive[[2, 7]] = 1.0
    return random_conv_pair(
        setup, "conv_linear", n=40, seed=seed, activation=lambda z: F.relu(z) * alive
    )


def test_rank_deficient_s_of_a_one_by_one_map_solves_to_the_least_squares_fit() -> None:
    moments, geometry, (_, H, V), *_ = _sparse_conv_linear(seed=0)
    H, V = H[:, 0], V[:, 0]  # one output position: (n, d_h), (n, d_v)
    assert int((moments.S.diagonal() != 0).sum()) == 3  # two live channels and the bias
    candidates = compute_candidates(moments, geometry, damping=0.0)
    fitted = H @ candidates.delta_w.T
    reference = H @ torch.linalg.lstsq(H, V, driver="gelsd").solution
    torch.testing.assert_close(fitted, reference, rtol=1e-9, atol=1e-10)
    assert candidates.delta_w[:, :2].abs().max() == 0  # dead channels get no weight


def _eigh_failing(times: int, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Make the next ``times`` calls of torch.linalg.eigh raise; returns the shapes it saw."""
    original = torch.linalg.eigh
    seen: list[tuple[int, ...]] = []

    def flaky(matrix, *args, **kwargs):
        seen.append(tuple(matrix.shape))
        if len(seen) <= times:
            raise torch.linalg.LinAlgError("linalg.eigh: failed to converge (injected)")
        return original(matrix, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigh", flaky)
    return seen


@pytest.mark.parametrize("failures", [1, 2])
def test_an_eigh_failure_is_recovered(failures: int, monkeypatch) -> None:
    moments, geometry, *_ = _sparse_conv_linear(seed=1)
    expected = compute_candidates(moments, geometry)
    seen = _eigh_failing(failures, monkeypatch)
    recovered = compute_candidates(moments, geometry)
    assert len(seen) > failures  # it did fail, and went on
    # One failure: the CPU float64 retry, identical. Two: the shifted retry, 1e-10 relative.
    tolerance = {"rtol": 1e-7, "atol": 1e-9}
    torch.testing.assert_close(recovered.delta_w, expected.delta_w, **tolerance)
    torch.testing.assert_close(recovered.singular_values, expected.singular_values, **tolerance)
    torch.testing.assert_close(recovered.alpha, expected.alpha, **tolerance)
    assert recovered.num_significant == expected.num_significant


def test_a_solve_that_keeps_failing_raises_solve_error_naming_the_size(monkeypatch) -> None:
    _eigh_failing(10**6, monkeypatch)
    matrix = torch.eye(5, dtype=DTYPE)
    with pytest.raises(SolveError, match="5 × 5") as caught:
        pseudo_inverse_psd(matrix)
    assert isinstance(caught.value, ArithmeticError)


def test_a_failing_svd_is_retried_on_the_cpu(monkeypatch) -> None:
    moments, geometry, *_ = _sparse_conv_linear(seed=2)
    expected = compute_candidates(moments, geometry)
    original, calls = torch.linalg.svd, []

    def flaky(matrix, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.linalg.LinAlgError("linalg.svd: failed to converge (injected)")
        return original(matrix, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", flaky)
    recovered = compute_candidates(moments, geometry)
    torch.testing.assert_close(recovered.singular_values, expected.singular_values)
    assert len(calls) >= 2


def test_non_finite_moments_raise_solve_error() -> None:
    moments, geometry, *_ = _sparse_conv_linear(seed=3)
    moments.Sx[0, 0] = float("inf")
    with pytest.raises(SolveError, match="NaN or inf"):
        compute_candidates(moments, geometry)
    assert linalg_module.SolveError is SolveError
