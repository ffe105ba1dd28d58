"""Hooks on a pair's layers that accumulate its moments from ordinary training batches.

* :mod:`~lightning_grow.statistics.accumulator`: :class:`PairStatistics`, the cross-rank
  reduction and lazily computed moments.
* ``_moment_sums``: one batch's exact sums into one flat buffer.
* ``_sampled_sums``: position-sampled sums for wide convolutions (an unbiased estimate).
"""

from lightning_grow.statistics.accumulator import LazyMoments, PairStatistics, reduce_statistics

__all__ = ["LazyMoments", "PairStatistics", "reduce_statistics"]
