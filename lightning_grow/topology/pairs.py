"""Where a plain ``torch.nn`` model can grow: growable (first, second) layer pairs.

A pair is ``first → [ops] → second`` (Linear/Conv2d → BatchNorm, activation, dropout, identity,
flatten → Linear/Conv2d) where every tensor between the two layers has exactly one reader, so new
hidden units change nothing but ``second``'s input. :func:`find_growable_pairs` finds them with
``torch.fx``; :func:`pairs_from_names` takes them from the user (for models fx cannot trace).
"""

from __future__ import annotations

import difflib
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Union

from torch import fx, nn

from lightning_grow.layers import LayerHandler, OpKind, is_weight_layer, layer_handler
from lightning_grow.solver.moments import PairGeometry, PairKind
from lightning_grow.topology import _hidden_ops
from lightning_grow.topology._hidden_ops import (
    ACTIVATION_MODULES,
    SUPPORTED_OPS,
    HiddenOp,
    as_hidden_op,
    flatten_batch,
)
from lightning_grow.topology._pair_graph import (
    PairTracer,
    batch_norm_problem,
    enclosing_block_problem,
    index_graph,
    layer_problem,
    scan,
    walk,
    width_problem,
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

PairName = str | tuple[str, str] | Mapping[str, str]
"""How arguments and configs name a pair: ``"first -> second"``, ``(first, second)`` or
``{"first", "second", "batch_norm"?, "activation"?}`` with module names."""

PairSpec = Union[PairName, Mapping[str, Any], "GrowablePair"]
"""What :func:`pairs_from_names` accepts: a :data:`PairName` (the dict form may give the
activation as a module), or an existing :class:`GrowablePair`."""

_HOW_TO_NAME = (
    "name the pairs explicitly: pairs_from_names(model, ['first -> second']) or "
    "GrowthCallback(pairs=[('first', 'second')]); when the model cannot be traced, describe the "
    "ops between the layers with the dict form {'first': ..., 'second': ..., 'batch_norm': ..., "
    "'activation': ...}"
)


class GrowthConfigurationError(ValueError):
    """The model, or the pairs asked for, cannot be grown as requested (the message says why)."""


@dataclass(eq=False)
class GrowablePair:
    """Two layers with a hidden representation between them that nothing else reads.

    ``x --first--> z1 --[ops ...]--> h --second--> z2`` where ``ops`` are, in order, the modules or
    functions applied to the hidden tensor (BatchNorm, activation, dropout, identity, flatten).

    Attributes
    ----------
    first_name, second_name
        Qualified module names inside the network (as in ``named_modules()``).
    first, second
        The ``nn.Linear`` / ``nn.Conv2d`` modules themselves.
    batch_norm, batch_norm_name
        The BatchNorm on the hidden tensor, if any (it grows with ``first``).
    between
        A :class:`~lightning_grow.topology._hidden_ops.HiddenOp` for every op between ``first``
        and ``second`` in execution order, BatchNorm included: its ``kind`` as discovery found
        it, ``name`` (module or function name) and ``op`` (the module or function the graph
        calls). Each unpacks as ``name, op``; plain pairs are classified by the op's type.
    activation_slope
        One-sided derivative of the activation at 0 (1 for ReLU, 0.5 for GELU/SiLU, 1 for tanh,
        1 when there is no activation): the ``σ'(0)`` of the first-order predictions.
    dead_at_zero
        ``True`` when PyTorch's derivative of the activation at exactly 0 is 0 (ReLU family): a
        unit whose pre-activation is identically 0 never receives a gradient.
    flatten
        ``True`` for Conv2d → flatten → Linear.
    """

    first_name: str
    second_name: str
    first: nn.Linear | nn.Conv2d
    second: nn.Linear | nn.Conv2d
    batch_norm: nn.BatchNorm1d | nn.BatchNorm2d | None = None
    batch_norm_name: str | None = None
    between: tuple[HiddenOp, ...] = ()
    activation_slope: float = 1.0
    dead_at_zero: bool = False
    flatten: bool = False

    def __post_init__(self) -> None:
        self.between = tuple(
            op if isinstance(op, HiddenOp) else as_hidden_op(*op) for op in self.between
        )

    @property
    def first_handler(self) -> LayerHandler:
        """The :class:`~lightning_grow.layers.LayerHandler` of ``first``'s type."""
        return _handler(self.first, self.first_name)

    @property
    def second_handler(self) -> LayerHandler:
        """The :class:`~lightning_grow.layers.LayerHandler` of ``second``'s type."""
        return _handler(self.second, self.second_name)

    @property
    def name(self) -> str:
        """``"<first> -> <second>"``: the key used in logs, histories and arguments."""
        return f"{self.first_name} -> {self.second_name}"

    @property
    def kind(self) -> PairKind:
        """``"linear"``, ``"conv"`` or ``"conv_linear"`` (a feature map flattened)."""
        if self.first_handler.spatial:
            return "conv" if self.second_handler.spatial else "conv_linear"
        return "linear"

    @property
    def width(self) -> int:
        """Current hidden width (``first``'s output features / channels)."""
        return self.first_handler.out_width(self.first)

    def geometry(self) -> PairGeometry:
        """The :class:`~lightning_grow.solver.moments.PairGeometry` of the pair as it is now."""
        first, second, hidden = self.first, self.second, self.width
        first_handler, second_handler = self.first_handler, self.second_handler
        kind = self.kind
        hidden_positions = (
            second_handler.in_width(second) // hidden if kind == "conv_linear" else None
        )
        return PairGeometry(
            kind=kind,
            in_features=first_handler.input_size(first),
            hidden=hidden,
            out_features=second_handler.out_width(second),
            first_bias=first.bias is not None,
            second_bias=second.bias is not None,
            first_kernel=first_handler.input_kernel(first),  # type: ignore[arg-type]
            second_kernel=second_handler.kernel_size(second),  # type: ignore[arg-type]
            hidden_positions=hidden_positions,
        )


def _handler(module: nn.Module, name: str) -> LayerHandler:
    handler = layer_handler(module)
    if handler is None:
        raise GrowthConfigurationError(
            f"{name} ({type(module).__name__}) is not a layer type that can grow"
        )
    return handler


def _trace(module: nn.Module, what: str) -> fx.Graph:
    try:
        return PairTracer().trace(module)
    except Exception as error:
        lines = str(error).strip().splitlines()
        raise GrowthConfigurationError(
            f"torch.fx cannot trace {what} ({type(error).__name__}: {lines[0] if lines else ''})."
            f" Growable pairs are found by tracing; for this model {_HOW_TO_NAME}."
        ) from error


def _scan(model: nn.Module) -> tuple[list[GrowablePair], dict[str, str]]:
    traced = index_graph(model, _trace(model, type(model).__name__), model)
    fields, rejections = scan(traced)
    return [GrowablePair(**pair) for pair in fields], rejections


def rejected_layers(model: nn.Module) -> dict[str, str]:
    """Why each Linear/Conv2d of ``model`` is not the ``first`` layer of a growable pair.

    Raises
    ------
    GrowthConfigurationError
        When torch.fx cannot trace ``model``.
    """
    return _scan(model)[1]


def _normalise(name: str) -> str:
    return " -> ".join(part.strip() for part in name.split("->"))


def find_growable_pairs(
    model: nn.Module,
    names: Iterable[str] | None = None,
    *,
    predicate: Callable[[GrowablePair], bool] | None = None,
    allow_empty: bool = False,
) -> list[GrowablePair]:
    """Every growable pair of ``model``, found by tracing it with ``torch.fx``.

    Parameters
    ----------
    model
        The network (a plain ``nn.Module``; a LightningModule works when its ``forward`` runs the
        network).
    names
        Keep only these pairs, each given as ``"first -> second"`` or by its ``first`` layer name.
    predicate
        Keep only the pairs for which it returns ``True``.
    allow_empty
        Return ``[]`` instead of raising when no pair is left.

    Returns
    -------
    list[GrowablePair]
        In forward order.

    Raises
    ------
    GrowthConfigurationError
        When the model cannot be traced, a requested name is not a growable pair, or no pair is
        left (the message lists why each Linear/Conv2d was rejected).
    """
    pairs, rejections = _scan(model)
    if names is not None:
        by_name = {pair.name: pair for pair in pairs} | {pair.first_name: pair for pair in pairs}
        selected = []
        for requested in names:
            pair = by_name.get(_normalise(requested))
            if pair is None:
                first = _normalise(requested).split(" -> ")[0]
                why = f" ({first}: {rejections[first]})" if first in rejections else ""
                raise GrowthConfigurationError(
                    f"{requested!r} is not a growable pair of {type(model).__name__}{why}. "
                    f"Growable pairs: {[p.name for p in pairs]}."
                )
            selected.append(pair)
        pairs = selected
    if predicate is not None:
        pairs = [pair for pair in pairs if predicate(pair)]
    if not pairs and not allow_empty:
        if names is not None or predicate is not None:
            raise GrowthConfigurationError("no growable pair is left after filtering")
        reasons = "\n".join(f"  - {name}: {why}" for name, why in rejections.items())
        raise GrowthConfigurationError(
            f"No growable layer pair in {type(model).__name__}. A pair is a Linear/Conv2d whose "
            f"output reaches the next Linear/Conv2d only through {SUPPORTED_OPS}, with nothing "
            f"else reading it. Why each layer was rejected:\n{reasons or '  (no Linear/Conv2d)'}"
            f"\nIf the tracer misses a pair, {_HOW_TO_NAME}."
        )
    return pairs


@dataclass(frozen=True)
class _Spec:
    first: str
    second: str
    batch_norm: str | None = None
    activation: Any = None
    described: bool = False  # the dict form says what sits between the layers


def _parse_spec(spec: PairSpec) -> _Spec:
    if isinstance(spec, str):
        parts = [part.strip() for part in spec.split("->")]
        if len(parts) == 2 and all(parts):
            return _Spec(parts[0], parts[1])
    elif isinstance(spec, Mapping):
        unknown = set(spec) - {"first", "second", "batch_norm", "activation"}
        if "first" in spec and "second" in spec and not unknown:
            return _Spec(
                str(spec["first"]),
                str(spec["second"]),
                spec.get("batch_norm"),
                spec.get("activation"),
                described=True,
            )
    elif isinstance(spec, (tuple, list)) and len(spec) == 2:
        return _Spec(str(spec[0]), str(spec[1]))
    raise GrowthConfigurationError(
        f"cannot read the pair specification {spec!r}: use 'first -> second', "
        "('first', 'second') or {'first': ..., 'second': ..., 'batch_norm': ..., "
        "'activation': ...} with module names from model.named_modules()"
    )


def _module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        layers = [n for n, m in model.named_modules() if is_weight_layer(m)]
        close = difflib.get_close_matches(name, layers, n=3)
        hint = f" Did you mean {close}?" if close else f" Linear/Conv2d layers: {layers[:20]}."
        raise GrowthConfigurationError(
            f"{type(model).__name__} has no module named {name!r}.{hint}"
        ) from None


def _prefixed(pair: GrowablePair, prefix: str) -> GrowablePair:
    if not prefix:
        return pair
    between = tuple(
        replace(op, name=f"{prefix}.{op.name}") if isinstance(op.op, nn.Module) else op
        for op in pair.between
    )
    return replace(
        pair,
        first_name=f"{prefix}.{pair.first_name}",
        second_name=f"{prefix}.{pair.second_name}",
        batch_norm_name=f"{prefix}.{pair.batch_norm_name}" if pair.batch_norm_name else None,
        between=between,
    )


def _common_parent(first: str, second: str) -> str:
    common = []
    for left, right in zip(first.split(".")[:-1], second.split(".")[:-1]):
        if left != right:
            break
        common.append(left)
    return ".".join(common)


def _traced_pair(model: nn.Module, spec: _Spec) -> GrowablePair | None:
    """The pair as the graph of the two layers' closest common parent shows it (``None``: that
    parent cannot be traced)."""
    parent_name = _common_parent(spec.first, spec.second)
    parent = model.get_submodule(parent_name)
    try:
        graph = PairTracer().trace(parent)
    except Exception:
        return None
    traced = index_graph(parent, graph, model)
    first, second = model.get_submodule(spec.first), model.get_submodule(spec.second)
    node = next(
        (
            n
            for n in graph.nodes
            if n.op == "call_module" and parent.get_submodule(str(n.target)) is first
        ),
        None,
    )
    label = f"'{spec.first} -> {spec.second}'"
    if node is None:
        raise GrowthConfigurationError(
            f"{label}: {spec.first} is not called by the forward of "
            f"{parent_name or type(model).__name__}"
        )
    result = walk(traced, node)
    if isinstance(result, str):
        raise GrowthConfigurationError(
            f"{label} is not growable: {result}. Supported between the layers: {SUPPORTED_OPS}."
        )
    if result["second"] is not second:
        reached = f"{parent_name}.{result['second_name']}" if parent_name else result["second_name"]
        raise GrowthConfigurationError(
            f"{label} is not a pair: the output of {spec.first} goes to {reached}"
        )
    pair = _prefixed(GrowablePair(**result), parent_name)
    if spec.batch_norm is not None and spec.batch_norm != pair.batch_norm_name:
        raise GrowthConfigurationError(
            f"{label}: batch_norm={spec.batch_norm!r} was given, but the traced graph has "
            f"{pair.batch_norm_name!r} between the layers"
        )
    return pair


def _activation(model: nn.Module, activation: Any) -> tuple[str, Callable, float, bool]:
    """``(name, op, slope, dead_at_zero)`` of a dict spec's ``activation`` entry."""
    module = activation
    name = type(activation).__name__
    if isinstance(activation, str):
        names = dict(model.named_modules())
        if activation in names:
            module, name = names[activation], activation
        elif activation in _hidden_ops.ACTIVATION_FUNCTIONS:
            slope, dead = _hidden_ops.ACTIVATION_FUNCTIONS[activation]
            return activation, _hidden_ops.out_of_place(activation), slope, dead
        else:
            raise GrowthConfigurationError(
                f"activation {activation!r} is neither a module name nor one of "
                f"{sorted(_hidden_ops.ACTIVATION_FUNCTIONS)}"
            )
    for activation_type, (slope, dead) in ACTIVATION_MODULES.items():
        if isinstance(module, activation_type):
            if isinstance(module, nn.LeakyReLU):
                dead = module.negative_slope == 0
            return name, module, slope, dead
    raise GrowthConfigurationError(
        f"activation {activation!r} is not supported; use one of "
        f"{[t.__name__ for t in ACTIVATION_MODULES]} or a function name such as 'relu'"
    )


def _described_pair(model: nn.Module, spec: _Spec) -> GrowablePair:
    """The pair from the spec alone (the model could not be traced): BatchNorm, then activation."""
    first, second = model.get_submodule(spec.first), model.get_submodule(spec.second)
    label = f"'{spec.first} -> {spec.second}'"
    if not spec.described:
        warnings.warn(
            f"torch.fx cannot trace the modules around {label}; assuming nothing but an identity "
            "between the layers. If a BatchNorm or an activation sits between them, give the "
            "dict form {'first', 'second', 'batch_norm', 'activation'}.",
            stacklevel=3,
        )
    between: list[HiddenOp] = []
    batch_norm = None
    if spec.batch_norm is not None:
        batch_norm = _module(model, spec.batch_norm)
        problem = batch_norm_problem(batch_norm, spec.batch_norm, first, None)
        if problem is not None:
            raise GrowthConfigurationError(f"{label}: {problem}")
        between.append(HiddenOp(OpKind.BATCH_NORM, spec.batch_norm, batch_norm))
    slope, dead = 1.0, False
    if spec.activation is not None:
        name, op, slope, dead = _activation(model, spec.activation)
        between.append(HiddenOp(OpKind.ACTIVATION, name, op, slope, dead))
    first_handler, second_handler = layer_handler(first), layer_handler(second)
    assert first_handler is not None and second_handler is not None
    flatten = first_handler.spatial and not second_handler.spatial
    if flatten:
        between.append(HiddenOp(OpKind.FLATTEN, "flatten", flatten_batch))
    return GrowablePair(
        first_name=spec.first,
        second_name=spec.second,
        first=first,  # type: ignore[arg-type]
        second=second,  # type: ignore[arg-type]
        batch_norm=batch_norm,  # type: ignore[arg-type]
        batch_norm_name=spec.batch_norm,
        between=tuple(between),
        activation_slope=slope,
        dead_at_zero=dead,
        flatten=flatten,
    )


def pairs_from_names(model: nn.Module, specs: Iterable[PairSpec]) -> list[GrowablePair]:
    """Growable pairs named by the user, validated against ``model``.

    The ops between the layers are taken from a ``torch.fx`` trace of the two layers' closest
    common parent module when it can be traced (so a model whose top-level ``forward`` is not
    traceable still works when its blocks are); otherwise from the dict form of the spec
    (BatchNorm first, then the activation; a flatten is implied for Conv2d → Linear).

    Parameters
    ----------
    model
        The network.
    specs
        Each ``"first -> second"``, ``("first", "second")``, ``{"first": ..., "second": ...,
        "batch_norm": name?, "activation": module name, function name ("relu") or module?}``,
        or a :class:`GrowablePair` of this model.

    Raises
    ------
    GrowthConfigurationError
        When a name does not exist, a layer type or configuration is not supported, the widths
        or the BatchNorm size do not match, the traced graph shows the two layers are not a
        growable pair, or one layer is the ``first`` of two specs.
    """
    pairs: list[GrowablePair] = []
    for spec in specs:
        if isinstance(spec, GrowablePair):
            if _module(model, spec.first_name) is not spec.first:
                raise GrowthConfigurationError(f"{spec.name} does not belong to this model")
            pairs.append(spec)
            continue
        parsed = _parse_spec(spec)
        first, second = _module(model, parsed.first), _module(model, parsed.second)
        for name, layer in ((parsed.first, first), (parsed.second, second)):
            problem = layer_problem(layer) or enclosing_block_problem(model, name)
            if problem is not None:
                raise GrowthConfigurationError(
                    f"{name} cannot be part of a growable pair: {problem}"
                )
        problem = width_problem(first, second, parsed.first, parsed.second)
        if problem is not None:
            raise GrowthConfigurationError(f"'{parsed.first} -> {parsed.second}': {problem}")
        pair = _traced_pair(model, parsed)
        pairs.append(pair if pair is not None else _described_pair(model, parsed))
    repeated = [name for name, count in Counter(p.first_name for p in pairs).items() if count > 1]
    if repeated:
        raise GrowthConfigurationError(f"{repeated} appear as the first layer of several pairs")
    return pairs
