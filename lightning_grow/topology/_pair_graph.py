"""Walking a torch.fx graph from a layer to the next one: the mechanics behind topology.py.

Results are plain field dicts (``PairFields``) that :mod:`lightning_grow.topology.pairs` turns into
:class:`~lightning_grow.topology.pairs.GrowablePair` records, or strings saying why a layer is not
the ``first`` layer of a pair.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from torch import fx, nn

from lightning_grow.layers import OpKind, is_norm, is_weight_layer, layer_handler
from lightning_grow.layers.blocks import opaque_block_reason
from lightning_grow.layers.depthwise import carried_conv_problem, is_grouped_conv
from lightning_grow.topology import _hidden_ops
from lightning_grow.topology._hidden_ops import HiddenOp

PairFields = dict[str, Any]


def layer_problem(module: nn.Module) -> str | None:
    """Why ``module`` cannot be the ``first`` or ``second`` layer of a pair (``None``: it can)."""
    handler = layer_handler(module)
    if handler is None:
        return f"{type(module).__name__} is not an nn.Linear or nn.Conv2d"
    if isinstance(module.weight, nn.parameter.UninitializedParameter):
        return "a lazy layer that is not initialised yet (run one forward pass first)"
    derived = [
        attribute
        for attribute in ("weight", "bias")
        if attribute not in module._parameters and getattr(module, attribute, None) is not None
    ]
    if derived:
        # weight_norm / spectral_norm / torch.nn.utils.parametrize compute the tensor from other
        # parameters on every call: surgery cannot widen it with a new Parameter (it once
        # widened `first`, then failed on `second` and left a model that could not run).
        return (
            f"its {' and '.join(derived)} {'is' if len(derived) == 1 else 'are'} computed by a "
            "parametrization (weight_norm, spectral_norm or torch.nn.utils.parametrize), not a "
            "plain parameter; remove it (torch.nn.utils.parametrize.remove_parametrizations or "
            "torch.nn.utils.remove_weight_norm) to grow this layer"
        )
    return handler.problem(module)


def enclosing_block_problem(model: nn.Module, name: str) -> str | None:
    """Why layer ``name`` of ``model`` cannot grow because of a block around it (``None``: no
    such block); see :mod:`lightning_grow.layers.blocks`."""
    parts = name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        block_name = ".".join(parts[:end])
        reason = opaque_block_reason(model.get_submodule(block_name))
        if reason is not None:
            return f"it is inside {block_name}: {reason}"
    return None


def width_problem(
    first: nn.Module, second: nn.Module, first_name: str, second_name: str
) -> str | None:
    """Why the hidden widths of ``first`` and ``second`` do not fit together (``None``: they do)."""
    first_handler, second_handler = layer_handler(first), layer_handler(second)
    assert first_handler is not None and second_handler is not None
    width = first_handler.out_width(first)
    consumed = second_handler.in_width(second)
    out_name = f"{first_name}.{first_handler.out_attribute}={width}"
    in_name = f"{second_name}.{second_handler.in_attribute}={consumed}"
    if not first_handler.spatial and second_handler.spatial:
        return (
            f"{first_handler.label} {first_name} → {second_handler.label} {second_name} "
            "(a reshape between) is not supported"
        )
    if first_handler.spatial and not second_handler.spatial:
        if consumed % width:
            return (
                f"{in_name} is not a multiple of {out_name} "
                f"({first_handler.label} → flatten → {second_handler.label})"
            )
        return None
    if consumed != width:
        return f"{in_name} differs from {out_name}"
    return None


class PairTracer(fx.Tracer):
    """Keeps the layers and ops of a pair as single nodes even when the user subclassed them."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _hidden_ops.LEAF_MODULES) or super().is_leaf_module(
            m, module_qualified_name
        )


@dataclass
class Traced:
    """A traced module and what the walk needs to know about it."""

    root: nn.Module
    graph: fx.Graph
    calls: Counter  # id(module) -> call_module nodes that call it
    tied: set[int]  # id(module) of modules sharing a parameter with another module


def index_graph(root: nn.Module, graph: fx.Graph, model: nn.Module) -> Traced:
    """Call counts and tied-parameter owners for ``graph``, the trace of ``root`` in ``model``."""
    calls: Counter = Counter(
        id(root.get_submodule(str(node.target))) for node in graph.nodes if node.op == "call_module"
    )
    owners: dict[int, set[int]] = {}
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            owners.setdefault(id(parameter), set()).add(id(module))
    tied = {owner for group in owners.values() if len(group) > 1 for owner in group}
    return Traced(root, graph, calls, tied)


