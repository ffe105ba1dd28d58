"""What the package knows about each layer type, one handler per type, in one registry.

* :mod:`~lightning_grow.layers.registry`: :class:`LayerHandler` (weight layers),
  :class:`NormHandler` (norms on the hidden tensor) and the lookup by module type.
* :mod:`~lightning_grow.layers.linear`, :mod:`~lightning_grow.layers.conv`: the weight layers
  (Linear on any ``(B, ..., D)``, Conv1d, Conv2d).
* :mod:`~lightning_grow.layers.norms`: the BatchNorms, and why norms across units cannot pair.
* :mod:`~lightning_grow.layers.depthwise`: depthwise convolutions that grow with the hidden
  channels (a delta filter per new channel), and why grouped ones cannot.
* :mod:`~lightning_grow.layers.blocks`: torch.nn blocks whose layers cannot pair, and why.
* :mod:`~lightning_grow.layers.ops`: the kinds of op between the layers and their replay.
* ``_unfold``: a convolution's patches, for its statistics.

Importing this package registers the built-in handlers.
"""

from lightning_grow.layers import conv, linear, norms  # noqa: F401 - registers the handlers
from lightning_grow.layers.norms import BATCH_NORM_TYPES
from lightning_grow.layers.ops import OpKind, replay_op
from lightning_grow.layers.registry import (
    LayerHandler,
    NormHandler,
    is_norm,
    is_weight_layer,
    layer_handler,
    norm_handler,
    norm_types,
    register_layer,
    register_norm,
    weight_layer_types,
)

__all__ = [
    "BATCH_NORM_TYPES",
    "LayerHandler",
    "NormHandler",
    "OpKind",
    "is_norm",
    "is_weight_layer",
    "layer_handler",
    "norm_handler",
    "norm_types",
    "register_layer",
    "register_norm",
    "replay_op",
    "weight_layer_types",
]
