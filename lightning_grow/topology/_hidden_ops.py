"""Which operations may sit on the hidden tensor of a growable pair, and what they imply.

An op between ``first`` and ``second`` is allowed when applying it to the hidden tensor works
unit by unit (so new units can be appended): BatchNorm, pointwise activations, dropout, identity
and, for Conv2d → Linear only, a flatten from dimension 1. This module classifies one torch.fx
node into such an op (or gives the reason it is not allowed); :mod:`lightning_grow.topology.pairs`
walks the graph.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from lightning_grow.layers import OpKind, is_norm, norm_types, weight_layer_types
from lightning_grow.layers.depthwise import is_grouped_conv
from lightning_grow.layers.norms import cross_unit_reason

#: Activation modules: (one-sided derivative at 0 from the right, dead at exactly 0).
#: Mish'(0) = tanh(softplus(0)) = tanh(ln 2) = 0.6; Softplus'(0) = sigmoid(0) = 0.5 for any beta.
ACTIVATION_MODULES: dict[type[nn.Module], tuple[float, bool]] = {
    nn.ReLU: (1.0, True),
    nn.ReLU6: (1.0, True),
    nn.LeakyReLU: (1.0, False),
    nn.GELU: (0.5, False),
    nn.SiLU: (0.5, False),
    nn.Tanh: (1.0, False),
    nn.Sigmoid: (0.25, False),
    nn.ELU: (1.0, False),
    nn.Hardswish: (0.5, False),
    nn.Mish: (0.6, False),
    nn.Softplus: (0.5, False),
}

# Functional and method spellings of the same activations, keyed by the name fx records.
ACTIVATION_FUNCTIONS: dict[str, tuple[float, bool]] = {
    "relu": (1.0, True),
    "relu_": (1.0, True),
    "relu6": (1.0, True),
    "leaky_relu": (1.0, False),
    "leaky_relu_": (1.0, False),
    "gelu": (0.5, False),
    "silu": (0.5, False),
    "tanh": (1.0, False),
    "tanh_": (1.0, False),
    "sigmoid": (0.25, False),
    "sigmoid_": (0.25, False),
    "elu": (1.0, False),
    "elu_": (1.0, False),
    "hardswish": (0.5, False),
    "mish": (0.6, False),
    "softplus": (0.5, False),
}
_FUNCTION_TARGETS: dict[Any, str] = {
    F.relu: "relu",
    torch.relu: "relu",
    torch.relu_: "relu_",
    F.relu6: "relu6",
    F.leaky_relu: "leaky_relu",
    F.leaky_relu_: "leaky_relu_",
    F.gelu: "gelu",
    F.silu: "silu",
    torch.tanh: "tanh",
    F.tanh: "tanh",
    torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
    F.elu: "elu",
    F.elu_: "elu_",
    F.hardswish: "hardswish",
    F.mish: "mish",
    F.softplus: "softplus",
    F.dropout: "dropout",
    F.dropout1d: "dropout1d",
    F.dropout2d: "dropout2d",
    torch.dropout: "dropout",
    torch.flatten: "flatten",
}
_DROPOUT_NAMES = frozenset({"dropout", "dropout1d", "dropout2d"})
_FLATTEN_METHODS = frozenset({"flatten", "view", "reshape"})
DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d)
_POOLING_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.LPPool2d,
)
_POOLING_FUNCTIONS = frozenset(
    {
        "max_pool1d",
        "max_pool2d",
        "avg_pool1d",
        "avg_pool2d",
        "adaptive_avg_pool1d",
        "adaptive_avg_pool2d",
        "adaptive_max_pool1d",
        "adaptive_max_pool2d",
        "lp_pool2d",
    }
)
#: Modules the pair tracer keeps as single graph nodes even when the user subclassed them.
LEAF_MODULES: tuple[type[nn.Module], ...] = (
    *weight_layer_types(),
    *norm_types(),
    *DROPOUT_MODULES,
    *ACTIVATION_MODULES,
    nn.Identity,
    nn.Flatten,
)

SUPPORTED_OPS = (
    "BatchNorm1d/2d, activations (ReLU, ReLU6, LeakyReLU, GELU, SiLU, Tanh, Sigmoid, ELU, "
    "Hardswish, Mish, Softplus, as modules, functions or tensor methods), Dropout/Dropout1d/2d, "
    "Identity, a stride-1 depthwise Conv1d/2d with centred padding (each followed by at most "
    "one BatchNorm), and flatten(1) between a Conv2d and a Linear"
)


def flatten_batch(z: Tensor) -> Tensor:
    """Flatten every dimension but the first (what the graph's flatten/view/reshape does)."""
    return torch.flatten(z, 1)


class BoundCall:
    """``target(z, *rest, **kwargs)``: a functional/method call replayed on another tensor.

    In-place variants are replayed out of place so that replaying never mutates its input.
    """

    def __init__(self, name: str, target: Callable[..., Tensor], rest: tuple, kwargs: dict) -> None:
        self.__name__ = name
        self.target = target
        self.rest = rest
        self.kwargs = {key: value for key, value in kwargs.items() if key != "inplace"}

    def __call__(self, z: Tensor) -> Tensor:
        return self.target(z, *self.rest, **self.kwargs)

    def __repr__(self) -> str:
        return f"BoundCall({self.__name__})"


def out_of_place(name: str) -> Callable[..., Tensor]:
    """The out-of-place function behind an activation or tensor-method name (``relu_`` → F.relu)."""
    base = name.rstrip("_")
    if hasattr(F, base):
        return getattr(F, base)
    return getattr(torch, base)


@dataclass(frozen=True)
class HiddenOp:
    """One allowed op on the hidden tensor.

    Attributes
    ----------
    kind
        What the op does to a unit (:class:`~lightning_grow.layers.ops.OpKind`): the amplitude
        search replays the op by its kind, never by its name.
    name
        The module's qualified name, or the function / method name for a functional call.
    op
        The module, or a callable replaying the functional call on another tensor.
    slope, dead_at_zero
        For activations: one-sided derivative at 0 and whether PyTorch's derivative at exactly 0
        is 0.
    flatten_features
        For ``view(-1, n)`` / ``reshape(-1, n)``: the ``n`` the following Linear must accept.
    """

    kind: OpKind
    name: str
    op: Callable[[Tensor], Tensor]
    slope: float = 1.0
    dead_at_zero: bool = False
    flatten_features: int | None = None

    def __iter__(self) -> Iterator[Any]:
        """``name, op = hidden_op``: unpacks like the ``(name, op)`` pairs it replaced."""
        return iter((self.name, self.op))

    def __getitem__(self, index: int) -> Any:
        """``hidden_op[0]`` is the name, ``hidden_op[1]`` the op, as in a ``(name, op)`` pair."""
        return (self.name, self.op)[index]


def as_hidden_op(name: str, op: Callable[[Tensor], Tensor]) -> HiddenOp:
    """A :class:`HiddenOp` for a ``(name, op)`` pair given without its kind (a hand-built
    :class:`~lightning_grow.topology.pairs.GrowablePair`): the kind comes from the op's type
    (or, for a replayed functional call, from the function discovery recorded), not the name."""
    if is_norm(op):
        return HiddenOp(OpKind.BATCH_NORM, name, op)
    if is_grouped_conv(op):
        return HiddenOp(OpKind.DEPTHWISE, name, op)
    if isinstance(op, DROPOUT_MODULES):
        return HiddenOp(OpKind.DROPOUT, name, op)
    if isinstance(op, nn.Identity):
        return HiddenOp(OpKind.IDENTITY, name, op)
    if isinstance(op, nn.Flatten) or op is flatten_batch:
        return HiddenOp(OpKind.FLATTEN, name, op)
    if isinstance(op, BoundCall) and op.__name__ in _DROPOUT_NAMES:
        return HiddenOp(OpKind.DROPOUT, name, op)
    return HiddenOp(OpKind.ACTIVATION, name, op)


def is_shape_query(node: fx.Node) -> bool:
    """``x.size(...)``, ``x.dim()``, ``x.shape``: reads metadata, never values."""
    if node.op == "call_method" and node.target in ("size", "dim"):
        return True
    return (
        node.op == "call_function"
        and node.target is getattr
        and len(node.args) > 1
        and node.args[1] in ("shape", "ndim")
    )


def _is_batch_size_of(arg: Any, tensor: fx.Node) -> bool:
    """``tensor.size(0)``, ``tensor.shape[0]`` or ``tensor.size()[0]``."""
    if not isinstance(arg, fx.Node):
        return False
    if arg.op == "call_method" and arg.target == "size" and arg.args[0] is tensor:
        return arg.args[1:] == (0,) or arg.kwargs.get("dim") == 0
    if arg.op == "call_function" and arg.target is operator.getitem and arg.args[1] == 0:
        source = arg.args[0]
        return isinstance(source, fx.Node) and (
            (source.op == "call_function" and source.target is getattr and source.args[0] is tensor)
            or (source.op == "call_method" and source.target == "size" and source.args[0] is tensor)
        )
    return False


def _flatten_shape(args: tuple, tensor: fx.Node) -> tuple[bool, int | None]:
    """Whether ``view``/``reshape`` arguments keep the batch dimension and flatten the rest.

    Returns ``(ok, n)`` where ``n`` is the explicit flattened size of ``view(-1, n)`` (checked
    against the following Linear by the caller), else ``None``.
    """
    shape = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
    if len(shape) != 2:
        return False, None
    batch, rest = shape
    batch_ok = batch == -1 or _is_batch_size_of(batch, tensor)
    explicit = isinstance(rest, int) and rest > 0
    rest_ok = rest == -1 or explicit
    ok = batch_ok and rest_ok and not (batch == -1 and rest == -1)
    return ok, (rest if explicit else None)


def _refers_to(value: Any, node: fx.Node) -> bool:
    if value is node:
        return True
    if isinstance(value, (tuple, list)):
        return any(_refers_to(item, node) for item in value)
    if isinstance(value, dict):
        return any(_refers_to(item, node) for item in value.values())
    return False


def _other_tensor_inputs(node: fx.Node, hidden: fx.Node, allow_shape_of_hidden: bool) -> list:
    """Graph values other than ``hidden`` that ``node`` reads (besides shape queries)."""
    others = []
    for value in (*node.args, *node.kwargs.values()):
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if not isinstance(item, fx.Node) or item is hidden:
                continue
            if allow_shape_of_hidden and _is_batch_size_of(item, hidden):
                continue
            others.append(item)
    return others


def classify(node: fx.Node, hidden: fx.Node, root: nn.Module) -> HiddenOp | str:
    """The :class:`HiddenOp` that ``node`` applies to ``hidden``, or why it is not allowed.

    Parameters
    ----------
    node
        The single reader of ``hidden``.
    hidden
        The graph value holding the hidden tensor.
    root
        The traced module (to resolve ``call_module`` targets).
    """
    flatten_method = node.op == "call_method" and node.target in _FLATTEN_METHODS
    others = _other_tensor_inputs(node, hidden, allow_shape_of_hidden=flatten_method)
    if others or not node.args or node.args[0] is not hidden:
        other = describe(others[0]) if others else "another value"
        return (
            f"{describe(node)} combines the hidden tensor with {other} (a residual add, concat "
            "or similar): the hidden tensor must flow only into the next layer"
        )
    if _refers_to(node.args[1:], hidden) or _refers_to(node.kwargs, hidden):
        return f"{describe(node)} reads the hidden tensor twice"
    if node.op == "call_module":
        return _classify_module(node, root)
    if node.op == "call_function":
        name = _FUNCTION_TARGETS.get(node.target)
        if name is None:
            target_name = getattr(node.target, "__name__", str(node.target))
            if target_name in _POOLING_FUNCTIONS:
                return f"pooling ({target_name}) between the layers is not supported"
            return f"function {target_name} on the hidden tensor is not supported"
        target = out_of_place(name) if name.endswith("_") else node.target
        return _classify_call(node, hidden, name, target)
    if node.op == "call_method":
        name = str(node.target)
        if name in _FLATTEN_METHODS:
            return _classify_call(node, hidden, name, flatten_batch)
        if name in ACTIVATION_FUNCTIONS:
            return _classify_call(node, hidden, name, out_of_place(name))
        return f"tensor method .{name}() on the hidden tensor is not supported"
    return f"{describe(node)} is not an operation on the hidden tensor"


def _classify_module(node: fx.Node, root: nn.Module) -> HiddenOp | str:
    name = str(node.target)
    module = root.get_submodule(name)
    kind = type(module).__name__
    if is_norm(module):
        return HiddenOp(OpKind.BATCH_NORM, name, module)
    for activation_type, (slope, dead) in ACTIVATION_MODULES.items():
        if isinstance(module, activation_type):
            if isinstance(module, nn.LeakyReLU):
                dead = module.negative_slope == 0
            return HiddenOp(OpKind.ACTIVATION, name, module, slope, dead)
    if isinstance(module, DROPOUT_MODULES):
        return HiddenOp(OpKind.DROPOUT, name, module)
    if isinstance(module, nn.Identity):
        return HiddenOp(OpKind.IDENTITY, name, module)
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            return f"{name} (Flatten(start_dim={module.start_dim}, end_dim={module.end_dim}))"
        return HiddenOp(OpKind.FLATTEN, name, module)
    if isinstance(module, _POOLING_MODULES):
        return f"pooling ({name}: {kind}) between the layers is not supported"
    across = cross_unit_reason(module)
    if across is not None:
        return f"{name} ({kind}) {across}"
    return f"module {name} ({kind}) on the hidden tensor is not supported"


def _classify_call(node: fx.Node, hidden: fx.Node, name: str, target: Callable) -> HiddenOp | str:
    if name in _FLATTEN_METHODS:
        rest = node.args[1:]
        features = None
        if name == "flatten":
            start = rest[0] if rest else node.kwargs.get("start_dim", 0)
            end = rest[1] if len(rest) > 1 else node.kwargs.get("end_dim", -1)
            ok = start == 1 and end == -1
        else:
            ok, features = _flatten_shape(rest, hidden)
        if not ok:
            shown = ", ".join(a.name if isinstance(a, fx.Node) else repr(a) for a in rest)
            return f"{name}({shown}) is not a flatten that keeps the batch dimension"
        return HiddenOp(OpKind.FLATTEN, name, flatten_batch, flatten_features=features)
    replay = BoundCall(name, target, tuple(node.args[1:]), dict(node.kwargs))
    if name in _DROPOUT_NAMES:
        return HiddenOp(OpKind.DROPOUT, name, replay)
    slope, dead = ACTIVATION_FUNCTIONS[name]
    if name.startswith("leaky_relu"):
        negative_slope = node.args[1] if len(node.args) > 1 else node.kwargs.get("negative_slope")
        dead = negative_slope == 0
    return HiddenOp(OpKind.ACTIVATION, name, replay, slope, dead)


def describe(node: fx.Node) -> str:
    """A short human-readable name of a graph node for error messages."""
    if node.op == "call_module":
        return f"module {node.target}"
    if node.op == "call_function":
        return f"function {getattr(node.target, '__name__', node.target)}"
    if node.op == "call_method":
        return f"method .{node.target}()"
    if node.op == "placeholder":
        return f"the forward argument {node.target}"
    return f"{node.op} {node.name}"