def usable(module: nn.Module, traced: Traced) -> str | None:
    """Why ``module`` cannot be a layer of a pair in this graph (``None``: it can)."""
    problem = layer_problem(module)
    if problem is not None:
        return problem
    if traced.calls[id(module)] > 1:
        return (
            f"it is called {traced.calls[id(module)]} times in forward "
            "(a shared layer cannot grow for one use only)"
        )
    if id(module) in traced.tied:
        return "its parameters are tied to another module's"
    return None


def walk(traced: Traced, first_node: fx.Node) -> PairFields | str:
    """Follow the single reader of ``first``'s output to the next layer, or say why it stops."""
    first_name = str(first_node.target)
    problem = usable(traced.root.get_submodule(first_name), traced)
    if problem is not None:
        return problem
    ops: list[HiddenOp] = []
    current = first_node
    while True:
        readers = [user for user in current.users if not _hidden_ops.is_shape_query(user)]
        after = ops[-1].name if ops else first_name
        if not readers:
            return f"the output of {after} is not used"
        if len(readers) > 1:
            listed = ", ".join(sorted(_hidden_ops.describe(reader) for reader in readers))
            return (
                f"the tensor after {after} has {len(readers)} readers ({listed}); a hidden tensor "
                "that something else also reads (residual add, concat) cannot grow"
            )
        reader = readers[0]
        if reader.op == "output":
            return f"the output of {after} is returned by forward, not fed to a next layer"
        if reader.op == "call_module":
            module = traced.root.get_submodule(str(reader.target))
            if reader.args != (current,) or reader.kwargs:
                if is_weight_layer(module):
                    return f"{reader.target} is called with extra arguments"
            elif is_grouped_conv(module):
                # A depthwise conv filters each hidden channel alone: it grows with `first`.
                op = carried_conv(traced, first_name, str(reader.target), module)
                if isinstance(op, str):
                    return op
                ops.append(op)
                current = reader
                continue
            elif is_weight_layer(module):
                return assemble(traced, first_name, str(reader.target), ops)
        op = _hidden_ops.classify(reader, current, traced.root)
        if isinstance(op, str):
            return op
        ops.append(op)
        current = reader


def carried_conv(traced: Traced, first_name: str, name: str, module: nn.Module) -> HiddenOp | str:
    """The depthwise conv ``name`` after ``first`` as an op that grows with the pair, or why not."""
    first = traced.root.get_submodule(first_name)
    first_handler = layer_handler(first)
    assert first_handler is not None
    where = f"{type(module).__name__} {name} between {first_name} and the next layer"
    if type(first) is not type(module):
        return f"{where} does not fit after a {type(first).__name__}"
    problem = carried_conv_problem(module, first_handler.out_width(first))
    if problem is None and (traced.calls[id(module)] > 1 or id(module) in traced.tied):
        problem = "is shared with another use (called twice or tied parameters)"
    if problem is not None:
        return f"{where} {problem}"
    return HiddenOp(OpKind.DEPTHWISE, name, module)


