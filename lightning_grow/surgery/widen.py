"""Widen a growable pair: new neurons in ``first``, its BatchNorm and ``second``.

Every widened weight, bias and BatchNorm statistic becomes a NEW tensor (a new ``nn.Parameter``
for parameters, keeping ``requires_grad``): resizing ``.data`` in place would break a DDP wrapper
re-built around the module.

Growth is all-or-nothing. Shapes are validated and every new tensor, including the optimizer's
padded state, is built before anything is swapped in (the plan), so an error while planning
changes nothing. The commit that follows is only assignments, but an assignment can still raise
(a module whose attribute is a read-only property, a hook of the user's, an interrupt): the
references it replaces are recorded first (:class:`CommitSnapshot`) and put back on any
exception, which is then re-raised. :func:`all_or_nothing` extends this to several pairs grown
at one decision.

The lower-level ``plan_*`` functions return a :class:`ModuleEdit` that is applied later; they are
what :func:`grow_pair` and :mod:`lightning_grow.surgery.checkpoint` are built from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_grow.layers import layer_handler, norm_handler
from lightning_grow.surgery.optim import OptimizerReplacement, ParameterGrowth, prepare_replacement
from lightning_grow.topology.pairs import GrowablePair

__all__ = [
    "CommitSnapshot",
    "ModuleEdit",
    "NewNeurons",
    "all_or_nothing",
    "count_parameters",
    "grow_pair",
    "plan_batch_norm_growth",
    "plan_input_growth",
    "plan_output_growth",
]

BatchNorm = nn.Module  # one of lightning_grow.layers.BATCH_NORM_TYPES


@dataclass(eq=False)
class NewNeurons:
    """The K neurons to add to a pair.

    Attributes
    ----------
    first_weight
        ``(K, in_features)`` for a Linear ``first``, ``(K, C_in, kh, kw)`` for a Conv2d.
    first_bias
        ``(K,)``; required if and only if ``first`` has a bias.
    second_weight
        ``(out, K)`` for a Linear ``second``, ``(C_out, K, kh2, kw2)`` for a Conv2d, and
        ``(out, K*J)`` for Conv2d → flatten → Linear with ``J = H*W`` hidden positions: the
        columns flatten adds for the new channels, channel-major then position (row-major), the
        order ``nn.Flatten`` gives. They are appended after the existing columns.
    bn_weight, bn_bias, bn_running_mean, bn_running_var
        ``(K,)`` entries for the BatchNorm between the layers, if any. Defaults: 1, 0, 0, 1 (a
        freshly constructed BatchNorm).
    carried_norms
        A BatchNorm after a depthwise conv, by name → ``(mean, var)`` of the new channels at its
        input: entries that make it the identity for them (:mod:`~lightning_grow.surgery._carried`).
    """

    first_weight: Tensor
    first_bias: Tensor | None
    second_weight: Tensor
    bn_weight: Tensor | None = None
    bn_bias: Tensor | None = None
    bn_running_mean: Tensor | None = None
    bn_running_var: Tensor | None = None
    carried_norms: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)

    @property
    def num_neurons(self) -> int:
        """K, the number of neurons added."""
        return int(self.first_weight.shape[0])


@dataclass(eq=False)
class ModuleEdit:
    """New tensors and attribute values for one module, to be swapped in by :meth:`apply`.

    Attributes
    ----------
    module, name
        The module and its qualified name (for messages).
    tensors
        Attribute name → new ``nn.Parameter`` or buffer tensor.
    attributes
        Attribute name → new integer value (``out_features``, ``num_features``, ...).
    growths
        The parameter replacements, for :func:`lightning_grow.surgery.optim.replace_parameters`.
    """

    module: nn.Module
    name: str
    tensors: dict[str, Tensor] = field(default_factory=dict)
    attributes: dict[str, int] = field(default_factory=dict)
    growths: list[ParameterGrowth] = field(default_factory=list)

    def apply(self) -> None:
        """Swap the new tensors and attribute values in (plain assignments only)."""
        for assignment in self.assignments():
            assignment()

    def assignments(self) -> Iterator[Callable[[], None]]:
        """The commit's steps, one ``setattr`` each, in the order :meth:`apply` runs them."""
        for attribute, value in [*self.tensors.items(), *self.attributes.items()]:
            # nn.Module.__setattr__ re-registers a Parameter, and updates a registered buffer.
            yield lambda attribute=attribute, value=value: setattr(self.module, attribute, value)


