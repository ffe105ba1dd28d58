"""Where a plain ``torch.nn`` model can grow: growable pairs found by walking its fx graph.

* :mod:`~lightning_grow.topology.pairs`: :class:`GrowablePair` and how pairs are found or named.
* ``_pair_graph``: walking the graph from a layer to the next one.
* ``_hidden_ops``: which ops may sit on the hidden tensor, classified once at discovery.
* ``_discovery``: which network inside a LightningModule grows, and which of its pairs.
"""

from lightning_grow.topology.pairs import (
    GrowablePair,
    GrowthConfigurationError,
    PairName,
    PairSpec,
    find_growable_pairs,
    layer_problem,
    pairs_from_names,
    rejected_layers,
)

__all__ = [
    "GrowablePair",
    "GrowthConfigurationError",
    "PairName",
    "PairSpec",
    "find_growable_pairs",
    "layer_problem",
    "pairs_from_names",
    "rejected_layers",
]
