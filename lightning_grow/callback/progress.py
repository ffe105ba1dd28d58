"""A compact progress line per epoch that sits between the growth lines instead of fighting them.

Lightning's progress bar redraws one terminal line in place; in a log file (a batch job, ``nohup``,
``tee``) it leaves thousands of carriage-return updates, and on a terminal it forgets each epoch
once the next one starts. :class:`EpochProgress` writes one line per epoch (or every
``every_n_epochs``) instead, through the same tqdm-aware writer as the growth events, so the
growth lines, these lines and an optional progress bar interleave cleanly::

    epoch 10/60 | step 190 | train/loss 0.412 | val/loss 0.301 | val/acc 0.921 | 1,613 params |
    5.2 s, ~26 s left
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from lightning_grow.callback._summary import format_seconds, format_value, network_parameters
from lightning_grow.reporting.console import write_line

__all__ = ["EpochProgress"]


class EpochProgress(Callback):
    """Print one line after every ``every_n_epochs`` epochs (and after the last one), on rank 0.

    The line holds the epoch, the global step, the chosen metrics as last logged (validation
    included: Lightning validates before ``on_train_epoch_end``), the network's parameter count
    and the elapsed and estimated remaining time of training.

    Parameters
    ----------
    every_n_epochs
        Print after epochs ``n, 2n, ...`` and after the final epoch.
    metrics
        Names in ``trainer.callback_metrics`` to show, in this order; missing ones are skipped.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        metrics: Sequence[str] = ("train/loss", "val/loss", "val/acc"),
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.metrics = tuple(metrics)
        self._start: float | None = None
        self._start_step = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()
        self._start_step = trainer.global_step

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        done = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and done == trainer.max_epochs
        if not trainer.is_global_zero or (done % self.every_n_epochs and not last):
            return
        write_line(self.format_line(trainer, pl_module))

    def format_line(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
        """The line for the epoch that just ended."""
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        cells = [f"epoch {trainer.current_epoch + 1}{epochs}", f"step {trainer.global_step:,}"]
        for name in self.metrics:
            value = trainer.callback_metrics.get(name)
            if value is not None and value.numel() == 1:
                cells.append(f"{name} {format_value(float(value))}")
        cells.append(f"{network_parameters(trainer, pl_module):,} params")
        if self._start is not None:
            cells.append(self._time_cell(trainer))
        return " | ".join(cells)

    def _time_cell(self, trainer: pl.Trainer) -> str:
        elapsed = time.perf_counter() - (self._start or 0.0)
        text = format_seconds(elapsed)
        steps = trainer.global_step - self._start_step
        total = trainer.estimated_stepping_batches
        # estimated_stepping_batches is inf for an unbounded run: then no estimate.
        left = int(total) - trainer.global_step if total != float("inf") else 0
        if steps > 0 and left > 0:
            text += f", ~{format_seconds(left * elapsed / steps)} left"
        return text
