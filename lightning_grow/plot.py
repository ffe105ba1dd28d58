"""Compatibility path: the growth plots live in :mod:`lightning_grow.reporting.plot`."""

from lightning_grow.reporting.plot import GrowthCurves, growth_curves, plot_growth

__all__ = ["GrowthCurves", "growth_curves", "plot_growth"]
