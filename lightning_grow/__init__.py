"""lightning_grow: grow neural networks while they train (TINY) as a Lightning callback.

The public API::

    GrowthCallback           the Lightning callback (start here)
    find_growable_pairs      where a plain torch.nn model can grow
    compute_candidates       the TINY math on one pair's moments
    PairStatistics           hooks that gather those moments
    grow_pair, NewNeurons    widen a pair (and its optimizer state)
    ResizeOnLoadMixin        load grown checkpoints into freshly built models
"""

from lightning_grow.callback.growth import GrowthCallback
from lightning_grow.reporting.events import GrowthEvent
from lightning_grow.reporting.loggers import GrowthReporter
from lightning_grow.solver.linalg import SolveError
from lightning_grow.solver.moments import PairGeometry, PairMoments
from lightning_grow.solver.tiny import GrowthCandidates, compute_candidates
from lightning_grow.statistics.accumulator import PairStatistics, reduce_statistics
from lightning_grow.surgery.checkpoint import (
    ResizeOnLoadMixin,
    enable_resize_on_load,
    resize_to_state_dict,
)
from lightning_grow.surgery.optim import ParameterGrowth, replace_parameters
from lightning_grow.surgery.widen import NewNeurons, count_parameters, grow_pair
from lightning_grow.topology.pairs import (
    GrowablePair,
    GrowthConfigurationError,
    find_growable_pairs,
    pairs_from_names,
)

__all__ = [
    "GrowablePair",
    "GrowthCallback",
    "GrowthCandidates",
    "GrowthConfigurationError",
    "GrowthEvent",
    "GrowthReporter",
    "NewNeurons",
    "PairGeometry",
    "PairMoments",
    "PairStatistics",
    "ParameterGrowth",
    "ResizeOnLoadMixin",
    "SolveError",
    "compute_candidates",
    "count_parameters",
    "enable_resize_on_load",
    "find_growable_pairs",
    "grow_pair",
    "pairs_from_names",
    "reduce_statistics",
    "replace_parameters",
    "resize_to_state_dict",
]
__version__ = "0.1.0"
