"""Re-point an optimizer to grown parameters and pad its per-parameter state.

Growth replaces a parameter by a NEW, larger ``nn.Parameter`` (entries appended at the end of one
dimension). The optimizer object itself is kept, so LR schedulers, Lightning's
``LightningOptimizer`` wrappers, a ``GradScaler`` and gradient clipping keep working: only the
parameter inside its param group and the parameter's entry in ``optimizer.state`` change.

State rule
----------
* a state tensor shaped like the old parameter is padded along the grown dimension with the value
  a freshly initialised state would hold: 0 for momentum buffers and moment estimates (SGD, Adam,
  AdamW incl. ``max_exp_avg_sq``, RMSprop, Adadelta, Adamax, NAdam, RAdam, ASGD's ``ax``, Muon),
  ``defaults["initial_accumulator_value"]`` for Adagrad's ``sum`` (torch fills a lazily created
  ``sum`` from ``self.defaults``, not from the group), the group's ``lr`` for Rprop's
  ``step_size``;
* 0-d tensors (``step``, ``eta``, ``mu``, ``mu_product``) and non-tensors stay as they are, so the
  new entries share the old entries' step count (and bias correction);
* any other state tensor (a flat fused buffer, Adafactor's factored ``row_var`` / ``col_var``) is
  an error: padding it would silently corrupt the optimizer.

Every check and every padded tensor is prepared before anything is changed
(:func:`prepare_replacement`), so a failure leaves the optimizer untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.optim import LBFGS, Adagrad, Optimizer, Rprop

__all__ = [
    "OptimizerReplacement",
    "ParameterGrowth",
    "check_replaceable",
    "prepare_replacement",
    "replace_parameters",
    "unwrap_optimizer",
]

OptimizerArg = Optimizer | Sequence[Optimizer]


@dataclass(eq=False)
class ParameterGrowth:
    """One parameter replaced by a larger one.

    Attributes
    ----------
    old
        The parameter the optimizer holds now.
    new
        Its replacement: same shape except along ``dim``, where entries are appended at the end.
    dim
        The dimension that grew (negative values count from the end, as in torch).
    name
        Optional qualified name, used only in error messages.
    """

    old: nn.Parameter
    new: nn.Parameter
    dim: int
    name: str = ""

    def __post_init__(self) -> None:
        old_shape, new_shape = tuple(self.old.shape), tuple(self.new.shape)
        label = self.label
        if len(old_shape) != len(new_shape):
            raise ValueError(
                f"{label}: old shape {old_shape} and new shape {new_shape} differ in rank"
            )
        if not -len(old_shape) <= self.dim < len(old_shape):
            raise ValueError(f"{label}: dim {self.dim} out of range for shape {old_shape}")
        self.dim %= len(old_shape)
        others_equal = all(
            o == n for axis, (o, n) in enumerate(zip(old_shape, new_shape)) if axis != self.dim
        )
        if not others_equal or new_shape[self.dim] < old_shape[self.dim]:
            raise ValueError(
                f"{label}: new shape {new_shape} must equal old shape {old_shape} except for "
                f"a larger size along dim {self.dim}"
            )

    @property
    def label(self) -> str:
        return f"parameter '{self.name}'" if self.name else f"parameter of shape {self.old.shape}"

    @property
    def num_added(self) -> int:
        """How many entries were appended along :attr:`dim`."""
        return self.new.shape[self.dim] - self.old.shape[self.dim]


@dataclass(frozen=True)
class _Location:
    optimizer: Optimizer
    group_index: int
    param_index: int


@dataclass
class OptimizerReplacement:
    """A validated, fully prepared replacement; :meth:`apply` only assigns (it cannot fail).

    Attributes
    ----------
    moves
        ``(location, growth, new_state)`` per parameter found in an optimizer; ``new_state`` is
        ``None`` when the optimizer holds no state for the parameter yet.
    """

    moves: list[tuple[_Location, ParameterGrowth, dict | None]] = field(default_factory=list)

    def apply(self) -> None:
        """Swap the new parameters and their padded state into the optimizers."""
        for assignment in self.assignments():
            assignment()

    def assignments(self) -> Iterator[Callable[[], None]]:
        """:meth:`apply`'s steps in order: per parameter, re-point, drop old state, add new."""
        for location, growth, new_state in self.moves:
            optimizer = location.optimizer
            params = optimizer.param_groups[location.group_index]["params"]
            yield (
                lambda params=params, index=location.param_index, new=growth.new: (
                    params.__setitem__(index, new)
                )
            )
            # ``optimizer.state`` is a defaultdict: test membership so no empty entry is created.
            if growth.old in optimizer.state:
                yield lambda state=optimizer.state, old=growth.old: state.pop(old)
            if new_state is not None:
                yield (
                    lambda state=optimizer.state, new=growth.new, entry=new_state: (
                        state.__setitem__(new, entry)
                    )
                )