_MISSING = object()


@dataclass(eq=False)
class CommitSnapshot:
    """The references a commit replaces, taken before it starts; :meth:`restore` puts them back.

    Shallow copies only (dicts of references, no tensor data): the old parameters, buffers and
    optimizer state entries are kept alive by the snapshot, not copied.
    """

    modules: list[tuple[nn.Module, dict[str, Any]]] = field(default_factory=list)
    optimizers: list[tuple[Any, list[tuple[dict, list, list]], dict]] = field(default_factory=list)

    @classmethod
    def take(cls, edits: Sequence[ModuleEdit], replacement: OptimizerReplacement) -> CommitSnapshot:
        """Record everything ``edits`` and ``replacement`` can change."""
        snapshot = cls()
        by_module: dict[int, dict[str, Any]] = {}
        for edit in edits:
            module = edit.module
            if id(module) not in by_module:
                by_module[id(module)] = {
                    "_parameters": dict(module._parameters),
                    "_buffers": dict(module._buffers),
                    "_non_persistent_buffers_set": set(module._non_persistent_buffers_set),
                    "__dict__": {},
                }
                snapshot.modules.append((module, by_module[id(module)]))
            # nn.Module.__setattr__ also removes a name from __dict__ before registering it.
            attributes = by_module[id(module)]["__dict__"]
            for name in [*edit.tensors, *edit.attributes]:
                attributes.setdefault(name, module.__dict__.get(name, _MISSING))
        optimizers = {id(loc.optimizer): loc.optimizer for loc, _, _ in replacement.moves}
        for optimizer in optimizers.values():
            groups = [(g, g["params"], list(g["params"])) for g in optimizer.param_groups]
            snapshot.optimizers.append((optimizer, groups, dict(optimizer.state)))
        return snapshot

    def restore(self) -> None:
        """Put every recorded reference back (idempotent; plain dict operations, no checks)."""
        for module, saved in self.modules:
            for name in ("_parameters", "_buffers", "_non_persistent_buffers_set"):
                container = getattr(module, name)
                container.clear()
                container.update(saved[name])
            for name, value in saved["__dict__"].items():
                if value is _MISSING:
                    module.__dict__.pop(name, None)
                else:
                    module.__dict__[name] = value
        for optimizer, groups, state in self.optimizers:
            for group, params, saved_params in groups:
                params[:] = saved_params
                group["params"] = params
            optimizer.state.clear()
            optimizer.state.update(state)


@contextmanager
def all_or_nothing() -> Iterator[list[CommitSnapshot]]:
    """Undo every commit recorded in the yielded journal when the block raises.

    ``with all_or_nothing() as journal: grow_pair(..., journal=journal); grow_pair(...)``: if
    the second growth (or anything else in the block) fails, the first is rolled back too
    (the failing one rolls itself back), newest first, and the exception propagates.
    """
    journal: list[CommitSnapshot] = []
    try:
        yield journal
    except BaseException:
        for snapshot in reversed(journal):
            snapshot.restore()
        raise


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters in ``module`` (shared parameters counted once)."""
    return sum(parameter.numel() for parameter in module.parameters())


def _describe(module: nn.Module, name: str) -> str:
    return f"'{name}' ({type(module).__name__})" if name else type(module).__name__


def _check_shape(tensor: Tensor, expected: tuple[int, ...], what: str, where: str) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{what} for {where} must be a tensor, got {type(tensor).__name__}")
    if tuple(tensor.shape) != expected:
        raise ValueError(
            f"{what} for {where} must have shape {expected}, got {tuple(tensor.shape)}"
        )


def _same_layout(tensor: Tensor, reference: Tensor) -> Tensor:
    """Keep a channels-last reference's memory format (conv kernels of channels-last models)."""
    is_channels_last = (
        reference.ndim == 4
        and not reference.is_contiguous()
        and reference.is_contiguous(memory_format=torch.channels_last)
    )
    return tensor.contiguous(memory_format=torch.channels_last) if is_channels_last else tensor


