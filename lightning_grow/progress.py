"""Compatibility path (configs name ``lightning_grow.progress.EpochProgress``): the epoch lines
live in :mod:`lightning_grow.callback.progress`."""

from lightning_grow.callback.progress import EpochProgress

__all__ = ["EpochProgress"]
