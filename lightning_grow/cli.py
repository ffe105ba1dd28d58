"""Command line: ``python -m lightning_grow {fit,validate,test} --config configs/<name>.yaml``.

A LightningCLI over :class:`~lightning_grow.models.ClassifierModule` and any LightningDataModule
(``data: {class_path: ..., init_args: ...}``). The growth callback is configured like any other
callback, under ``trainer.callbacks``. ``--print_config`` shows the full resolved config and
``--ckpt_path`` resumes from a checkpoint.

Besides the Lightning arguments, each subcommand takes ``--num_threads N``: torch's intra-op CPU
threads. Tiny models train several times faster single-threaded on small machines, so the digits
configs set 1. The default (unset) uses the ``LIGHTNING_GROW_NUM_THREADS`` environment variable
when present, else torch's own default.
"""

from __future__ import annotations

import os
import warnings

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from lightning_grow.models import ClassifierModule

__all__ = ["GrowCLI", "main"]

NUM_THREADS_ENV = "LIGHTNING_GROW_NUM_THREADS"


class GrowCLI(LightningCLI):
    """LightningCLI with a ``--num_threads`` option applied before anything is built."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add ``--num_threads``."""
        parser.add_argument(
            "--num_threads",
            type=int | None,
            default=None,
            help=(
                "torch CPU threads (torch.set_num_threads). 1 is fastest for tiny models on "
                f"small machines. Default: ${NUM_THREADS_ENV} if set, else torch's default."
            ),
        )

    def before_instantiate_classes(self) -> None:
        """Set torch's thread count before the model, data and trainer exist."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        num_threads = config.get("num_threads")
        if num_threads is None and os.environ.get(NUM_THREADS_ENV):
            num_threads = int(os.environ[NUM_THREADS_ENV])
        if num_threads is not None:
            if num_threads < 1:
                raise ValueError(f"num_threads must be >= 1, got {num_threads}")
            torch.set_num_threads(num_threads)


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
