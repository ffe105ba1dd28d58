"""Validation of GrowthCallback's arguments: fail early, naming the argument and what it accepts.

Everything that can be checked from the arguments alone is checked at construction
(:func:`check_arguments`); what needs the model (the ``network`` attribute, the pair names used as
``max_width`` keys) is checked at setup (:func:`check_network`, :func:`check_max_width_keys`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from numbers import Integral, Real
from typing import Any

from torch import nn

from lightning_grow.solver.method import Method
from lightning_grow.topology.pairs import GrowthConfigurationError

_INTEGERS = {
    # name: (smallest value, None allowed)
    "warmup_steps": (0, False),
    "cooldown_steps": (0, False),
    "max_window_extensions": (0, False),
    "held_samples": (1, False),
    "statistics_samples": (1, True),
    "stop_step": (1, True),
    "stop_epoch": (1, True),
    "patience": (1, True),
    "max_neurons_per_event": (1, True),
    "max_parameters": (1, True),
    "seed": (None, False),
    "target_parameters": (1, True),
    "monitor_patience": (1, False),
}


def _is_integer(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_integer(name: str, value: Any, smallest: int | None, optional: bool) -> None:
    if value is None and optional:
        return
    kind = "an integer" + (" or None" if optional else "")
    if not _is_integer(value):
        raise TypeError(f"{name} must be {kind}, got {value!r} ({type(value).__name__})")
    if smallest is not None and value < smallest:
        raise ValueError(f"{name} must be {kind} >= {smallest}, got {value}")


def _check_real(
    name: str, value: Any, low: float, high: float = math.inf, *, open_low: bool = False
) -> None:
    """A finite real in ``[low, high]`` (``(low, high]`` with ``open_low``); NaN is refused."""
    if not _is_real(value):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    too_low = value <= low if open_low else value < low
    if not math.isfinite(value) or too_low or value > high:
        bracket = "(" if open_low else "["
        upper = f"{high}]" if math.isfinite(high) else "inf)"
        raise ValueError(f"{name} must be a finite number in {bracket}{low}, {upper}, got {value}")


def _check_pairs(pairs: Any) -> None:
    if (isinstance(pairs, str) and pairs == "auto") or callable(pairs):
        return
    if isinstance(pairs, str):
        raise ValueError(
            f"pairs must be 'auto', a list of pairs or a predicate, got {pairs!r}; "
            f"for one pair write pairs=[{pairs!r}]"
        )
    if not isinstance(pairs, Sequence):
        raise TypeError(
            'pairs must be \'auto\', a list of pairs ("fc1 -> fc2", ("fc1", "fc2") or a '
            f"dict) or a predicate over discovered pairs, got {pairs!r} ({type(pairs).__name__})"
        )
    if not pairs:
        raise ValueError("pairs is an empty list: name at least one pair, or use 'auto'")


def _check_max_width(max_width: Any) -> None:
    if max_width is None:
        return
    if _is_integer(max_width):
        if max_width < 1:
            raise ValueError(f"max_width must be >= 1, got {max_width}")
        return
    if not isinstance(max_width, Mapping):
        raise TypeError(
            "max_width must be an integer, a {pair name: cap} dict or None, got "
            f"{max_width!r} ({type(max_width).__name__})"
        )
    for key, cap in max_width.items():
        if not isinstance(key, str):
            raise TypeError(f"max_width keys must be pair names (str), got {key!r}")
        _check_integer(f"max_width[{key!r}]", cap, 1, False)


def _check_modes(arguments: dict[str, Any]) -> None:
    """``target`` / ``target_parameters`` / ``target_by`` and ``monitor`` / ``monitor_mode``."""
    target, budget = arguments["target"], arguments["target_parameters"]
    if target is not None and budget is not None:
        raise ValueError(
            "give either target (widths or a multiplier) or target_parameters (a parameter "
            f"budget), not both; got target={target!r}, target_parameters={budget!r}"
        )
    if isinstance(target, Mapping):
        if not target:
            raise ValueError("target is an empty dict: give {pair name: width} for some pair")
        for key, width in target.items():
            if not isinstance(key, str):
                raise TypeError(f"target keys must be pair names (str), got {key!r}")
            _check_integer(f"target[{key!r}]", width, 1, False)
    elif target is not None:
        if not _is_real(target):
            raise TypeError(
                "target must be a {pair name: width} dict, a multiplier of the starting widths "
                f"(a number >= 1, e.g. 4.0) or None, got {target!r} ({type(target).__name__})"
            )
        _check_real("target", target, 1.0)
    by = arguments["target_by"]
    if _is_integer(by):
        if by < 1:
            raise ValueError(f"target_by must be an optimizer step >= 1 or a fraction, got {by}")
    elif _is_real(by):
        _check_real("target_by", by, 0.0, 1.0, open_low=True)
    else:
        raise TypeError(
            "target_by must be an optimizer step (int >= 1) or a fraction of training "
            f"(float in (0, 1]), got {by!r} ({type(by).__name__})"
        )
    monitor = arguments["monitor"]
    if monitor is not None and (not isinstance(monitor, str) or not monitor):
        raise TypeError(f"monitor must be a logged metric's name (str) or None, got {monitor!r}")
    if arguments["monitor_mode"] not in ("min", "max"):
        raise ValueError(f"monitor_mode must be 'min' or 'max', got {arguments['monitor_mode']!r}")
    if monitor is not None and (target is not None or budget is not None):
        raise ValueError(
            "monitor and a target are exclusive: a target fixes the final size, monitor lets "
            f"validation decide it (got monitor={monitor!r} with a target)"
        )


def check_arguments(arguments: dict[str, Any]) -> None:
    """Reject bad arguments at construction, with the argument's name and the valid range.

    Parameters
    ----------
    arguments
        ``GrowthCallback.__init__``'s ``locals()``.

    Raises
    ------
    TypeError
        For a value of the wrong type (``statistics_samples=2.5``, ``pairs=42``).
    ValueError
        For a value out of range (``significance_margin=-1``, ``gain_threshold=nan``).
    """
    Method.parse(arguments["method"], "method")
    if arguments["loss_reduction"] not in ("mean", "sum"):
        raise ValueError(
            f"loss_reduction must be 'mean' or 'sum', got {arguments['loss_reduction']!r}"
        )
    _check_pairs(arguments["pairs"])
    network = arguments["network"]
    if network is not None and (not isinstance(network, str) or not network):
        raise TypeError(f"network must be an attribute name (str) or None, got {network!r}")
    for name, (smallest, optional) in _INTEGERS.items():
        _check_integer(name, arguments[name], smallest, optional)
    # A gain is a share of the desired update (at most 1): a threshold above 1 never grows.
    _check_real("gain_threshold", arguments["gain_threshold"], 0.0, 1.0)
    # A negative margin puts the threshold below the noise floor: noise would grow the network.
    if arguments["significance_margin"] is not None:
        _check_real("significance_margin", arguments["significance_margin"], 0.0)
    if arguments["false_growth_rate"] is not None:
        # 0 would never grow, 1 would not test at all.
        _check_real("false_growth_rate", arguments["false_growth_rate"], 0.0, 1.0, open_low=True)
        if arguments["false_growth_rate"] == 1.0:
            raise ValueError("false_growth_rate must be in (0, 1), got 1.0")
    _check_real("min_loss_decrease", arguments["min_loss_decrease"], 0.0)
    if arguments["confirm_margin"] is not None:
        _check_real("confirm_margin", arguments["confirm_margin"], 0.0)
    if not isinstance(arguments["negative_amplitudes"], bool):
        raise TypeError(
            f"negative_amplitudes must be True or False, got {arguments['negative_amplitudes']!r}"
        )
    compute_budget = arguments["compute_budget"]
    if isinstance(compute_budget, str):
        if compute_budget != "auto":
            raise ValueError(
                f"compute_budget must be 'auto', a positive share or None, got {compute_budget!r}"
            )
    elif compute_budget is not None:
        _check_real("compute_budget", compute_budget, 0.0, open_low=True)
    if arguments["stop_fraction"] is not None:
        _check_real("stop_fraction", arguments["stop_fraction"], 0.0, 1.0, open_low=True)
    amplitude_range = arguments["amplitude_range"]
    if not isinstance(amplitude_range, Sequence) or len(amplitude_range) != 2:
        raise TypeError(f"amplitude_range must be a pair (low, high), got {amplitude_range!r}")
    low, high = amplitude_range
    _check_real("amplitude_range[0]", low, 0.0, open_low=True)
    _check_real("amplitude_range[1]", high, 0.0, open_low=True)
    if low > high:
        raise ValueError(f"amplitude_range must satisfy 0 < low <= high, got {(low, high)}")
    if arguments["preactivation_rms"] is not None:
        _check_real("preactivation_rms", arguments["preactivation_rms"], 0.0, open_low=True)
    _check_max_width(arguments["max_width"])
    _check_modes(arguments)
    if arguments["loss_fn"] is not None and not callable(arguments["loss_fn"]):
        raise TypeError("loss_fn must be callable as loss_fn(pl_module, batch) -> loss tensor")


def check_network(pl_module: nn.Module, network: str | None) -> None:
    """Raise a clear error when ``network`` does not name a submodule of ``pl_module``.

    Raises
    ------
    GrowthConfigurationError
        Naming the attribute and listing the module's children.
    """
    if network is None:
        return
    try:
        pl_module.get_submodule(network)
    except AttributeError:
        children = [name for name, _ in pl_module.named_children()]
        raise GrowthConfigurationError(
            f"network={network!r}: {type(pl_module).__name__} has no submodule {network!r}. "
            f"Its child modules are {children}; name one of them (or a dotted path below one), "
            "or leave network=None to use the module itself or its largest child."
        ) from None


def check_max_width_keys(
    max_width: Any, pair_names: Iterable[str], name: str = "max_width"
) -> None:
    """Raise a clear error for a ``max_width`` key that is not the name of a growable pair.

    An unknown key was silently ignored: the pair it meant grew past the intended cap.

    Raises
    ------
    GrowthConfigurationError
        Naming the unknown keys and listing the valid pair names.
    """
    if not isinstance(max_width, Mapping):
        return
    names = list(pair_names)
    unknown = [key for key in max_width if key not in names]
    if unknown:
        raise GrowthConfigurationError(
            f"{name} has keys that are not growable pairs: {unknown}. The pairs are "
            f"{names} (names as in the growth events: '<first> -> <second>')."
        )