def unwrap_optimizer(optimizer: Optimizer) -> Optimizer:
    """The torch optimizer inside a Lightning ``LightningOptimizer`` (or the optimizer itself).

    ``LightningOptimizer`` keeps the wrapped optimizer in ``_optimizer``; duck typing avoids
    importing Lightning here.
    """
    inner = getattr(optimizer, "_optimizer", None)
    while isinstance(inner, Optimizer):
        optimizer, inner = inner, getattr(inner, "_optimizer", None)
    return optimizer


def _as_optimizer_list(optimizers: OptimizerArg) -> list[Optimizer]:
    if isinstance(optimizers, Optimizer):
        optimizers = [optimizers]
    unwrapped = [unwrap_optimizer(optimizer) for optimizer in optimizers]
    for optimizer in unwrapped:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"expected torch optimizers, got {type(optimizer).__name__}")
        _refuse_unsupported(optimizer)
    return unwrapped


def _refuse_unsupported(optimizer: Optimizer) -> None:
    kind = type(optimizer).__name__
    if any(cls.__name__ == "ZeroRedundancyOptimizer" for cls in type(optimizer).__mro__):
        raise TypeError(
            "ZeroRedundancyOptimizer shards parameters and state across ranks by size; a grown "
            "parameter cannot be re-pointed in place. Use a plain optimizer with growth."
        )
    if isinstance(optimizer, LBFGS):
        raise TypeError(f"{kind} keeps flat state over all parameters and cannot be re-pointed")


def _locate(
    optimizers: list[Optimizer], growths: Sequence[ParameterGrowth]
) -> list[tuple[ParameterGrowth, _Location | None]]:
    """Where each old parameter sits; errors for missing trainable or duplicated parameters."""
    seen: set[int] = set()
    for growth in growths:
        if id(growth.old) in seen:
            raise ValueError(f"{growth.label} is grown twice in one replacement")
        seen.add(id(growth.old))

    locations: dict[int, list[_Location]] = {id(growth.old): [] for growth in growths}
    for optimizer in optimizers:
        for group_index, group in enumerate(optimizer.param_groups):
            for param_index, param in enumerate(group["params"]):
                if id(param) in locations:
                    locations[id(param)].append(_Location(optimizer, group_index, param_index))

    located = []
    for growth in growths:
        found = locations[id(growth.old)]
        if len(found) > 1:
            where = ", ".join(
                f"{type(loc.optimizer).__name__} group {loc.group_index} index {loc.param_index}"
                for loc in found
            )
            raise ValueError(
                f"{growth.label} appears more than once in the optimizer(s) ({where}); "
                "cannot tell which entry to re-point"
            )
        if not found and optimizers and growth.old.requires_grad:
            raise ValueError(
                f"{growth.label} requires grad but is in none of the given optimizers' param "
                "groups; pass the optimizer that trains it (only frozen parameters may be absent)"
            )
        located.append((growth, found[0] if found else None))
    return located


