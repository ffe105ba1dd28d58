"""TINY math core: pair moments → best weight update, optimal new neurons, gains, significance.

Pure float64 functions of one pair's :class:`~lightning_grow.solver.moments.PairMoments` (layout and
notation in ``moments.py``, mathematics in docs/math.md §3–§6); no module state, no Lightning.

Pipeline (:func:`compute_candidates`)
-------------------------------------
1. ``ΔW* = M S⁺`` (:func:`optimal_update`), ``update_decrease = tr(ΔW* Mᵀ)`` and the bottleneck
   ``E‖Ψ‖² = E‖v - ΔW* h‖² = E‖v‖² - 2 tr(ΔW* Mᵀ) + tr(ΔW* S ΔW*ᵀ)`` (which is
   ``E‖v‖² - tr(M S⁺ Mᵀ)`` when nothing is damped or rescaled, and stays exact when it is).
2. ``N = Mx - einsum("xji,ci->xcj", P, ΔW*)`` = ``E[x Ψᵀ]`` in ``(c, j)`` slot layout.
3. ``Sx^{-1/2} N = Σ λ_k u_k w_kᵀ``; TINY's neurons are ``α_k = √λ_k Sx^{-1/2} u_k``,
   (for ``J > 1`` slots with ``Sx/J``, the per-slot average, in place of ``Sx``: see below),
   ``ω_k = √λ_k w_k``. For a linear activation and exact moments, adding them (with ``ΔW*``
   applied) lowers ``E‖Ψ‖²`` by exactly ``Σ_{k≤K} λ_k²``. For conv→conv the statistics use the
   authors' ``Sx = Σ_p c_p x_p x_pᵀ`` (cross-offset terms neglected, docs/math.md §5), so there the
   neurons are optimal for that approximated quadratic term; the linear term ``N`` is exact.

Significance: which λ_k are signal
----------------------------------
``N`` averages ``n`` per-sample terms ``x_i Ψ_iᵀ``; even when targets are independent of inputs
its singular values are sampling noise of size ``~1/√n``, so no absolute threshold can work. The
statistics also deliver ``Mx_noise`` and ``P_noise``: the same sums with each sample's term
multiplied by a sign ``ε_i = ±1``. ``N_noise = Mx_noise - einsum(P_noise, ΔW*)`` is the
Rademacher symmetrisation of ``N``: under the null "no signal" (``E[x Ψᵀ] = 0``) it has the
covariance of ``N``, and under an alternative the signs cancel the mean and keep the
fluctuations. It carries the real residuals' scale, anisotropy and heteroscedasticity. Two
corrections make it an exact reference rather than a rough one:

1. **Degrees of freedom used by ΔW*.** ``ΔW*`` is fitted on the same samples, which forces
   ``E[h Ψᵀ] = 0``: in whitened coordinates the rows of ``Sx^{-1/2} N`` have covariance
   ``(I - A) ⊗ Σ/n`` with ``A = Sx^{-1/2} P S⁺ Pᵀ Sx^{-1/2}`` (``0 ⪯ A ⪯ I``; a projector when
   ``h`` is linear in ``x``), while ``N_noise`` is not constrained. The reference is therefore
   ``(I - A)^{1/2} Sx^{-1/2} N_noise`` (per slot ``j`` with ``P_j``), with
   ``d = rank(Sx) - tr(A)`` noise directions left. Without it the floor overstates the noise
   (null simulations: median ``λ₁/floor`` 0.47 instead of ~1 with 5 hidden units on 8 inputs,
   0.81 with 2 on 6). The derivation is exact for ``J = 1`` without damping (the ridge makes
   ``A`` slightly smaller: conservative); for convolutions (``J > 1``) the per-slot ``A_j`` are
   an approximation, conservative in our conv null simulations (median ``λ₁/floor`` 0.86).
2. **One noise draw fluctuates.** ``λ₁`` (null) and ``floor = σ₁(reference)`` are two
   independent draws of the same law, so their ratio spreads, a lot when ``d`` is small. In the
   worst case (all residual noise along one output direction) ``λ₁²/floor²`` is exactly
   ``F(d, d)``-distributed; spreading the noise over more outputs only concentrates it. The
   threshold is the upper ``z``-quantile of that worst case, ``floor · exp(z √(ψ'(d/2)/2))``
   (:func:`noise_multiplier`: ``½ log F(d, d)`` has standard deviation ``√(ψ'(d/2)/2)`` and is
   close to normal), with ``z = significance_margin``.

``λ_k`` is significant when it exceeds that threshold (the λ are sorted, so these are the first).
:func:`compute_candidates`' default ``z = 2.33`` admits about 1 % false positives per pair and
decision in the worst case (up to 1.7 % for ``d = 1``, where the normal approximation of the tail
is loosest). ``GrowthCallback`` passes ``z = 1.0`` (up to ~16 %), or, opt-in, spends one error
rate over all its tests (``lightning_grow.decision.spending``), a larger ``z`` at each decision.
Isotropic noise gives far fewer than the worst case (docs/math.md §6). Calibration
(``tests/test_tiny_significance.py``, 100 seeded trials each):
independent targets → 0 neurons in ≥ 95 %; a planted rank-``r`` linear signal with moderate
noise → exactly ``r`` in ≥ 90 % (strong signals raise the floor: docs/math.md §6).
``noise_level`` in the result is the full threshold.

Too few samples (:func:`enough_samples`)
----------------------------------------
The sign flips need independent samples to flip: with ``n = 1``, ``N_noise = ±N`` exactly, and
with ``n = 2`` there are two sign patterns. For a linear pair each sample adds one rank-one term
``x_i Ψ_iᵀ``, and while ``n ≤ rank(Sx)`` the whitened samples are orthogonal, so ``N`` and
``N_noise`` have exactly the same singular values whatever the data: the correction (1) then
lowers the floor below ``λ₁`` and noise is declared significant (null simulations with 6
inputs: 100 % of pairs at ``n ≤ 2``, 33 % at ``n = 4``, 4 % at ``n = 8 > rank``, margin 1).
Nothing is significant, then, unless ``n ≥ 2`` and, for linear pairs, ``n > rank(Sx)``.
(Convolutions add a whole map per sample and are calibrated from ``n = 2`` on: 5 % at margin 1
for conv→conv, 16 % for conv→linear, the documented worst case.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_grow.solver.linalg import (
    DEFAULT_DAMPING,
    DEFAULT_EIG_CUTOFF,
    SolveError,
    eigh_psd,
    inverse_sqrt_psd,
    kept_spectrum,
    optimal_update,
    svd,
    symmetrise,
    update_from_pseudo_inverse,
)
from lightning_grow.solver.method import Method, MethodName
from lightning_grow.solver.moments import PairGeometry, PairMoments

__all__ = [
    "DEFAULT_SIGNIFICANCE_MARGIN",
    "GrowthCandidates",
    "Method",
    "SolveError",
    "bottleneck_correlation",
    "compute_candidates",
    "enough_samples",
    "inverse_sqrt_psd",
    "noise_multiplier",
    "optimal_update",
]

DEFAULT_SIGNIFICANCE_MARGIN = 2.33


@dataclass
class GrowthCandidates:
    """Candidate new neurons of one pair, their gains and the significance verdict.

    All tensors are float64 on the moments' device. ``K_max`` is ``max_neurons`` clipped to the
    number of singular values ``min(d_x, d_v·J)``.

    Attributes
    ----------
    method
        ``"tiny"``, ``"gradmax"`` or ``"random"`` (which method produced ``alpha``/``omega``).
    geometry
        The pair's shapes.
    delta_w
        ``(d_v, d_h)`` best update ``ΔW*`` of ``second``'s weight (bias column last).
    v_sq
        ``E‖v‖²``.
    update_decrease
        ``tr(ΔW* Mᵀ)``: first-order loss decrease of applying ``delta_w``.
    bottleneck
        ``E‖Ψ‖² = E‖v - ΔW* h‖²`` (clamped at 0).
    singular_values
        TINY's ``λ_1 ≥ λ_2 ≥ …`` (``K_max``), whatever the method.
    alpha
        ``(K_max, d_x)`` new rows of ``first`` (bias entry last), method-specific.
    omega
        ``(d_v·J, K_max)`` new output weights in ``(c, j)`` layout, method-specific.
    gain
        ``(K_max,)`` cumulative expressivity gain ``Σ_{k≤K} λ_k² / E‖v‖²`` (TINY λ).
    first_order_decrease
        ``(K_max,)`` cumulative ``σ'(0) Σ_{k≤K} α_kᵀ Mx ω_k``: the linearised loss decrease of
        adding the method's first ``K`` neurons at amplitude 1 (without ``ΔW*``).
    num_significant
        How many leading TINY λ are above the noise threshold (0 when there are too few samples
        for the test, :func:`enough_samples`).
    noise_level
        That threshold (same units as λ).
    """

    method: str
    geometry: PairGeometry
    delta_w: Tensor
    v_sq: float
    update_decrease: float
    bottleneck: float
    singular_values: Tensor
    alpha: Tensor
    omega: Tensor
    gain: Tensor
    first_order_decrease: Tensor
    num_significant: int
    noise_level: float

    @property
    def max_neurons(self) -> int:
        """``K_max``: how many candidate neurons are available."""
        return self.alpha.shape[0]

    def _check_count(self, k: int) -> None:
        if not 0 <= k <= self.max_neurons:
            raise ValueError(f"asked for {k} neurons, only {self.max_neurons} candidates")

    def first_weight(self, k: int) -> Tensor:
        """New weight rows of ``first`` for the first ``k`` neurons.

        Returns
        -------
        Tensor
            ``(k, in_features)`` for a Linear ``first``, ``(k, C_in, kh, kw)`` for a Conv2d.
        """
        self._check_count(k)
        weight = self.alpha[:k, : self.geometry.in_features]
        if self.geometry.first_kernel is not None:
            weight = weight.reshape(k, *self.geometry.first_kernel)
        return weight

    def first_bias(self, k: int) -> Tensor | None:
        """``(k,)`` new bias entries of ``first``, or ``None`` when ``first`` has no bias."""
        self._check_count(k)
        return self.alpha[:k, -1] if self.geometry.first_bias else None

    def second_weight(self, k: int) -> Tensor:
        """New input columns of ``second`` for the first ``k`` neurons.

        Returns
        -------
        Tensor
            ``(out, k)`` for linear; ``(C_out, k, kh2, kw2)`` for conv→conv (slot ``j`` is the
            kernel offset ``(j // kw2, j % kw2)``); ``(out, k·J)`` for conv→linear, neuron-major
            then hidden position: the columns ``flatten`` appends for ``k`` new channels.
        """
        self._check_count(k)
        geometry = self.geometry
        slots = geometry.num_slots
        per_slot = self.omega[:, :k].reshape(geometry.d_v, slots, k)
        if geometry.kind == "conv":
            assert geometry.second_kernel is not None
            return per_slot.permute(0, 2, 1).reshape(geometry.d_v, k, *geometry.second_kernel)
        if geometry.kind == "conv_linear":
            return per_slot.permute(0, 2, 1).reshape(geometry.d_v, k * slots)
        return per_slot[:, 0, :]


def bottleneck_correlation(Mx: Tensor, P: Tensor, delta_w: Tensor) -> Tensor:
    """``N = Mx - einsum("xji,ci->xcj", P, ΔW)`` = ``E[x Ψᵀ]``: ``(d_x, d_v·J)``, ``(c, j)`` layout.

    Parameters
    ----------
    Mx
        ``(d_x, d_v·J)`` ``E[Σ_j x_(j) v_jᵀ]``.
    P
        ``(d_x, J, d_h)`` cross moment through ``second``'s geometry.
    delta_w
        ``(d_v, d_h)`` update applied to ``second``.
    """
    Mx, P, delta_w = (t.to(torch.float64) for t in (Mx, P, delta_w))
    projected = torch.einsum("xji,ci->xcj", P, delta_w).reshape(Mx.shape)
    return Mx - projected


def _canonical_signs(vectors: Tensor) -> Tensor:
    """Signs that make each column's largest-magnitude entry positive.

    SVD signs are arbitrary (LAPACK- and device-dependent); fixing them makes candidates
    reproducible. Flipping ``u_k`` and ``w_k`` together leaves ``u_k w_kᵀ`` unchanged.
    """
    if vectors.shape[1] == 0:
        return vectors.new_ones(0)
    pivots = vectors.abs().argmax(dim=0)
    signs = torch.sign(vectors[pivots, torch.arange(vectors.shape[1], device=vectors.device)])
    return torch.where(signs == 0, torch.ones_like(signs), signs)


def _significance_threshold(
    whitener: Tensor,
    noise_correlation: Tensor,
    P: Tensor,
    S_pinv_root: Tensor,
    *,
    margin: float,
    rank: int,
) -> float:
    """``noise_multiplier(d, margin) · σ₁((I - A)^{1/2} Sx^{-1/2} N_noise)`` (module docstring).

    ``A_j = Sx^{-1/2} P_j S⁺ P_jᵀ Sx^{-1/2}`` per slot ``j``: the directions of ``x`` that
    fitting ``ΔW*`` already used up in ``N`` but not in ``N_noise``; ``d = rank - mean_j tr(A_j)``
    noise directions are left.
    """
    if rank == 0 or noise_correlation.numel() == 0:
        return 0.0
    rows, slots = whitener.shape[0], P.shape[1]
    # A_j = F_j F_jᵀ. (I - A_j)^{1/2} = I - U_j (I - (I - Σ_j²)^{1/2}) U_jᵀ from the thin SVD
    # F_j = U_j Σ_j V_jᵀ, obtained from whichever Gram matrix is smaller: d_x × d_x (F Fᵀ) or
    # d_h × d_h (Fᵀ F). d_x is 4608 for a ResNet's 512-channel 3×3 conv; d_h is 385 for a
    # 6-channel 8×8 map feeding a Linear: never decompose the large side.
    # S_pinv_root = V diag(values^{-1/2}) on S's kept range (d_h × r): R Rᵀ = S⁺, so it
    # gives the same A_j as the symmetric root, one eigendecomposition and d_h³ FLOPs cheaper.
    factor = torch.einsum("ax,xji->jai", whitener, P) @ S_pinv_root
    if factor.shape[1] <= factor.shape[2]:
        used, directions = eigh_psd(symmetrise(factor @ factor.transpose(1, 2)))
        # A ⪯ I holds exactly (S ⪰ Pᵀ Sx⁺ P); the clamp only absorbs round-off.
        used = used.clamp(0.0, 1.0)
    else:
        used, basis = eigh_psd(symmetrise(factor.transpose(1, 2) @ factor))
        used = used.clamp(0.0, 1.0)
        keep = used > 1e-12 * float(used.max().clamp_min(1e-300))
        scale = keep / used.clamp_min(1e-300).sqrt()
        directions = factor @ basis * scale.unsqueeze(1)
        used = used * keep
    shrink = 1.0 - (1.0 - used).sqrt()
    noise = (whitener @ noise_correlation).reshape(rows, -1, slots).permute(2, 0, 1)
    reference = noise - directions @ (shrink.unsqueeze(2) * (directions.transpose(1, 2) @ noise))
    floor = float(svd(reference.permute(1, 2, 0).reshape(rows, -1))[1][0])
    spent = float(used.sum(dim=1).mean())
    return noise_multiplier(max(1.0, rank - spent), margin) * floor


MIN_SAMPLES = 2


def enough_samples(n: int, geometry: PairGeometry, *, rank: int) -> bool:
    """Whether ``n`` samples can support the significance test (module docstring).

    Parameters
    ----------
    n
        Samples the moments cover.
    geometry
        The pair's shapes (linear pairs need ``n > rank``).
    rank
        Rank of ``Sx`` (kept eigenvalues).
    """
    if n < MIN_SAMPLES:
        return False
    return geometry.kind != "linear" or n > rank


def noise_multiplier(effective_rank: float, margin: float) -> float:
    """``exp(z · sd)``: the upper ``z``-quantile of ``λ₁ / floor`` under the worst-case null.

    In the worst case (all residual noise along one output direction) ``λ₁²`` and ``floor²`` are
    independent scaled ``χ²_d`` variables, so ``log(λ₁ / floor) = ½ log F(d, d)``, whose standard
    deviation is exactly ``sd = √(ψ'(d/2) / 2)`` (``ψ'`` the trigamma function). Its law is close
    to normal: the 95 % quantiles match the F table within 5 % for every ``d ≥ 1``, the 99 % ones
    within 3 % for ``d ≥ 6`` (below, the true tail is heavier: ``z = 2.33`` then gives up to
    1.7 % instead of 1 %).

    Parameters
    ----------
    effective_rank
        ``d``: noise directions of ``x`` left after whitening and fitting ``ΔW*``.
    margin
        ``z``: one-sided standard-normal quantile (2.33 ≈ 1 % false positives).
    """
    trigamma = torch.special.polygamma(1, torch.tensor(effective_rank / 2.0, dtype=torch.float64))
    return math.exp(margin * math.sqrt(float(trigamma) / 2.0))


def _tiny_neurons(
    whitener: Tensor, correlation: Tensor, count: int
) -> tuple[Tensor, Tensor, Tensor]:
    """TINY's λ (all of them), α ``(count, d_x)`` and ω ``(d_v·J, count)``.

    ``whitener`` is any ``(r, d_x)`` factor ``G`` with ``Gᵀ G = Sx⁺`` (``r = rank(Sx)``), e.g.
    ``Sx^{-1/2}`` restricted to its range: another factor is ``Q G`` with ``Q`` orthogonal,
    which rotates the left singular vectors ``u`` of ``G N`` by ``Q`` and leaves the λ, the
    ``w`` and ``α = Gᵀ u √λ`` unchanged.
    """
    left, singular_values, right_t = svd(whitener @ correlation)
    right = right_t[:count].T
    signs = _canonical_signs(right)
    left, right = left[:, :count] * signs, right * signs
    scale = singular_values[:count].sqrt()
    alpha = (whitener.T @ left * scale).T
    omega = right * scale
    return singular_values, alpha, omega


def _gradmax_neurons(Mx: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """GradMax (Evci et al. 2022): ``α = 0``; ω = top right singular vectors of ``Mx``.

    The right singular vectors of ``Mx = E[x vᵀ]`` are the left singular vectors of
    ``E[v xᵀ]`` (no whitening, no projection by ``ΔW*``). They are scaled by ``√s_k`` (``s_k``
    the singular values of ``Mx``), which gives ``ω`` the units of TINY's ``ω``; the amplitude
    search rescales them anyway.
    """
    _, singular_values, right_t = svd(Mx)
    right = right_t[:count].T
    right = right * _canonical_signs(right)
    omega = right * singular_values[:count].sqrt()
    alpha = Mx.new_zeros(count, Mx.shape[0])
    return alpha, omega


def _random_neurons(
    geometry: PairGeometry, count: int, seed: int, like: Tensor
) -> tuple[Tensor, Tensor]:
    """Kaiming-normal ``α`` (fan-in ``in_features``, gain √2, zero bias entry), ``ω = 0``."""
    generator = torch.Generator().manual_seed(seed)
    std = math.sqrt(2.0 / geometry.in_features)
    weights = torch.randn(count, geometry.in_features, generator=generator, dtype=torch.float64)
    alpha = like.new_zeros(count, geometry.d_x)
    alpha[:, : geometry.in_features] = weights.to(like.device) * std
    omega = like.new_zeros(geometry.d_v * geometry.num_slots, count)
    return alpha, omega


def compute_candidates(
    moments: PairMoments,
    geometry: PairGeometry,
    *,
    method: Method | MethodName = "tiny",
    max_neurons: int | None = None,
    activation_slope: float = 1.0,
    damping: float = DEFAULT_DAMPING,
    eig_cutoff: float = DEFAULT_EIG_CUTOFF,
    max_update_norm: float | None = None,
    significance_margin: float = DEFAULT_SIGNIFICANCE_MARGIN,
    seed: int = 0,
) -> GrowthCandidates:
    """Turn one pair's moments into its best update, candidate neurons, gains and significance.

    Parameters
    ----------
    moments
        The pair's moments (any float dtype and device; solved in float64 on that device).
    geometry
        The pair's shapes; ``moments`` must fit them (checked).
    method
        ``"tiny"`` (optimal neurons), ``"gradmax"`` (``α = 0``, ``ω`` from ``Mx``) or
        ``"random"`` (Kaiming ``α``, ``ω = 0``). Gains and significance are TINY's for all.
    max_neurons
        Candidates to return (clipped to ``min(d_x, d_v·J)``); ``None`` for all.
    activation_slope
        ``σ'(0)`` (one-sided) used in ``first_order_decrease``.
    damping, eig_cutoff
        Regularisation of ``S⁺`` and ``Sx^{-1/2}`` (see :mod:`lightning_grow.solver.linalg`).
    max_update_norm
        Frobenius cap on ``ΔW*`` (``None``: no cap).
    significance_margin
        ``z``, the one-sided normal quantile of the worst-case noise ratio (module docstring):
        higher is stricter; worst-case false positives: ≈ 1 % at 2.33, ≈ 16 % at 1.0 (callback).
    seed
        Seed of the random method's generator.

    Returns
    -------
    GrowthCandidates

    Raises
    ------
    SolveError
        When a moment is not finite or cannot be decomposed even after the retries of
        :mod:`lightning_grow.solver.linalg` (the caller can skip this pair).
    """
    method = Method.parse(method, "method")
    moments.check(geometry)
    moments = moments.to(dtype=torch.float64)
    rank_limit = min(geometry.d_x, geometry.d_v * geometry.num_slots)
    count = rank_limit if max_neurons is None else max(0, min(max_neurons, rank_limit))

    # One eigendecomposition per matrix: S gives S⁺ and its root, Sx the whitener and its rank.
    # The bias entries come last in h and x (lightning_grow.solver.moments).
    h_bias = [geometry.d_h - 1] if geometry.second_bias else []
    x_bias = [geometry.d_x - 1] if geometry.first_bias else []
    regularisation = {"eig_cutoff": eig_cutoff, "damping": damping}
    S_vectors, S_values = kept_spectrum(moments.S, constant_features=h_bias, **regularisation)
    S_pinv = (S_vectors / S_values) @ S_vectors.T
    Sx_vectors, Sx_values = kept_spectrum(moments.Sx, constant_features=x_bias, **regularisation)
    delta_w, update_decrease = update_from_pseudo_inverse(
        moments.M, S_pinv, max_update_norm=max_update_norm
    )
    v_sq = float(moments.v_sq)
    explained = float(torch.einsum("ci,ij,cj->", delta_w, symmetrise(moments.S), delta_w))
    bottleneck = max(0.0, v_sq - 2.0 * update_decrease + explained)

    # G = diag(values^{-1/2}) Vᵀ: Gᵀ G = Sx⁺ (see _tiny_neurons for why any such factor works).
    whitener = (Sx_vectors * Sx_values.rsqrt()).T
    correlation = bottleneck_correlation(moments.Mx, moments.P, delta_w)
    singular_values, alpha, omega = _tiny_neurons(whitener, correlation, count)
    singular_values = singular_values[:count]
    slots = geometry.num_slots
    if slots > 1:
        # Sx sums the per-slot moments over the J slots, but each slot's output weights pay
        # only for their own slot: the quadratic term of the approximated objective is
        # ‖ω‖² αᵀ (Sx/J) α. Whitening with (Sx/J)^{-1/2} = √J Sx^{-1/2} scales every λ by √J,
        # α by J^{3/4} and ω by J^{1/4}, so that gains are comparable across layer kinds. The
        # significance test below keeps Sx (a common scale factor cancels in λ / floor).
        singular_values = singular_values * math.sqrt(slots)
        alpha = alpha * slots**0.75
        omega = omega * slots**0.25
    if method is Method.GRADMAX:
        alpha, omega = _gradmax_neurons(moments.Mx, count)
    elif method is Method.RANDOM:
        alpha, omega = _random_neurons(geometry, count, seed, moments.Mx)

    gain = singular_values.square().cumsum(0) / v_sq if v_sq > 0 else singular_values * 0.0
    per_neuron_decrease = torch.einsum("kx,xo,ok->k", alpha, moments.Mx, omega)
    first_order_decrease = activation_slope * per_neuron_decrease.cumsum(0)

    noise_correlation = bottleneck_correlation(moments.Mx_noise, moments.P_noise, delta_w)
    noise_level = _significance_threshold(
        whitener,
        noise_correlation,
        moments.P,
        S_vectors * S_values.rsqrt(),
        margin=significance_margin,
        rank=Sx_values.numel(),
    )
    noise_level *= math.sqrt(slots)  # on the scale of the reported λ
    num_significant = int((singular_values > noise_level).sum())  # λ are sorted: a prefix
    if not enough_samples(moments.n, geometry, rank=Sx_values.numel()):
        num_significant = 0

    return GrowthCandidates(
        method=method.value,
        geometry=geometry,
        delta_w=delta_w,
        v_sq=v_sq,
        update_decrease=update_decrease,
        bottleneck=bottleneck,
        singular_values=singular_values,
        alpha=alpha,
        omega=omega,
        gain=gain,
        first_order_decrease=first_order_decrease,
        num_significant=num_significant,
        noise_level=noise_level,
    )