def _appended(old: Tensor, extra: Tensor, dim: int) -> Tensor:
    """``old`` with ``extra`` (cast to ``old``'s dtype and device) appended along ``dim``."""
    extra = extra.detach().to(device=old.device, dtype=old.dtype)
    return _same_layout(torch.cat([old.detach(), extra], dim=dim), old)


def _grown_parameter(edit: ModuleEdit, attribute: str, extra: Tensor, dim: int) -> None:
    """Add to ``edit`` a new Parameter ``attribute`` with ``extra`` appended along ``dim``."""
    old = getattr(edit.module, attribute)
    new = nn.Parameter(_appended(old, extra, dim), requires_grad=old.requires_grad)
    if old.grad is not None:
        # A pending gradient stays valid for the old entries; the new entries have none yet.
        new.grad = _appended(old.grad, torch.zeros_like(extra, dtype=old.grad.dtype), dim)
    edit.tensors[attribute] = new
    qualified = f"{edit.name}.{attribute}" if edit.name else attribute
    edit.growths.append(ParameterGrowth(old=old, new=new, dim=dim, name=qualified))


def _check_plain_layer(module: nn.Module, where: str) -> None:
    handler = layer_handler(module)
    if handler is None:
        raise TypeError(f"{where} must be nn.Linear or nn.Conv2d to grow")
    for attribute in ("weight", "bias"):
        if attribute not in module._parameters and getattr(module, attribute, None) is not None:
            # weight_norm / spectral_norm / parametrizations compute `weight` from other
            # parameters: a new Parameter cannot replace it (it failed mid-commit before).
            raise TypeError(
                f"{where}.{attribute} is not a plain parameter (weight_norm, spectral_norm or "
                "another parametrization?); remove it before growing this layer"
            )
    problem = handler.growth_problem(module)
    if problem is not None:
        raise ValueError(f"{where} {problem}")


def plan_output_growth(
    module: nn.Linear | nn.Conv2d, weight: Tensor, bias: Tensor | None, name: str = ""
) -> ModuleEdit:
    """Plan K new outputs (rows / filters) for a Linear or Conv2d layer.

    Parameters
    ----------
    module
        The layer to widen.
    weight
        ``(K, in_features)`` or ``(K, C_in, kh, kw)``.
    bias
        ``(K,)``; required if and only if the layer has a bias.
    name
        Qualified module name, for messages.

    Returns
    -------
    ModuleEdit
        Not applied yet; call :meth:`ModuleEdit.apply`.
    """
    where = _describe(module, name)
    _check_plain_layer(module, where)
    if not isinstance(weight, Tensor) or weight.ndim < 1 or weight.shape[0] < 1:
        raise ValueError(f"new output weight for {where} must have at least one row")
    num_new = int(weight.shape[0])
    _check_shape(weight, (num_new, *module.weight.shape[1:]), "new output weight", where)
    if module.bias is None and bias is not None:
        raise ValueError(f"{where} has no bias, but a bias for the new outputs was given")
    if module.bias is not None and bias is None:
        raise ValueError(f"{where} has a bias: the new outputs need one too (shape ({num_new},))")

    edit = ModuleEdit(module, name)
    _grown_parameter(edit, "weight", weight, dim=0)
    if bias is not None:
        _check_shape(bias, (num_new,), "new output bias", where)
        _grown_parameter(edit, "bias", bias, dim=0)
    handler = layer_handler(module)
    assert handler is not None
    edit.attributes[handler.out_attribute] = handler.out_width(module) + num_new
    return edit


