"""The registry of layer handlers: one handler per layer type, looked up by the module's type.

A *weight layer* can be the ``first`` or ``second`` layer of a growable pair (Linear, Conv2d);
a *norm* sits on the hidden tensor and grows with ``first`` (the BatchNorms). Everything the
package needs to know about one type (its widths and their attribute names, its input size and
kernel for the statistics, the checks before surgery and on load, how to replay it with other
weights for the amplitude search) is on its handler, so a new layer type is one new handler and
one :func:`register_layer` call, as Torch-Pruning does with its per-layer pruners.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from torch import Tensor, nn

__all__ = [
    "LayerHandler",
    "NormHandler",
    "is_norm",
    "is_weight_layer",
    "layer_handler",
    "norm_handler",
    "norm_types",
    "register_layer",
    "register_norm",
    "weight_layer_types",
]


class LayerHandler:
    """What the package knows about one type of weight layer.

    Attributes
    ----------
    module_types
        The ``nn.Module`` classes handled (subclasses included).
    label
        The type's name in messages (``"Linear"``, ``"Conv2d"``).
    spatial
        Whether the layer maps feature maps (kernel, output positions) rather than vectors.
    out_attribute, in_attribute
        The module attributes holding the output and input widths.
    unbatched_dims
        Dimensions of an unbatched input (1 for a vector, 3 for a ``(C, H, W)`` map).
    channel_dim
        The dimension of the layer's input and output that holds the features: -1 for a Linear
        (every leading dimension, batch and tokens alike, is a position), 1 for a convolution.
    """

    module_types: tuple[type[nn.Module], ...] = ()
    label: str = ""
    spatial: bool = False
    out_attribute: str = "out_features"
    in_attribute: str = "in_features"
    unbatched_dims: int = 1
    channel_dim: int = -1

    def problem(self, module: nn.Module) -> str | None:
        """Why this layer, of a handled type, cannot be part of a pair (``None``: it can)."""
        return None

    def out_width(self, module: nn.Module) -> int:
        """Output features / channels."""
        return int(getattr(module, self.out_attribute))

    def in_width(self, module: nn.Module) -> int:
        """Input features / channels."""
        return int(getattr(module, self.in_attribute))

    def input_size(self, module: nn.Module) -> int:
        """Entries of the layer's input seen by one output (without the bias): ``d_x``."""
        return self.in_width(module)

    def input_kernel(self, module: nn.Module) -> tuple[int, ...] | None:
        """``(C_in, kh, kw)`` for a layer with a kernel, else ``None`` (as ``first``); the
        statistics' 2-D view (``(C_in, 1, k)`` for a Conv1d)."""
        return None

    def kernel_size(self, module: nn.Module) -> tuple[int, ...] | None:
        """``(kh, kw)`` for a layer with a kernel, else ``None`` (as ``second``); the statistics'
        2-D view (``(1, k)`` for a Conv1d)."""
        return None

    def to_map(self, t: Tensor) -> Tensor:
        """The layer's batched input or output as the statistics read it: unchanged, except a
        Conv1d's ``(B, C, L)`` as the ``(B, C, 1, L)`` map of a Conv2d of height 1."""
        return t

    def accepts_norm(self, norm: nn.Module) -> bool:
        """Whether ``norm`` (a registered norm) may normalise this layer's output."""
        return True

    def forward(self, module: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """The layer's operation on ``x`` with other weights (new units tried without surgery)."""
        raise NotImplementedError

    def growth_problem(self, module: nn.Module) -> str | None:
        """Why surgery cannot widen this layer as it is now (``None``: it can)."""
        return None

    def resize_problem(self, module: nn.Module, incoming_weight: tuple[int, ...]) -> str | None:
        """Why this layer cannot take a checkpoint's weight of that shape (``None``: it can)."""
        return None

    def resized_widths(self, module: nn.Module, weight: tuple[int, ...]) -> dict[str, int]:
        """Width attributes → values once the layer holds a weight of shape ``weight``."""
        return {self.out_attribute: weight[0], self.in_attribute: weight[1]}


class NormHandler:
    """What the package knows about one type of norm on the hidden tensor.

    Attributes
    ----------
    module_types
        The ``nn.Module`` classes handled.
    label
        The type's name in messages.
    width_attribute
        The attribute holding the number of normalised units.
    fresh_values
        Per-unit tensor → value of a new unit (a freshly constructed layer's); absent: 0.
    """

    module_types: tuple[type[nn.Module], ...] = ()
    label: str = ""
    width_attribute: str = "num_features"
    fresh_values: ClassVar[Mapping[str, float]] = {}

    def width(self, module: nn.Module) -> int:
        """Units normalised."""
        return int(getattr(module, self.width_attribute))

    def fresh_value(self, attribute: str) -> float:
        """What a new unit's entry of ``attribute`` holds before it is trained or loaded."""
        return self.fresh_values.get(attribute, 0.0)

    def replay(
        self,
        module: nn.Module,
        z: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
    ) -> Tensor:
        """New units' pre-activations ``z`` through the norm in eval semantics, with the new
        units' own entries (``None``: a fresh layer's)."""
        raise NotImplementedError


_LAYERS: list[LayerHandler] = []
_NORMS: list[NormHandler] = []


def register_layer(handler: LayerHandler) -> LayerHandler:
    """Add a weight-layer handler; later registrations take precedence for their types."""
    _LAYERS.insert(0, handler)
    return handler


def register_norm(handler: NormHandler) -> NormHandler:
    """Add a norm handler; later registrations take precedence for their types."""
    _NORMS.insert(0, handler)
    return handler


def layer_handler(module: object) -> LayerHandler | None:
    """The handler of ``module``'s type, or ``None`` when it is not a registered weight layer."""
    for handler in _LAYERS:
        if isinstance(module, handler.module_types):
            return handler
    return None


def norm_handler(module: object) -> NormHandler | None:
    """The handler of ``module``'s type, or ``None`` when it is not a registered norm."""
    for handler in _NORMS:
        if isinstance(module, handler.module_types):
            return handler
    return None


def is_weight_layer(module: object) -> bool:
    """Whether ``module`` can be the ``first`` or ``second`` layer of a pair (by its type)."""
    return layer_handler(module) is not None


def is_norm(module: object) -> bool:
    """Whether ``module`` is a registered norm."""
    return norm_handler(module) is not None


def weight_layer_types() -> tuple[type[nn.Module], ...]:
    """Every registered weight-layer type, in registration order."""
    return tuple(t for handler in reversed(_LAYERS) for t in handler.module_types)


def norm_types() -> tuple[type[nn.Module], ...]:
    """Every registered norm type, in registration order."""
    return tuple(t for handler in reversed(_NORMS) for t in handler.module_types)