def assemble(
    traced: Traced, first_name: str, second_name: str, ops: list[HiddenOp]
) -> PairFields | str:
    """The pair ``first → ops → second``, or why these ops cannot sit between these layers."""
    first = traced.root.get_submodule(first_name)
    second = traced.root.get_submodule(second_name)
    problem = usable(second, traced)
    if problem is not None:
        return f"the next layer {second_name} cannot grow its input: {problem}"
    problem = width_problem(first, second, first_name, second_name)
    if problem is not None:
        return problem
    first_handler, second_handler = layer_handler(first), layer_handler(second)
    assert first_handler is not None and second_handler is not None
    conv_linear = first_handler.spatial and not second_handler.spatial
    flattens = [index for index, op in enumerate(ops) if op.kind is OpKind.FLATTEN]
    if conv_linear and len(flattens) != 1:
        return f"Conv2d {first_name} → Linear {second_name} needs exactly one flatten(1) between"
    if not conv_linear and flattens:
        return f"a flatten ({ops[flattens[0]].name}) is only supported between Conv2d and Linear"
    expected = flattens and ops[flattens[0]].flatten_features
    if expected and expected != second.in_features:
        return f"the flatten gives {expected} features but {second_name} takes {second.in_features}"
    norms = [index for index, op in enumerate(ops) if op.kind is OpKind.BATCH_NORM]
    problem = carried_norms_problem(ops, norms, first, traced)
    if problem is not None:
        return problem
    batch_norm = batch_norm_name = None
    if norms:
        batch_norm_name, batch_norm = ops[norms[0]].name, ops[norms[0]].op
        problem = batch_norm_problem(batch_norm, batch_norm_name, first, traced)
        if problem is not None:
            return problem
        if flattens and norms[0] > flattens[0]:
            return f"BatchNorm {batch_norm_name} after the flatten is not supported"
    slope, dead = 1.0, False
    for op in ops:
        if op.kind is OpKind.ACTIVATION:
            slope *= op.slope
            dead = dead or op.dead_at_zero
    return {
        "first_name": first_name,
        "second_name": second_name,
        "first": first,
        "second": second,
        "batch_norm": batch_norm,
        "batch_norm_name": batch_norm_name,
        "between": tuple(ops),
        "activation_slope": slope,
        "dead_at_zero": dead,
        "flatten": conv_linear,
    }


def carried_norms_problem(
    ops: list[HiddenOp], norms: list[int], first: nn.Module, traced: Traced
) -> str | None:
    """Why the BatchNorms after the first one cannot grow (``None``: they can).

    The first BatchNorm is the pair's own (TINY may choose its new entries); one more may follow
    each depthwise conv, and its new channels start fresh (1, 0, 0, 1).
    """
    for previous, index in pairwise(norms):
        if not any(op.kind is OpKind.DEPTHWISE for op in ops[previous + 1 : index]):
            return "more than one BatchNorm between the layers is not supported"
        problem = batch_norm_problem(ops[index].op, ops[index].name, first, traced)
        if problem is not None:
            return problem
    return None


def batch_norm_problem(
    batch_norm: nn.Module, name: str, first: nn.Module, traced: Traced | None
) -> str | None:
    handler = layer_handler(first)
    assert handler is not None
    width = handler.out_width(first)
    if not is_norm(batch_norm):
        return f"{name} ({type(batch_norm).__name__}) is not a BatchNorm1d/2d"
    if traced is not None and traced.calls[id(batch_norm)] > 1:
        return f"BatchNorm {name} is called {traced.calls[id(batch_norm)]} times in forward"
    if batch_norm.num_features != width:
        return (
            f"BatchNorm {name} has num_features={batch_norm.num_features}, but the hidden width "
            f"is {width}"
        )
    if not handler.accepts_norm(batch_norm):
        return f"{type(batch_norm).__name__} {name} does not fit after a {type(first).__name__}"
    return None


def scan(traced: Traced) -> tuple[list[PairFields], dict[str, str]]:
    """Fields of every growable pair of the traced model, and why each other layer is not one."""
    model = traced.root
    pairs: list[PairFields] = []
    rejections: dict[str, str] = {}
    seen: set[int] = set()
    for node in traced.graph.nodes:
        if node.op != "call_module":
            continue
        module = model.get_submodule(str(node.target))
        if not is_weight_layer(module) or id(module) in seen:
            continue
        seen.add(id(module))
        result = walk(traced, node)
        if isinstance(result, dict):
            pairs.append(result)
        else:
            rejections[str(node.target)] = result
    leaves = {str(node.target) for node in traced.graph.nodes if node.op == "call_module"}
    for name, module in model.named_modules():
        if is_weight_layer(module) and id(module) not in seen:
            seen.add(id(module))
            rejections[name] = enclosing_block_problem(model, name) or _unseen(model, name, leaves)
    return pairs, rejections


def _unseen(model: nn.Module, name: str, leaves: set[str]) -> str:
    """Why a layer that the trace never calls is not a pair."""
    parts = name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        block_name = ".".join(parts[:end])
        if block_name in leaves:
            block = type(model.get_submodule(block_name)).__name__
            return (
                f"it is inside {block_name} ({block}), which torch.fx keeps as one opaque call "
                "(a torch.nn built-in): the ops between its layers cannot be seen; name the "
                "pair with the dict form if you know them"
            )
    return "it is not called by forward (as traced by torch.fx)"