def plan_input_growth(module: nn.Linear | nn.Conv2d, weight: Tensor, name: str = "") -> ModuleEdit:
    """Plan new inputs (columns / input channels) for a Linear or Conv2d layer.

    Parameters
    ----------
    module
        The layer to widen.
    weight
        ``(out_features, n_new)`` columns for a Linear, ``(C_out, K, kh, kw)`` input-channel
        slices for a Conv2d; appended after the existing ones.
    name
        Qualified module name, for messages.

    Returns
    -------
    ModuleEdit
        Not applied yet; call :meth:`ModuleEdit.apply`.
    """
    where = _describe(module, name)
    _check_plain_layer(module, where)
    if not isinstance(weight, Tensor) or weight.ndim < 2 or weight.shape[1] < 1:
        raise ValueError(f"new input weight for {where} must have at least one column")
    num_new = int(weight.shape[1])
    expected = (module.weight.shape[0], num_new, *module.weight.shape[2:])
    _check_shape(weight, expected, "new input weight", where)

    edit = ModuleEdit(module, name)
    _grown_parameter(edit, "weight", weight, dim=1)
    handler = layer_handler(module)
    assert handler is not None
    edit.attributes[handler.in_attribute] = handler.in_width(module) + num_new
    return edit


def plan_batch_norm_growth(
    module: BatchNorm,
    num_new: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    name: str = "",
) -> ModuleEdit:
    """Plan ``num_new`` new entries for a BatchNorm (defaults: weight 1, bias 0, mean 0, var 1).

    ``num_batches_tracked`` is shared by all entries and stays as it is.

    Returns
    -------
    ModuleEdit
        Not applied yet; call :meth:`ModuleEdit.apply`.
    """
    where = _describe(module, name)
    handler = norm_handler(module)
    if handler is None:
        raise TypeError(f"{where} is not a BatchNorm layer")
    given = {"weight": weight, "bias": bias, "running_mean": running_mean}
    given["running_var"] = running_var
    edit = ModuleEdit(module, name)
    for attribute, value in given.items():
        current = getattr(module, attribute)
        if current is None:
            if value is not None:
                raise ValueError(
                    f"{where} has no {attribute} (affine={module.affine}, "
                    f"track_running_stats={module.track_running_stats}), but bn_{attribute} "
                    "was given"
                )
            continue
        if value is None:
            value = torch.full((num_new,), handler.fresh_value(attribute))
        _check_shape(value, (num_new,), f"bn_{attribute}", where)
        if isinstance(current, nn.Parameter):
            _grown_parameter(edit, attribute, value, dim=0)
        else:
            edit.tensors[attribute] = _appended(current, value, dim=0)
    edit.attributes[handler.width_attribute] = handler.width(module) + num_new
    return edit


def _check_pair(pair: GrowablePair) -> int:
    """Validate the pair's current wiring; returns ``J`` (new columns of ``second`` per neuron)."""
    first, second = pair.first, pair.second
    first_where = _describe(first, pair.first_name)
    second_where = _describe(second, pair.second_name)
    _check_plain_layer(first, first_where)
    _check_plain_layer(second, second_where)
    width = pair.width
    first_handler, second_handler = pair.first_handler, pair.second_handler
    consumed = second_handler.in_width(second)
    if second_handler.spatial:
        if not first_handler.spatial:
            raise TypeError(f"{first_where} → {second_where}: a Linear cannot feed a Conv2d pair")
        slots = 1
    elif first_handler.spatial:
        if consumed % width:
            raise ValueError(
                f"{second_where} has {consumed} inputs, not a multiple of the "
                f"{width} channels of {first_where}"
            )
        consumed, slots = width, consumed // width
    else:
        slots = 1
    if consumed != width:
        raise ValueError(f"{second_where} consumes {consumed} inputs but {first_where} has {width}")
    bn = pair.batch_norm
    if bn is not None and bn.num_features != width:
        bn_where = _describe(bn, pair.batch_norm_name or "")
        raise ValueError(f"{bn_where} has {bn.num_features} features but the pair has {width}")
    return slots


