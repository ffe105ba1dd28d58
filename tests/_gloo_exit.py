"""Keeps 2-rank ``ddp_spawn`` test workers from aborting at interpreter exit (torch + gloo)."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from lightning_grow._lightning import settle_gloo_at_exit


class SettleGlooAtExit(Callback):
    """Runs :func:`lightning_grow._lightning.settle_gloo_at_exit` in every worker."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        settle_gloo_at_exit()
