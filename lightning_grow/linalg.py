"""Robust float64 linear algebra on second-moment matrices (symmetric positive semi-definite).

Moment matrices reach the math core accumulated in float32 over finite batches, so they are
only approximately symmetric and often rank-deficient (always-zero pixels, duplicated or dead
features, fewer samples than dimensions). Every inverse here therefore goes through one
symmetric eigendecomposition with two safeguards:

* a **relative cutoff**: eigenvalues below ``eig_cutoff × λ_max`` are treated as exact zeros
  (pseudo-inverse). float32 accumulation leaves round-off of relative size ~1e-7 (its machine
  epsilon) in every entry, so eigenvalues below that level carry no information about the data;
  :data:`DEFAULT_EIG_CUTOFF` is set there.
* an optional **ridge** ``damping × tr(A)/d`` (relative to the mean eigenvalue, so it is
  scale-free) added to the kept eigenvalues. Directions that are nearly but not exactly
  collinear survive the cutoff with tiny eigenvalues; inverting them multiplies sampling noise by
  ``1/λ`` and produces huge weights (GroMo's unregularised solve grew a norm-3 layer to 6,860 on
  a regression task). With the ridge a direction can never be amplified by more than
  ``1 / (damping × mean eigenvalue)``. :data:`DEFAULT_DAMPING` = 1e-3 shrinks well-conditioned
  directions by at most ~0.1 %, a negligible bias next to sampling noise.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_DAMPING",
    "DEFAULT_EIG_CUTOFF",
    "inverse_sqrt_psd",
    "kept_spectrum",
    "optimal_update",
    "pseudo_inverse_psd",
    "symmetrise",
    "update_from_pseudo_inverse",
]

DEFAULT_EIG_CUTOFF = 1e-7
DEFAULT_DAMPING = 1e-3


def symmetrise(matrix: Tensor) -> Tensor:
    """``(A + Aᵀ) / 2`` in float64: removes the asymmetry left by float32 accumulation."""
    matrix = matrix.to(torch.float64)
    return 0.5 * (matrix + matrix.transpose(-1, -2))


def _regularised_spectrum(
    matrix: Tensor, *, eig_cutoff: float, damping: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Eigenvectors, regularised eigenvalues and the mask of kept eigenvalues of a PSD matrix.

    Eigenvalues below ``eig_cutoff × λ_max`` (including the negative round-off of a PSD matrix)
    are dropped; the kept ones get the ridge ``damping × tr(A)/d`` added.
    """
    if eig_cutoff < 0 or damping < 0:
        raise ValueError(f"eig_cutoff and damping must be >= 0, got {eig_cutoff}, {damping}")
    symmetric = symmetrise(matrix)
    dim = symmetric.shape[-1]
    if not torch.isfinite(symmetric).all():
        raise ValueError("moment matrix contains NaN or inf")
    if dim == 0:
        empty = symmetric.new_zeros(0)
        return symmetric.new_zeros(0, 0), empty, empty.bool()
    eigenvalues, eigenvectors = torch.linalg.eigh(symmetric)
    largest = eigenvalues.max().clamp_min(0.0)
    kept = eigenvalues > eig_cutoff * largest
    if largest == 0:  # the zero matrix: nothing to invert
        kept = torch.zeros_like(kept)
    ridge = damping * eigenvalues.clamp_min(0.0).sum() / dim
    return eigenvectors, eigenvalues.clamp_min(0.0) + ridge, kept


def kept_spectrum(
    matrix: Tensor, *, eig_cutoff: float = DEFAULT_EIG_CUTOFF, damping: float = 0.0
) -> tuple[Tensor, Tensor]:
    """``(V, values)`` on the kept range: ``(A + ρI)⁺ = V diag(1/values) Vᵀ``.

    One eigendecomposition serves the pseudo-inverse, its square root and the rank
    (``values.numel()``); see :func:`pseudo_inverse_psd` for the arguments.
    """
    vectors, values, kept = _regularised_spectrum(matrix, eig_cutoff=eig_cutoff, damping=damping)
    return vectors[:, kept], values[kept]