def _plan_pair(pair: GrowablePair, neurons: NewNeurons) -> list[ModuleEdit]:
    slots = _check_pair(pair)
    num_new = neurons.num_neurons
    if num_new < 1:
        raise ValueError(f"pair {pair.name}: at least one neuron must be added")
    edits = [
        plan_output_growth(pair.first, neurons.first_weight, neurons.first_bias, pair.first_name)
    ]

    second = pair.second
    kernel = tuple(second.weight.shape[2:])  # the module's own layout (k for a Conv1d)
    columns = num_new if kernel else num_new * slots
    expected = (pair.second_handler.out_width(second), columns, *kernel)
    _check_shape(
        neurons.second_weight, expected, "second_weight", _describe(second, pair.second_name)
    )
    edits.append(plan_input_growth(second, neurons.second_weight, pair.second_name))

    bn_given = (neurons.bn_weight, neurons.bn_bias, neurons.bn_running_mean, neurons.bn_running_var)
    if pair.batch_norm is not None:
        edits.append(
            plan_batch_norm_growth(
                pair.batch_norm, num_new, *bn_given, name=pair.batch_norm_name or ""
            )
        )
    elif any(value is not None for value in bn_given):
        raise ValueError(f"pair {pair.name} has no BatchNorm, but BatchNorm entries were given")
    from lightning_grow.surgery._carried import plan_carried_growth  # imports this module

    return [*edits, *plan_carried_growth(pair, neurons)]


def grow_pair(
    pair: GrowablePair,
    neurons: NewNeurons,
    optimizers: Optimizer | Sequence[Optimizer] = (),
    *,
    journal: list[CommitSnapshot] | None = None,
) -> None:
    """Add ``neurons`` to ``pair`` and re-point the optimizers to the new parameters.

    ``first`` gains K outputs, the BatchNorm K entries and ``second`` K inputs (K·J columns for
    Conv2d → flatten → Linear). With ``second_weight = 0`` the network computes the same function
    as before (in eval mode). New parameters keep the dtype, device and ``requires_grad`` of the
    ones they replace; the given tensors are cast and moved.

    Parameters
    ----------
    pair
        The pair to widen; its modules are changed in place (bare modules, not a DDP wrapper).
    neurons
        The new neurons' weights.
    optimizers
        Optimizer(s) training the pair (e.g. ``trainer.optimizers``); each grown trainable
        parameter must be in exactly one of them. Their state is padded as described in
        :mod:`lightning_grow.surgery.optim`. Empty: no optimizer is updated.
    journal
        When given, the commit's :class:`CommitSnapshot` is appended to it after success, so
        that :func:`all_or_nothing` can undo this growth if a later one fails.

    Raises
    ------
    TypeError, ValueError
        On an unsupported layer, a shape mismatch or an optimizer that cannot be re-pointed;
        the model and the optimizers are then unchanged.
    Exception
        Whatever interrupts the commit is re-raised after the model and the optimizers were
        rolled back to their state before the call.
    """
    with torch.no_grad():
        edits = _plan_pair(pair, neurons)
        growths = [growth for edit in edits for growth in edit.growths]
        replacement = prepare_replacement(optimizers, growths)
        snapshot = CommitSnapshot.take(edits, replacement)
        try:
            for edit in edits:
                for assignment in edit.assignments():
                    assignment()
            for assignment in replacement.assignments():
                assignment()
        except BaseException:
            snapshot.restore()
            raise
    if journal is not None:
        journal.append(snapshot)
