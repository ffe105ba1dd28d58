"""Shared test helpers (imported as ``tests.helpers``; pyproject puts the repo root on the path)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from lightning_grow import GrowthCallback


def permissive_callback(**options: Any) -> GrowthCallback:
    """A callback that grows whenever it can: for tests about state and plumbing, not policy."""
    permissive = dict(
        significance_margin=0.0,
        statistics_samples=64,
        held_samples=32,
        gain_threshold=0.0,
        min_loss_decrease=0.0,
        negative_amplitudes=True,
        patience=None,
        stop_fraction=None,
        verbose=False,
        # The compute budget plans from measured timings: runs compared bitwise go without it.
        compute_budget=None,
    )
    callback = GrowthCallback(**{**permissive, **options})
    callback.confirm_held_out = False  # every candidate that lowers the held-out loss grows
    return callback


def quiet_trainer(**options: Any) -> pl.Trainer:
    """A CPU ``Trainer`` without logger, checkpoints, progress bar or model summary."""
    quiet = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return pl.Trainer(**{**quiet, **options})
