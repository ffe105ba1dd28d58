"""ΔW* = M S⁺, the regularised inverses, degenerate inputs and the regression blow-up case."""

from __future__ import annotations

import numpy
import pytest
import torch
from test_tiny_reference import DTYPE, linear_moments, with_bias

from lightning_grow.solver.linalg import (
    SolveError,
    inverse_sqrt_psd,
    optimal_update,
    pseudo_inverse_psd,
)
from lightning_grow.solver.moments import PairGeometry, PairMoments
from lightning_grow.solver.tiny import compute_candidates


def _regression_data(n: int, d_in: int, hidden: int, d_v: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d_in, generator=g, dtype=DTYPE)
    W1 = torch.randn(hidden, d_in, generator=g, dtype=DTYPE)
    H = torch.tanh(X @ W1.T)
    V = torch.sin(X @ torch.randn(d_in, d_v, generator=g, dtype=DTYPE))
    V = V + 0.1 * torch.randn(n, d_v, generator=g, dtype=DTYPE)
    return with_bias(X), with_bias(H), V


def test_update_equals_lstsq_on_stacked_samples() -> None:
    _, H, V = _regression_data(n=60, d_in=5, hidden=4, d_v=3, seed=0)
    moments = linear_moments(H, H, V)
    delta_w, decrease = optimal_update(moments.S, moments.M, damping=0.0)
    solution = torch.linalg.lstsq(H, V).solution.T
    torch.testing.assert_close(delta_w, solution, rtol=1e-9, atol=1e-11)
    fitted = H @ solution.T
    # tr(M S⁺ Mᵀ) = E‖ΔW* h‖² for the least-squares fit (E[Ψ hᵀ] = 0).
    torch.testing.assert_close(torch.tensor(decrease, dtype=DTYPE), (fitted**2).sum(1).mean())


def test_rank_deficient_update_is_the_minimum_norm_solution() -> None:
    _, H, V = _regression_data(n=40, d_in=4, hidden=3, d_v=2, seed=1)
    H = torch.cat([H[:, :2], H[:, :1], torch.zeros(40, 1, dtype=DTYPE), H[:, 2:]], dim=1)
    moments = linear_moments(H, H, V)
    delta_w, _ = optimal_update(moments.S, moments.M, damping=0.0)
    solution = torch.linalg.lstsq(H, V, driver="gelsd").solution.T  # minimum-norm
    torch.testing.assert_close(delta_w, solution, rtol=1e-8, atol=1e-10)
    assert delta_w[:, 3].abs().max() < 1e-12  # an always-zero feature gets no weight


def _ridge_solution(H: torch.Tensor, V: torch.Tensor, ridge: torch.Tensor) -> torch.Tensor:
    """Ridge regression as ordinary least squares on data augmented with √(n ρ_i) e_i rows."""
    n = H.shape[0]
    augmented_h = torch.cat([H, torch.diag((n * ridge).sqrt())])
    augmented_v = torch.cat([V, torch.zeros(H.shape[1], V.shape[1], dtype=DTYPE)])
    return torch.linalg.lstsq(augmented_h, augmented_v).solution.T


