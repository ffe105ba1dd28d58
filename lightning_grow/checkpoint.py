"""Compatibility path: the checkpoint helpers live in :mod:`lightning_grow.surgery.checkpoint`."""

from lightning_grow.surgery.checkpoint import (
    ResizeOnLoadMixin,
    enable_resize_on_load,
    in_flight_state,
    reload_hint,
    resize_to_state_dict,
    warn_if_not_reloadable,
)

__all__ = [
    "ResizeOnLoadMixin",
    "enable_resize_on_load",
    "in_flight_state",
    "reload_hint",
    "resize_to_state_dict",
    "warn_if_not_reloadable",
]
