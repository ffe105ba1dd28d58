"""Robust float64 linear algebra on second-moment matrices (symmetric positive semi-definite).

Moment matrices reach the math core accumulated in float32 over finite batches, so they are
only approximately symmetric and often rank-deficient (always-zero pixels, duplicated or dead
features, fewer samples than dimensions), and their features can live on wildly different scales
(inputs in the thousands next to the constant 1 of a bias). Every inverse here therefore goes
through one symmetric eigendecomposition of the **standardised** matrix
``B = D^{-1/2} A D^{-1/2}`` (features whose diagonal is exactly zero are always-zero and are left
out). ``D`` puts every varying feature on one common scale ``m`` (their mean second moment); a
constant feature (bias entry) gets its own scale ``A_ii`` when that is more than 100 times away
from ``m``. Two safeguards act on ``B``:

* a **relative cutoff**: eigenvalues of ``B`` below ``eig_cutoff × λ_max(B)`` are treated as exact
  zeros (pseudo-inverse). float32 accumulation leaves round-off of relative size ~1e-7 (its
  machine epsilon) in every entry, i.e. at most ~1e-7 in every entry of ``B``, so eigenvalues
  below that level carry no information about the data; :data:`DEFAULT_EIG_CUTOFF` is set there.
* an optional **ridge** ``damping`` added to the kept eigenvalues of ``B``, which is the ridge
  ``damping × D`` on ``A``. Directions that are nearly but not exactly collinear survive the
  cutoff with tiny eigenvalues; inverting them multiplies sampling noise by ``1/λ`` and produces
  huge weights (GroMo's unregularised solve grew a norm-3 layer to 6,860 on a regression task).
  With the ridge a standardised direction can never be amplified by more than ``1 / damping``.
  :data:`DEFAULT_DAMPING` = 1e-3 shrinks well-conditioned directions by at most ~0.1 %, a
  negligible bias next to sampling noise.

Why this ``D``: a cutoff and a ridge on ``A`` itself are scale-free only for a common scale of
all features. With inputs at scale 1e4 next to the bias entry's constant 1, the bias direction's
eigenvalue is ~1e-8 of the largest: the cutoff dropped it, or the ridge (~1e5) swamped it, so
``ΔW*`` could not fit the mean of ``v`` and that unfitted mean was declared a significant
bottleneck (20 of 20 null runs at scales 1e4–1e6); hence the bias entry's own scale there.
Standardising *every* feature on its own (``D = Diag(A)``) fixes that too, but it lifts features
with a small second moment (a hidden unit that has barely started, a rarely lit pixel) to the
footing of the others, so ``ΔW*`` and the TINY neurons lean on them and fit sampling noise:
digits test cross-entropy rose from ~0.16 to ~0.26 at the same accuracy (0.14 on the common
scale, seeds 0–3). On the common scale such a feature is damped as in an ordinary ridge
regression. ``D`` is invariant to a common rescaling of the
varying features. The solution on a rank-deficient matrix is the minimum-norm one in
standardised coordinates.

Failures never leave here as LAPACK errors: a decomposition that does not converge (seen on
densenet121 on a GPU, where 1024 of 1152 rows of ``S`` were zero) is retried in float64 on the
CPU, then with a tiny diagonal shift; if that fails too, or the input is not finite,
:class:`SolveError` names the matrix size, so that a caller can skip that pair.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_DAMPING",
    "DEFAULT_EIG_CUTOFF",
    "SolveError",
    "eigh_psd",
    "inverse_sqrt_psd",
    "kept_spectrum",
    "optimal_update",
    "pseudo_inverse_psd",
    "svd",
    "symmetrise",
    "update_from_pseudo_inverse",
]

DEFAULT_EIG_CUTOFF = 1e-7
DEFAULT_DAMPING = 1e-3

# Relative size of the diagonal shift of the last retry: far below the cutoff, so that it moves
# no eigenvalue across it, and far above float64 round-off, so that it separates the clusters
# of (near-)equal eigenvalues on which the iterative LAPACK solvers can stall.
_RETRY_SHIFT = 1e-10

# How far (as a factor) a bias entry's second moment must be from the features' common scale to
# be standardised on its own (module docstring).
_OFF_SCALE = 100.0


class SolveError(ArithmeticError, ValueError):
    """A moment matrix could not be decomposed (non-finite, or the solver did not converge).

    Also a ``ValueError`` so that callers that caught the former non-finite-input error still
    catch it.
    """


def symmetrise(matrix: Tensor) -> Tensor:
    """``(A + Aᵀ) / 2`` in float64: removes the asymmetry left by float32 accumulation."""
    matrix = matrix.to(torch.float64)
    return 0.5 * (matrix + matrix.transpose(-1, -2))


def _check_finite(matrix: Tensor, what: str) -> None:
    if not torch.isfinite(matrix).all():
        raise SolveError(f"{what} of shape {tuple(matrix.shape)} contains NaN or inf")


def _with_retries(
    decompose: Callable[[Tensor], tuple[Tensor, ...]], matrix: Tensor, what: str
) -> tuple[Tensor, ...]:
    """``decompose(matrix)``, retried once in float64 on the CPU; :class:`SolveError` if both fail.

    GPU solvers (cuSOLVER) fail on some inputs that LAPACK on the CPU decomposes, and a float32
    input can fail where float64 converges.
    """
    try:
        return decompose(matrix)
    except RuntimeError as first_error:  # torch.linalg.LinAlgError is a RuntimeError
        error: RuntimeError = first_error
    device = matrix.device
    on_cpu = matrix.detach().to("cpu", torch.float64)
    try:
        return tuple(t.to(device) for t in decompose(on_cpu))
    except RuntimeError as cpu_error:
        error = cpu_error
    raise SolveError(
        f"{what} of a {_size(matrix)} matrix failed, also in float64 on the CPU: {error}"
    ) from error


def _size(matrix: Tensor) -> str:
    """``"1152 × 1152"`` (with the batch dimensions first for a batch of matrices)."""
    return " × ".join(str(s) for s in matrix.shape)


def eigh_psd(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.linalg.eigh`` of a symmetric float64 matrix that does not fail with LAPACK errors.

    On a convergence failure it retries in float64 on the CPU, then on ``A + s I`` with
    ``s = 1e-10 × max|A_ii|`` (the returned eigenvalues have ``s`` subtracted again; the
    eigenvectors are those of ``A`` up to rotations within eigenvalue clusters narrower than
    ``s``).

    Raises
    ------
    SolveError
        When the input is not finite, or every attempt failed (the message names the size).
    """
    _check_finite(matrix, "symmetric matrix")
    try:
        return _with_retries(torch.linalg.eigh, matrix, "eigendecomposition")  # type: ignore[return-value]
    except SolveError as error:
        last_error: Exception = error
    on_cpu = matrix.detach().to("cpu", torch.float64)
    shift = _RETRY_SHIFT * float(on_cpu.diagonal(dim1=-2, dim2=-1).abs().max().clamp_min(1e-300))
    identity = torch.eye(on_cpu.shape[-1], dtype=on_cpu.dtype)
    try:
        values, vectors = torch.linalg.eigh(on_cpu + shift * identity)
    except RuntimeError as error:
        raise SolveError(
            f"eigendecomposition of a {_size(matrix)} matrix failed, also in float64 on the CPU "
            f"and with a diagonal shift of {shift:.3g}: {error}"
        ) from last_error
    return (values - shift).to(matrix.device), vectors.to(matrix.device)


