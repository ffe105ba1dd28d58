"""Command line: ``python -m lightning_grow {fit,validate,test} --config configs/<name>.yaml``.

A LightningCLI over :class:`~lightning_grow.models.ClassifierModule` and any LightningDataModule
(``data: {class_path: ..., init_args: ...}``). The growth callback is configured like any other
callback, under ``trainer.callbacks``. ``--print_config`` shows the full resolved config and
``--ckpt_path`` resumes from a checkpoint.

Besides the Lightning arguments, each subcommand takes ``--num_threads N``: torch's intra-op CPU
threads. Tiny models train several times faster single-threaded on small machines, so the digits
configs set 1. The default (unset) uses the ``LIGHTNING_GROW_NUM_THREADS`` environment variable
when present, else torch's own default.

After ``fit``, the CLI prints a short summary: the last validation metrics (and test metrics with
``--summary_test true``), parameters at the start and the end, the fit's wall time split into
training and growth, and where the logs, the checkpoint and the growth plot are. The plot
(``growth.png``: width per pair and parameters against steps) is written next to the logs unless
``--growth_plot false``.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.model_helpers import is_overridden

from lightning_grow.callback._summary import (
    FitClock,
    fit_summary,
    format_summary,
    log_dir,
    stage_metrics,
    validates_on_test_set,
    write_growth_plot,
)
from lightning_grow.models import ClassifierModule
from lightning_grow.reporting.console import write_line

__all__ = ["GrowCLI", "main"]

NUM_THREADS_ENV = "LIGHTNING_GROW_NUM_THREADS"


class GrowCLI(LightningCLI):
    """LightningCLI with a ``--num_threads`` option applied before anything is built and a
    summary of what ``fit`` produced."""

    _clock: FitClock | None = None

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add ``--num_threads``, ``--summary``, ``--summary_test`` and ``--growth_plot``."""
        parser.add_argument(
            "--num_threads",
            type=int | None,
            default=None,
            help=(
                "torch CPU threads (torch.set_num_threads). 1 is fastest for tiny models on "
                f"small machines. Default: ${NUM_THREADS_ENV} if set, else torch's default."
            ),
        )
        parser.add_argument(
            "--summary",
            type=bool,
            default=True,
            help="After fit, print metrics, parameters, time in growth vs training, file paths.",
        )
        parser.add_argument(
            "--summary_test",
            type=bool,
            default=False,
            help="After fit, also evaluate the final model on the datamodule's test set.",
        )
        parser.add_argument(
            "--growth_plot",
            type=bool,
            default=True,
            help="After fit, draw width per pair and parameters vs step as growth.png by the logs.",
        )

    def _subcommand_config(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        """Set torch's thread count before the model, data and trainer exist."""
        config = self._subcommand_config()
        num_threads = config.get("num_threads")
        if num_threads is None and os.environ.get(NUM_THREADS_ENV):
            num_threads = int(os.environ[NUM_THREADS_ENV])
        if num_threads is not None:
            if num_threads < 1:
                raise ValueError(f"num_threads must be >= 1, got {num_threads}")
            torch.set_num_threads(num_threads)

    def before_fit(self) -> None:
        """Attach the clock that times the fit for the summary."""
        self._clock = FitClock()
        self.trainer.callbacks.append(self._clock)

    def after_fit(self) -> None:
        """Evaluate on the test set if asked, draw the growth plot, print the summary (rank 0)."""
        config = self._subcommand_config()
        trainer, module = self.trainer, self.model
        # A test run resets callback_metrics: keep the last validation first.
        metrics = {"val": stage_metrics(trainer.callback_metrics, "val")}
        notes: dict[str, str] = {}
        test_is_validation = False
        if not metrics["val"]:
            notes["val"] = "not run"
        if config.get("summary_test") and not trainer.interrupted:
            datamodule = self.datamodule
            if (
                datamodule is not None
                and is_overridden("test_dataloader", datamodule)
                and is_overridden("test_step", module)
            ):
                # Every rank takes part; the fitted weights are tested as they are in memory.
                trainer.test(module, datamodule=datamodule, verbose=False)
                metrics["test"] = stage_metrics(trainer.callback_metrics, "test")
                test_is_validation = validates_on_test_set(datamodule)
            else:
                notes["test"] = "no test set or test_step"
        if not trainer.is_global_zero:
            return
        plot = None
        if config.get("growth_plot", True):
            resumed = config.get("ckpt_path") is not None
            plot, why = write_growth_plot(trainer, log_dir(trainer), resumed=resumed)
            if plot is None:
                notes["growth plot"] = f"none ({why})"
        if not config.get("summary", True):
            return
        summary = fit_summary(trainer, module, self._clock, metrics)
        if plot is not None:
            summary.files["growth plot"] = str(plot)
        summary.notes.update(notes)
        summary.test_is_validation = test_is_validation
        write_line(format_summary(summary))


def main(args: ArgsType = None) -> GrowCLI:
    """Run the command line (``args`` as for ``LightningCLI``: a list of strings, or ``None``
    for ``sys.argv``).

    Parameters
    ----------
    args
        Command-line arguments, e.g. ``["fit", "--config", "configs/digits_mlp.yaml"]``.

    Returns
    -------
    GrowCLI
        The CLI object: ``.trainer``, ``.model`` and ``.datamodule`` after the run.
    """
    # In-memory datasets (digits, synthetic CIFAR) are fastest without worker processes.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    return GrowCLI(
        ClassifierModule,
        LightningDataModule,
        subclass_mode_data=True,
        args=args,
        # The model carries its own optimizer / scheduler arguments (dependency injection).
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
    )