def pseudo_inverse_psd(
    matrix: Tensor, *, eig_cutoff: float = DEFAULT_EIG_CUTOFF, damping: float = 0.0
) -> Tensor:
    """Regularised pseudo-inverse ``(A + ρI)⁺`` of a PSD matrix, restricted to its kept range.

    Parameters
    ----------
    matrix
        ``(d, d)`` symmetric positive semi-definite matrix (any float dtype; symmetrised).
    eig_cutoff
        Eigenvalues below ``eig_cutoff × λ_max`` are treated as zero.
    damping
        Ridge relative to the mean eigenvalue: ``ρ = damping × tr(A) / d``.

    Returns
    -------
    Tensor
        ``(d, d)`` float64.
    """
    vectors, values = kept_spectrum(matrix, eig_cutoff=eig_cutoff, damping=damping)
    return (vectors / values) @ vectors.T


def inverse_sqrt_psd(
    matrix: Tensor, *, eig_cutoff: float = DEFAULT_EIG_CUTOFF, damping: float = 0.0
) -> Tensor:
    """Pseudo-inverse square root ``(A + ρI)^{-1/2}`` of a PSD matrix on its kept range.

    Parameters
    ----------
    matrix
        ``(d, d)`` symmetric positive semi-definite matrix (any float dtype; symmetrised).
    eig_cutoff
        Eigenvalues below ``eig_cutoff × λ_max`` are treated as zero (their directions map to 0).
    damping
        Ridge relative to the mean eigenvalue: ``ρ = damping × tr(A) / d``.

    Returns
    -------
    Tensor
        ``(d, d)`` float64, symmetric; ``R A R`` is the projector on the kept range when
        ``damping = 0``.
    """
    vectors, values = kept_spectrum(matrix, eig_cutoff=eig_cutoff, damping=damping)
    return (vectors * values.rsqrt()) @ vectors.T


def optimal_update(
    S: Tensor,
    M: Tensor,
    *,
    damping: float = DEFAULT_DAMPING,
    eig_cutoff: float = DEFAULT_EIG_CUTOFF,
    max_update_norm: float | None = None,
) -> tuple[Tensor, float]:
    """Best change of ``second``'s weights, ``ΔW* = M S⁺`` (MATH.md §3), and its loss decrease.

    Parameters
    ----------
    S
        ``(d_h, d_h)`` input second moment ``E[h hᵀ]`` of ``second``.
    M
        ``(d_v, d_h)`` ``E[v hᵀ]`` (minus the loss gradient w.r.t. ``second``'s weight).
    damping, eig_cutoff
        Regularisation of ``S⁺``, see :func:`pseudo_inverse_psd`.
    max_update_norm
        When given and ``‖ΔW*‖_F`` exceeds it, ``ΔW*`` is rescaled to that Frobenius norm (a last
        guard against blow-ups that the ridge alone does not prevent).

    Returns
    -------
    delta_w
        ``(d_v, d_h)`` float64 update, to be ADDED to the weight (it is a descent direction).
    update_decrease
        ``tr(ΔW Mᵀ)``: the first-order loss decrease of applying the returned ``ΔW`` (equals
        ``tr(M S⁺ Mᵀ)`` without damping or rescaling).
    """
    S_pinv = pseudo_inverse_psd(S, eig_cutoff=eig_cutoff, damping=damping)
    return update_from_pseudo_inverse(M, S_pinv, max_update_norm=max_update_norm)


def update_from_pseudo_inverse(
    M: Tensor, S_pinv: Tensor, *, max_update_norm: float | None = None
) -> tuple[Tensor, float]:
    """:func:`optimal_update` given an already computed ``S⁺`` (float64 ``(d_h, d_h)``)."""
    if max_update_norm is not None and max_update_norm < 0:
        raise ValueError(f"max_update_norm must be >= 0, got {max_update_norm}")
    M = M.to(torch.float64)
    delta_w = M @ S_pinv
    if max_update_norm is not None:
        norm = torch.linalg.matrix_norm(delta_w)
        if norm > max_update_norm:
            delta_w = delta_w * (max_update_norm / norm)
    return delta_w, float((delta_w * M).sum())