def svd(matrix: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin ``torch.linalg.svd`` that retries in float64 on the CPU instead of failing.

    Raises
    ------
    SolveError
        When the input is not finite, or both attempts failed (the message names the size).
    """
    _check_finite(matrix, "matrix")
    return _with_retries(  # type: ignore[return-value]
        lambda m: torch.linalg.svd(m, full_matrices=False), matrix, "singular value decomposition"
    )


def _regularised_spectrum(
    matrix: Tensor, *, eig_cutoff: float, damping: float, constant_features: Sequence[int] = ()
) -> tuple[Tensor, Tensor, Tensor]:
    """Factor columns, regularised eigenvalues and the kept mask of a PSD matrix (module doc).

    Returns ``(V, values, kept)`` with ``V = D^{-1/2} U`` (``U`` the eigenvectors of the
    standardised ``B``; rows of always-zero features are 0), so that the regularised
    pseudo-inverse is ``V[:, kept] diag(1 / values[kept]) V[:, kept]ᵀ``. ``V`` is orthonormal
    only when ``A`` has a constant diagonal.
    """
    if eig_cutoff < 0 or damping < 0:
        raise ValueError(f"eig_cutoff and damping must be >= 0, got {eig_cutoff}, {damping}")
    symmetric = symmetrise(matrix)
    _check_finite(symmetric, "moment matrix")
    dim = symmetric.shape[-1]
    diagonal = symmetric.diagonal()
    active = (diagonal > 0).nonzero().squeeze(1)
    if active.numel() == 0:  # the zero matrix (or dim 0): nothing to invert
        return symmetric.new_zeros(dim, 0), symmetric.new_zeros(0), symmetric.new_zeros(0).bool()
    # Decompose only the features that are ever non-zero: a PSD matrix is zero on the rows and
    # columns of a zero diagonal entry, and the all-zero block is what made eigh fail on
    # densenet121 (1024 of 1152 rows of S).
    inverse_scale = _feature_scale(diagonal, active, constant_features).rsqrt()
    block = symmetric[active][:, active] * inverse_scale[:, None] * inverse_scale[None, :]
    eigenvalues, eigenvectors = eigh_psd(block)
    eigenvalues = eigenvalues.clamp_min(0.0)
    kept = eigenvalues > eig_cutoff * eigenvalues.max()
    vectors = symmetric.new_zeros(dim, active.numel())
    vectors[active] = eigenvectors * inverse_scale[:, None]
    return vectors, eigenvalues + damping, kept


def _feature_scale(diagonal: Tensor, active: Tensor, constant_features: Sequence[int]) -> Tensor:
    """``D_ii`` of the standardisation, for the active features (module docstring).

    ``m``, the mean second moment of the active varying features, for every varying feature; a
    constant feature (bias entry) keeps ``A_ii`` when that is more than :data:`_OFF_SCALE` times
    away from ``m``, and shares ``m`` otherwise.
    """
    scale = diagonal[active].clone()
    constant = torch.zeros_like(diagonal, dtype=torch.bool)
    if len(constant_features):
        constant[torch.as_tensor(list(constant_features), device=diagonal.device)] = True
    constant = constant[active]
    varying = ~constant
    if varying.any():
        common = scale[varying].mean()
        off_scale = (scale > _OFF_SCALE * common) | (scale * _OFF_SCALE < common)
        scale[varying | ~off_scale] = common
    return scale


def kept_spectrum(
    matrix: Tensor,
    *,
    eig_cutoff: float = DEFAULT_EIG_CUTOFF,
    damping: float = 0.0,
    constant_features: Sequence[int] = (),
) -> tuple[Tensor, Tensor]:
    """``(V, values)`` on the kept range: the regularised pseudo-inverse is ``V diag(1/values) Vᵀ``.

    One eigendecomposition serves the pseudo-inverse, a factor of it (``V diag(values^{-1/2})``,
    whose Gram matrix is the pseudo-inverse) and the rank (``values.numel()``); see
    :func:`pseudo_inverse_psd` for the arguments. ``V = D^{-1/2} U`` is not orthonormal unless
    ``A`` has a constant diagonal (module docstring).

    Raises
    ------
    SolveError
        When ``matrix`` is not finite or cannot be decomposed.
    """
    vectors, values, kept = _regularised_spectrum(
        matrix, eig_cutoff=eig_cutoff, damping=damping, constant_features=constant_features
    )
    return vectors[:, kept], values[kept]


def pseudo_inverse_psd(
    matrix: Tensor,
    *,
    eig_cutoff: float = DEFAULT_EIG_CUTOFF,
    damping: float = 0.0,
    constant_features: Sequence[int] = (),
) -> Tensor:
    """Regularised pseudo-inverse of a PSD matrix, ``(A + damping · D)⁻¹`` on its kept range.

    Computed on the standardised ``B = D^{-1/2} A D^{-1/2}`` as ``D^{-1/2} (B + damping I)⁺
    D^{-1/2}`` (module docstring: ``D`` is the features' common scale). Without damping this is
    ``A⁻¹`` for an invertible ``A`` and a reflexive generalised inverse ``G`` (``A G A = A``,
    ``G A G = G``) otherwise.

    Parameters
    ----------
    matrix
        ``(d, d)`` symmetric positive semi-definite matrix (any float dtype; symmetrised).
    eig_cutoff
        Eigenvalues of ``B`` below ``eig_cutoff × λ_max(B)`` are treated as zero.
    damping
        Ridge ``damping × D_ii`` on feature ``i`` (module docstring).
    constant_features
        Indices of features that are a constant 1 (bias entries): standardised on their own
        second moment.

    Returns
    -------
    Tensor
        ``(d, d)`` float64.

    Raises
    ------
    SolveError
        When ``matrix`` is not finite or cannot be decomposed.
    """
    vectors, values = kept_spectrum(
        matrix, eig_cutoff=eig_cutoff, damping=damping, constant_features=constant_features
    )
    return (vectors / values) @ vectors.T


def inverse_sqrt_psd(
    matrix: Tensor, *, eig_cutoff: float = DEFAULT_EIG_CUTOFF, damping: float = 0.0
) -> Tensor:
    """The symmetric square root ``R`` of :func:`pseudo_inverse_psd` (``R R`` = that inverse).

    Parameters
    ----------
    matrix
        ``(d, d)`` symmetric positive semi-definite matrix (any float dtype; symmetrised).
    eig_cutoff, damping
        As in :func:`pseudo_inverse_psd`.

    Returns
    -------
    Tensor
        ``(d, d)`` float64, symmetric; ``R A R`` is an orthogonal projector of rank
        ``rank(A)`` when ``damping = 0`` (it whitens ``A`` on its kept range), and ``A^{-1/2}``
        when ``A`` is invertible.

    Raises
    ------
    SolveError
        When ``matrix`` is not finite or cannot be decomposed.
    """
    inverse = pseudo_inverse_psd(matrix, eig_cutoff=eig_cutoff, damping=damping)
    # A second decomposition: the factor V diag(values^{-1/2}) is a square root but not a
    # symmetric one when V is not orthonormal.
    values, vectors = eigh_psd(symmetrise(inverse))
    return (vectors * values.clamp_min(0.0).sqrt()) @ vectors.T


def optimal_update(
    S: Tensor,
    M: Tensor,
    *,
    damping: float = DEFAULT_DAMPING,
    eig_cutoff: float = DEFAULT_EIG_CUTOFF,
    max_update_norm: float | None = None,
    constant_features: Sequence[int] = (),
) -> tuple[Tensor, float]:
    """Best change of ``second``'s weights, ``ΔW* = M S⁺`` (docs/math.md §3), and its loss decrease.

    Parameters
    ----------
    S
        ``(d_h, d_h)`` input second moment ``E[h hᵀ]`` of ``second``.
    M
        ``(d_v, d_h)`` ``E[v hᵀ]`` (minus the loss gradient w.r.t. ``second``'s weight).
    damping, eig_cutoff, constant_features
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
    S_pinv = pseudo_inverse_psd(
        S, eig_cutoff=eig_cutoff, damping=damping, constant_features=constant_features
    )
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