def _fill_value(optimizer: Optimizer, group: dict, key: str) -> float:
    """The value a freshly initialised state tensor ``key`` holds (see the module docstring)."""
    if isinstance(optimizer, Adagrad) and key == "sum":
        return float(optimizer.defaults["initial_accumulator_value"])
    if isinstance(optimizer, Rprop) and key == "step_size":
        lr = group["lr"]
        return float(lr.item() if isinstance(lr, Tensor) else lr)
    return 0.0


def _check_state(location: _Location, growth: ParameterGrowth) -> None:
    state = location.optimizer.state.get(growth.old)
    if not state:
        return
    for key, value in state.items():
        if not isinstance(value, Tensor) or value.ndim == 0:
            continue
        if value.shape != growth.old.shape:
            raise ValueError(
                f"{type(location.optimizer).__name__} state '{key}' of {growth.label} has shape "
                f"{tuple(value.shape)}, neither the parameter's shape {tuple(growth.old.shape)} "
                "nor a scalar; refusing to guess how it grows"
            )


def _padded_state(location: _Location, growth: ParameterGrowth) -> dict | None:
    optimizer = location.optimizer
    if growth.old not in optimizer.state:
        return None
    group = optimizer.param_groups[location.group_index]
    new_state = {}
    for key, value in optimizer.state[growth.old].items():
        if isinstance(value, Tensor) and value.ndim > 0:
            pad_shape = list(value.shape)
            pad_shape[growth.dim] = growth.num_added
            fill = _fill_value(optimizer, group, key)
            padding = torch.full(pad_shape, fill, dtype=value.dtype, device=value.device)
            value = torch.cat([value.detach(), padding], dim=growth.dim)
        new_state[key] = value
    return new_state


def check_replaceable(optimizer: OptimizerArg, growths: Sequence[ParameterGrowth]) -> None:
    """Validate a replacement without changing anything.

    Parameters
    ----------
    optimizer
        One optimizer or several (e.g. a GAN's); ``LightningOptimizer`` wrappers are unwrapped.
        With several, each trainable parameter must be in exactly one of them.
    growths
        The parameters to replace.

    Raises
    ------
    TypeError
        For optimizers that cannot be re-pointed (``ZeroRedundancyOptimizer``, ``LBFGS``).
    ValueError
        When a trainable parameter is in no param group, a parameter appears more than once, or
        a state tensor has an unexpected shape.
    """
    optimizers = _as_optimizer_list(optimizer)
    for growth, location in _locate(optimizers, growths):
        if location is not None:
            _check_state(location, growth)


def prepare_replacement(
    optimizer: OptimizerArg, growths: Sequence[ParameterGrowth]
) -> OptimizerReplacement:
    """Validate and build every padded state tensor; nothing is changed until ``apply()``.

    Parameters and errors are those of :func:`check_replaceable`.
    """
    optimizers = _as_optimizer_list(optimizer)
    located = _locate(optimizers, growths)
    for growth, location in located:
        if location is not None:
            _check_state(location, growth)
    replacement = OptimizerReplacement()
    for growth, location in located:
        if location is not None:
            replacement.moves.append((location, growth, _padded_state(location, growth)))
    return replacement


def replace_parameters(optimizer: OptimizerArg, growths: Sequence[ParameterGrowth]) -> None:
    """Replace old parameters by grown ones in the optimizer(s), padding their state.

    The optimizer objects are kept: each new parameter takes its old parameter's place (same
    param group, same index) and inherits its state, padded as described in the module
    docstring. A frozen parameter (``requires_grad=False``) absent from every optimizer is
    skipped. Validation happens before any change (see :func:`check_replaceable`).

    Parameters
    ----------
    optimizer
        One optimizer or a sequence of them; ``LightningOptimizer`` wrappers are unwrapped.
    growths
        The parameters to replace.
    """
    prepare_replacement(optimizer, growths).apply()