def test_damping_is_a_ridge_on_the_common_scale_of_the_features() -> None:
    _, H, V = _regression_data(n=50, d_in=4, hidden=3, d_v=2, seed=2)
    # Unequal scales, none so small next to the mean that the eigenvalue cutoff drops it.
    H = H * torch.tensor([1e2, 1e-1, 30.0, 1.0], dtype=DTYPE)
    moments = linear_moments(H, H, V)
    damping = 0.05
    delta_w, _ = optimal_update(moments.S, moments.M, damping=damping)
    ridge = damping * (H**2).mean(0).mean().expand(4)  # ρ_i = damping × mean_j E[h_j²]
    torch.testing.assert_close(delta_w, _ridge_solution(H, V, ridge), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize(("scale", "own"), [(1e4, True), (1e-3, True), (3.0, False)])
def test_a_bias_far_off_the_common_scale_is_damped_on_its_own(scale: float, own: bool) -> None:
    _, H, V = _regression_data(n=50, d_in=4, hidden=3, d_v=2, seed=4)
    H = torch.cat([H * scale, torch.ones(50, 1, dtype=DTYPE)], dim=1)  # bias entry last
    moments = linear_moments(H, H, V)
    damping = 0.05
    delta_w, _ = optimal_update(moments.S, moments.M, damping=damping, constant_features=[4])
    common = (H[:, :4] ** 2).mean()
    ridge = torch.cat([common.expand(4), torch.ones(1, dtype=DTYPE) if own else common.view(1)])
    expected = _ridge_solution(H, V, damping * ridge)
    torch.testing.assert_close(delta_w, expected, rtol=1e-9, atol=1e-11)


def test_regularised_update_does_not_depend_on_the_units_of_the_features() -> None:
    """A common rescaling of the varying features by c rescales their weights by 1/c.

    Far off the common scale the bias entry keeps its own scale, so its weight does not change;
    rescaling the bias entry along with the features changes nothing in either regime.
    """
    _, H, V = _regression_data(n=50, d_in=4, hidden=3, d_v=2, seed=3)
    H = torch.cat([H, torch.ones(50, 1, dtype=DTYPE)], dim=1)

    def solve(scales: torch.Tensor) -> tuple[torch.Tensor, float]:
        delta_w, decrease = optimal_update(*_s_and_m(H * scales, V), constant_features=[4])
        return delta_w * scales, decrease

    for regime in ([1.0, 3.0, 0.2], [1e3, 1e5, 1e-4]):  # bias on / off the common scale
        reference, reference_decrease = solve(torch.tensor([regime[0]] * 4 + [1.0], dtype=DTYPE))
        for scale in regime[1:]:
            for bias in (1.0, scale / regime[0]):
                scales = torch.tensor([scale] * 4 + [bias], dtype=DTYPE)
                if bias == 1.0 and regime[0] == 1.0:
                    continue  # on the common scale the bias is damped by the features' scale
                scaled, scaled_decrease = solve(scales)
                torch.testing.assert_close(scaled, reference, rtol=1e-7, atol=1e-10)
                assert abs(scaled_decrease - reference_decrease) < 1e-9 * abs(reference_decrease)


def _s_and_m(H: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    moments = linear_moments(H, H, V)
    return moments.S, moments.M


def test_inverse_square_root_whitens_on_the_kept_range() -> None:
    g = torch.Generator().manual_seed(3)
    factor = torch.randn(6, 4, generator=g, dtype=DTYPE)
    matrix = (factor @ factor.T).to(torch.float32)  # rank 4, float32 round-off
    root = inverse_sqrt_psd(matrix, eig_cutoff=1e-6)
    assert root.dtype == DTYPE
    torch.testing.assert_close(root, root.T)
    exact = matrix.to(DTYPE)
    projector = root @ exact @ root
    # An orthogonal projector of rank 4: symmetric, idempotent, trace 4.
    torch.testing.assert_close(projector @ projector, projector, rtol=1e-5, atol=1e-5)
    assert abs(float(torch.trace(projector)) - 4.0) < 1e-5
    inverse = pseudo_inverse_psd(matrix, eig_cutoff=1e-6)
    torch.testing.assert_close(inverse, root @ root, rtol=1e-9, atol=1e-9)
    # A reflexive generalised inverse of the matrix: A G A = A and G A G = G.
    scale = float(exact.abs().max())
    torch.testing.assert_close(exact @ inverse @ exact / scale, exact / scale, atol=1e-5, rtol=0)
    torch.testing.assert_close(inverse @ exact @ inverse, inverse, rtol=1e-5, atol=1e-5)


def test_inverse_square_root_of_an_invertible_matrix_is_the_usual_one() -> None:
    g = torch.Generator().manual_seed(4)
    factor = torch.randn(5, 5, generator=g, dtype=DTYPE)
    matrix = factor @ factor.T + 0.5 * torch.eye(5, dtype=DTYPE)
    values, vectors = np_eigh(matrix)
    expected = (vectors / values.sqrt()) @ vectors.T
    torch.testing.assert_close(inverse_sqrt_psd(matrix), expected, rtol=1e-9, atol=1e-10)


def np_eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """numpy's LAPACK eigendecomposition: a reference independent of torch.linalg."""
    values, vectors = numpy.linalg.eigh(matrix.numpy())
    return torch.from_numpy(values), torch.from_numpy(vectors)


def test_asymmetric_round_off_is_symmetrised() -> None:
    g = torch.Generator().manual_seed(11)
    factor = torch.randn(5, 5, generator=g, dtype=DTYPE)
    matrix = factor @ factor.T
    skew = 1e-3 * torch.randn(5, 5, generator=g, dtype=DTYPE)
    skew = skew - skew.T
    for function in (inverse_sqrt_psd, pseudo_inverse_psd):
        torch.testing.assert_close(function(matrix + skew), function(matrix))


def test_non_finite_moments_are_rejected() -> None:
    matrix = torch.eye(3, dtype=DTYPE)
    matrix[0, 1] = float("nan")
    with pytest.raises(SolveError, match=r"NaN.*\(3, 3\)|\(3, 3\).*NaN"):
        pseudo_inverse_psd(matrix)
    with pytest.raises(ValueError):  # SolveError is also a ValueError, as the former error was
        pseudo_inverse_psd(matrix)


def _near_collinear(n: int, noise: float, seed: int):
    """Regression with a feature duplicated up to ``noise``: the unregularised fit explodes."""
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(n, 3, generator=g, dtype=DTYPE)
    e = torch.randn(n, generator=g, dtype=DTYPE)
    H = with_bias(torch.stack([f[:, 0], f[:, 0] + noise * e, f[:, 1], f[:, 2]], dim=1))
    V = (f[:, 0] + 0.5 * f[:, 1] + 0.1 * torch.randn(n, generator=g, dtype=DTYPE))[:, None]
    return H, V


def test_near_collinear_regression_stays_bounded() -> None:
    """The GroMo blow-up: an unregularised solve gives huge weights, damping keeps ΔW* sane."""
    H, V = _near_collinear(n=200, noise=1e-5, seed=4)
    held_h, held_v = _near_collinear(n=2000, noise=1e-5, seed=5)
    well_posed = torch.linalg.lstsq(H[:, [0, 2, 3, 4]], V).solution.T  # without the duplicate
    unregularised = torch.linalg.lstsq(H, V).solution.T
    assert unregularised.norm() > 100 * well_posed.norm()  # the case really blows up
    moments = linear_moments(H, H, V)
    delta_w, _ = optimal_update(moments.S, moments.M)
    assert delta_w.norm() < 1.5 * well_posed.norm()
    held_loss = ((held_v - held_h @ delta_w.T) ** 2).mean()
    well_posed_loss = ((held_v - held_h[:, [0, 2, 3, 4]] @ well_posed.T) ** 2).mean()
    assert held_loss < 1.1 * well_posed_loss  # bounded without giving up the fit


def test_damping_is_what_bounds_a_collinearity_above_the_cutoff() -> None:
    """Duplicates 1e-3 apart survive the eigenvalue cutoff; only the ridge tames them."""
    undamped_ratios, damped_ratios = [], []
    for seed in range(10):
        H, V = _near_collinear(n=50, noise=1e-3, seed=seed)
        moments = linear_moments(H, H, V)
        undamped, _ = optimal_update(moments.S, moments.M, damping=0.0)
        damped, _ = optimal_update(moments.S, moments.M)
        well_posed = torch.linalg.lstsq(H[:, [0, 2, 3, 4]], V).solution.T.norm()
        undamped_ratios.append(float(undamped.norm() / well_posed))
        damped_ratios.append(float(damped.norm() / well_posed))
    assert max(undamped_ratios) > 20
    assert max(damped_ratios) < 1.0  # the weight is shared by the duplicates instead


def test_norm_guard_caps_the_update_and_its_decrease() -> None:
    H, V = _near_collinear(n=200, noise=1e-3, seed=6)
    moments = linear_moments(H, H, V)
    free, free_decrease = optimal_update(moments.S, moments.M, damping=0.0)
    capped, capped_decrease = optimal_update(moments.S, moments.M, damping=0.0, max_update_norm=2.0)
    torch.testing.assert_close(capped.norm(), torch.tensor(2.0, dtype=DTYPE))
    torch.testing.assert_close(capped, free * (2.0 / free.norm()))
    torch.testing.assert_close(capped_decrease, free_decrease * 2.0 / float(free.norm()))
    untouched, _ = optimal_update(moments.S, moments.M, damping=0.0, max_update_norm=1e6)
    torch.testing.assert_close(untouched, free)


def test_bottleneck_is_measured_residual_even_when_capped() -> None:
    X, H, V = _regression_data(n=80, d_in=4, hidden=3, d_v=2, seed=7)
    moments = linear_moments(X, H, V)
    geometry = PairGeometry("linear", 4, 3, 2, first_bias=True, second_bias=True)
    for cap in (None, 0.1):
        candidates = compute_candidates(moments, geometry, max_update_norm=cap)
        residual = V - H @ candidates.delta_w.T
        torch.testing.assert_close(
            torch.tensor(candidates.bottleneck, dtype=DTYPE), (residual**2).sum(1).mean()
        )
        measured_decrease = (V * (H @ candidates.delta_w.T)).sum(1).mean()
        torch.testing.assert_close(
            torch.tensor(candidates.update_decrease, dtype=DTYPE), measured_decrease
        )


def _assert_sane(candidates, limit: float = 1e3) -> None:
    for name in ("delta_w", "alpha", "omega", "gain", "first_order_decrease", "singular_values"):
        value = getattr(candidates, name)
        assert torch.isfinite(value).all(), name
        assert value.numel() == 0 or value.abs().max() < limit, name
    for name in ("v_sq", "update_decrease", "bottleneck", "noise_level"):
        assert torch.isfinite(torch.tensor(getattr(candidates, name))), name


@pytest.mark.parametrize("case", ["zero_columns", "duplicated_columns", "few_samples"])
@pytest.mark.parametrize("method", ["tiny", "gradmax", "random"])
def test_degenerate_inputs_give_finite_sensible_candidates(case: str, method: str) -> None:
    n = 6 if case == "few_samples" else 80
    X, H, V = _regression_data(n=n, d_in=7, hidden=5, d_v=3, seed=8)
    if case == "zero_columns":  # always-zero pixels and a dead hidden unit
        X[:, [1, 4]] = 0.0
        H[:, 2] = 0.0
    elif case == "duplicated_columns":
        X[:, 3] = X[:, 0]
        H[:, 1] = H[:, 0]
    moments = linear_moments(X, H, V)
    geometry = PairGeometry("linear", 7, 5, 3, first_bias=True, second_bias=True)
    candidates = compute_candidates(moments, geometry, method=method)
    _assert_sane(candidates)
    assert candidates.bottleneck <= candidates.v_sq + 1e-12
    assert torch.all(candidates.gain <= 1.0 + 1e-9)
    if case == "zero_columns":
        assert candidates.delta_w[:, 2].abs().max() < 1e-12
        if method == "tiny":
            assert candidates.alpha[:, [1, 4]].abs().max() < 1e-12
    if case == "few_samples":  # n < d: any target can be interpolated, nothing is evidence
        assert candidates.num_significant == 0


@pytest.mark.parametrize("method", ["tiny", "gradmax", "random"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_zero_moments_give_zero_significant_and_finite_zeros(method, dtype) -> None:
    geometry = PairGeometry("linear", 4, 3, 2, first_bias=True, second_bias=False)
    d_x, d_h, d_v = geometry.d_x, geometry.d_h, geometry.d_v
    zeros = torch.zeros
    moments = PairMoments(
        S=zeros(d_h, d_h, dtype=dtype),
        M=zeros(d_v, d_h, dtype=dtype),
        Sx=zeros(d_x, d_x, dtype=dtype),
        Mx=zeros(d_x, d_v, dtype=dtype),
        P=zeros(d_x, 1, d_h, dtype=dtype),
        v_sq=zeros((), dtype=dtype),
        n=0,
        Mx_noise=zeros(d_x, d_v, dtype=dtype),
        P_noise=zeros(d_x, 1, d_h, dtype=dtype),
    )
    candidates = compute_candidates(moments, geometry, method=method)
    _assert_sane(candidates)
    assert candidates.num_significant == 0
    assert candidates.delta_w.dtype == DTYPE
    assert torch.all(candidates.delta_w == 0) and torch.all(candidates.gain == 0)
    assert candidates.bottleneck == 0.0 and candidates.update_decrease == 0.0
    if method != "random":
        assert torch.all(candidates.alpha == 0)


def test_float32_moments_are_solved_in_float64() -> None:
    X, H, V = _regression_data(n=80, d_in=4, hidden=3, d_v=2, seed=9)
    moments = linear_moments(X, H, V)
    geometry = PairGeometry("linear", 4, 3, 2, first_bias=True, second_bias=True)
    low = compute_candidates(moments.to(dtype=torch.float32), geometry)
    high = compute_candidates(moments, geometry)
    assert low.alpha.dtype == DTYPE and low.omega.dtype == DTYPE
    torch.testing.assert_close(low.delta_w, high.delta_w, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(low.singular_values, high.singular_values, rtol=1e-4, atol=1e-5)


def test_moments_that_do_not_fit_the_geometry_are_rejected() -> None:
    X, H, V = _regression_data(n=20, d_in=4, hidden=3, d_v=2, seed=10)
    geometry = PairGeometry("linear", 4, 4, 2, first_bias=True, second_bias=True)
    with pytest.raises(ValueError, match="moment S"):
        compute_candidates(linear_moments(X, H, V), geometry)
    with pytest.raises(ValueError, match="method"):
        compute_candidates(linear_moments(X, H, V), geometry, method="grow")  # type: ignore[arg-type]
