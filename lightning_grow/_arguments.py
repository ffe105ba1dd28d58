"""Validation of GrowthCallback's arguments: fail at construction, naming the argument."""

from __future__ import annotations

from typing import Any


def check_arguments(arguments: dict[str, Any]) -> None:
    """Reject bad arguments at construction, with the argument's name and the valid range."""
    if arguments["method"] not in ("tiny", "gradmax", "random"):
        raise ValueError(
            f"method must be 'tiny', 'gradmax' or 'random', got {arguments['method']!r}"
        )
    if arguments["loss_reduction"] not in ("mean", "sum"):
        raise ValueError(
            f"loss_reduction must be 'mean' or 'sum', got {arguments['loss_reduction']!r}"
        )
    pairs = arguments["pairs"]
    if isinstance(pairs, str) and pairs != "auto":
        raise ValueError(
            f"pairs must be 'auto', a list of pairs or a predicate, got {pairs!r}; "
            f"for one pair write pairs=[{pairs!r}]"
        )
    non_negative = (
        "warmup_steps",
        "cooldown_steps",
        "max_window_extensions",
        "gain_threshold",
        "min_loss_decrease",
    )
    for name in non_negative:
        if arguments[name] < 0:
            raise ValueError(f"{name} must be >= 0, got {arguments[name]}")
    positive = (
        "held_samples",
        "statistics_samples",
        "stop_step",
        "stop_epoch",
        "patience",
        "max_neurons_per_event",
        "max_parameters",
    )
    for name in positive:
        value = arguments[name]
        if value is not None and value < 1:
            raise ValueError(f"{name} must be a positive integer or None, got {value}")
    fraction = arguments["stop_fraction"]
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ValueError(f"stop_fraction must be in (0, 1] or None, got {fraction}")
    low, high = arguments["amplitude_range"]
    if not 0.0 < low <= high:
        raise ValueError(f"amplitude_range must satisfy 0 < low <= high, got {(low, high)}")
    max_width = arguments["max_width"]
    if isinstance(max_width, int) and max_width < 1:
        raise ValueError(f"max_width must be >= 1, got {max_width}")
    if arguments["loss_fn"] is not None and not callable(arguments["loss_fn"]):
        raise TypeError("loss_fn must be callable as loss_fn(pl_module, batch) -> loss tensor")
