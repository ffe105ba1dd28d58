"""The TINY math on one pair's moments: pure float64 torch, nothing about modules or Lightning.

* :mod:`~lightning_grow.solver.moments`: the contract with the statistics (geometry, moments).
* :mod:`~lightning_grow.solver.linalg`: regularised pseudo-inverses, square roots, SVDs.
* :mod:`~lightning_grow.solver.tiny`: best update, bottleneck, new neurons, significance.
"""

from lightning_grow.solver.linalg import SolveError
from lightning_grow.solver.moments import PairGeometry, PairKind, PairMoments
from lightning_grow.solver.tiny import GrowthCandidates, compute_candidates

__all__ = [
    "GrowthCandidates",
    "PairGeometry",
    "PairKind",
    "PairMoments",
    "SolveError",
    "compute_candidates",
]
