"""Growth events and where they go: every Lightning logger, W&B tables, the console, plots.

* :mod:`~lightning_grow.reporting.events`: :class:`GrowthEvent`, the record of one decision.
* :mod:`~lightning_grow.reporting.loggers`: :class:`GrowthReporter` (metrics, W&B tables).
* :mod:`~lightning_grow.reporting.console`: event lines and the architecture table.
* :mod:`~lightning_grow.reporting.plot`: width and parameter curves from a history or a CSV.
"""

from lightning_grow.reporting.events import GrowthEvent
from lightning_grow.reporting.loggers import GrowthReporter

__all__ = ["GrowthEvent", "GrowthReporter"]
