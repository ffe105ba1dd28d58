"""Widen layers and what depends on their shapes: optimizer state and checkpoints.

* :mod:`~lightning_grow.surgery.widen`: plan-then-commit growth of a pair, with rollback.
* :mod:`~lightning_grow.surgery.optim`: re-point the optimizer and pad its state.
* :mod:`~lightning_grow.surgery.checkpoint`: resize freshly built models to grown checkpoints.
"""

from lightning_grow.surgery.checkpoint import (
    ResizeOnLoadMixin,
    enable_resize_on_load,
    resize_to_state_dict,
)
from lightning_grow.surgery.optim import ParameterGrowth, replace_parameters
from lightning_grow.surgery.widen import (
    ModuleEdit,
    NewNeurons,
    all_or_nothing,
    count_parameters,
    grow_pair,
)

__all__ = [
    "ModuleEdit",
    "NewNeurons",
    "ParameterGrowth",
    "ResizeOnLoadMixin",
    "all_or_nothing",
    "count_parameters",
    "enable_resize_on_load",
    "grow_pair",
    "replace_parameters",
    "resize_to_state_dict",
]
