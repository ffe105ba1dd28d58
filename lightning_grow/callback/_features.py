"""Trainer and module features that growth cannot serve, refused at setup with what to do.

Each check names the combination and the fix, instead of the error it would otherwise raise
mid-fit (often after the model was already changed).
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import StochasticWeightAveraging

from lightning_grow.callback._lightning import check_strategy

__all__ = ["check_fit"]


def check_fit(trainer: pl.Trainer, pl_module: pl.LightningModule, has_loss_fn: bool) -> None:
    """Refuse what growth cannot serve: the strategy (:func:`check_strategy`), SWA, and manual
    optimization without a ``loss_fn``.

    Raises
    ------
    ValueError
        Naming the combination and what to do instead.
    """
    check_strategy(trainer.strategy)
    swa = [type(c).__name__ for c in trainer.callbacks if isinstance(c, StochasticWeightAveraging)]
    if swa:
        # SWA keeps an averaged copy of the model that it updates with the live parameters:
        # after a growth the copy has the old shapes (update_parameters fails on the sizes),
        # even when growth stopped before SWA started (its copy is taken at fit start).
        raise ValueError(
            f"GrowthCallback cannot run with {swa[0]} in the same Trainer: SWA's averaged copy "
            "of the model keeps the shapes it had when fit started, so the first growth breaks "
            "its update_parameters. Grow first (a fit with GrowthCallback), then fine-tune the "
            "grown model with StochasticWeightAveraging in a second fit."
        )
    if not pl_module.automatic_optimization and not has_loss_fn:
        # The amplitude search evaluates the loss under torch.no_grad: a training_step that
        # calls manual_backward and steps its optimizers cannot run there (and must not step).
        raise ValueError(
            f"{type(pl_module).__name__} uses manual optimization (automatic_optimization = "
            "False, e.g. for several optimizers), so GrowthCallback cannot evaluate candidate "
            "neurons with its training_step (which calls manual_backward and steps the "
            "optimizers). Pass GrowthCallback(loss_fn=lambda module, batch: ...) returning the "
            "loss of a batch without backward or optimizer steps."
        )
