"""A generic image/vector classifier LightningModule around any ``nn.Module`` backbone."""

from __future__ import annotations

import copy
import functools
import inspect
import warnings
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torchmetrics.classification import MulticlassAccuracy

from lightning_grow.surgery.checkpoint import ResizeOnLoadMixin

__all__ = ["ClassifierModule"]

# The instantiator LightningCLI records in hyperparameters; load_from_checkpoint trusts it and
# uses it to rebuild nested ``class_path`` configs (the backbone, the optimizer) with jsonargparse.
_CLI_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"
_FACTORY_ARGUMENTS = ("optimizer", "lr_scheduler")


def _describe_factory(factory: Any) -> dict[str, Any] | None:
    """``{"class_path", "init_args"}`` for a class or a ``functools.partial`` of one, else None."""
    init_args: dict[str, Any] = {}
    if isinstance(factory, functools.partial) and not factory.args:
        init_args, factory = dict(factory.keywords), factory.func
    if not inspect.isclass(factory):
        return None
    return {"class_path": f"{factory.__module__}.{factory.__qualname__}", "init_args": init_args}


class ClassifierModule(ResizeOnLoadMixin, LightningModule):
    """Cross-entropy classification of whatever ``backbone`` computes, with accuracy metrics.

    Logs ``train/loss`` (every step), ``train/acc``, ``val/loss``, ``val/acc``, ``test/loss`` and
    ``test/acc`` (per epoch). The optimizer is built on ``self.parameters()`` in
    :meth:`configure_optimizers`, so a growth callback that replaces parameters keeps working
    with the same optimizer object.

    Parameters
    ----------
    backbone
        Any module mapping a batch of inputs to ``(batch, num_classes)`` logits, e.g.
        :class:`~lightning_grow.models.MLP` or :func:`~lightning_grow.models.resnet18`.
    num_classes
        Number of classes (for the accuracy metrics; checked against the logits).
    optimizer
        Callable taking the parameters and returning an optimizer (default: Adam, lr 1e-3).
    lr_scheduler
        Optional callable taking the optimizer and returning a learning-rate scheduler.
    lr_scheduler_interval
        Step the scheduler every optimizer ``"step"`` or every ``"epoch"``. For a cosine schedule
        over the whole run use ``"epoch"`` with ``T_max = max_epochs``, or ``"step"`` with
        ``T_max`` = total optimizer steps.

    Notes
    -----
    Checkpoints rebuild the backbone from the hyperparameters. From the CLI, these are the parsed
    ``class_path`` configs. From Python, builders of :mod:`lightning_grow.models` record their
    own config (``init_config``) and optimizers given as a class or a ``functools.partial`` of
    one are recorded likewise; any other backbone (or optimizer factory) is left out of the
    hyperparameters and must be passed again: ``ClassifierModule.load_from_checkpoint(path,
    backbone=MyNet())``. Loading a checkpoint whose layers have grown needs the checkpoint
    resizing support of the growth package.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 10,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["step", "epoch"] = "epoch",
    ) -> None:
        super().__init__()
        if lr_scheduler_interval not in ("step", "epoch"):
            raise ValueError(
                f"lr_scheduler_interval must be 'step' or 'epoch', not {lr_scheduler_interval!r}"
            )
        with warnings.catch_warnings():
            # The backbone is an nn.Module only when built from Python; it is replaced right below.
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`.*")
            self.save_hyperparameters()
        self._make_hparams_rebuildable()
        self.backbone = backbone
        self.num_classes = num_classes
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.lr_scheduler_interval = lr_scheduler_interval
        # Micro average: the share of correctly classified samples (torchmetrics' default is macro).
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def _make_hparams_rebuildable(self) -> None:
        """Replace objects in the hparams by configs, or drop them (see the class notes).

        From the CLI, LightningCLI has already stored configs and its instantiator: nothing to do.
        Checkpoints must stay loadable with ``torch.load(weights_only=True)`` (LightningCLI's
        ``--ckpt_path`` reads them that way), so no module or function may remain.
        """
        hparams = self._hparams
        if "_instantiator" in hparams:
            return
        backbone_config = getattr(hparams.get("backbone"), "init_config", None)
        if backbone_config is None:
            hparams.pop("backbone", None)
        else:
            hparams["backbone"] = backbone_config
        for name in _FACTORY_ARGUMENTS:
            if hparams.get(name) is None:
                continue
            config = _describe_factory(hparams[name]) if backbone_config is not None else None
            if config is None:
                hparams.pop(name)
            else:
                hparams[name] = config
        if backbone_config is not None:
            hparams["_instantiator"] = _CLI_INSTANTIATOR
        self._hparams_initial = copy.deepcopy(hparams)

    def forward(self, inputs: Tensor) -> Tensor:
        """Logits of the backbone."""
        return self.backbone(inputs)

    def _loss_and_predictions(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        inputs, targets = batch
        logits = self(inputs)
        if logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"the backbone outputs {logits.shape[-1]} logits but num_classes={self.num_classes}"
            )
        return F.cross_entropy(logits, targets), logits.argmax(dim=-1), targets

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy on the batch; logs ``train/loss`` and ``train/acc``."""
        loss, predictions, targets = self._loss_and_predictions(batch)
        self.train_acc(predictions, targets)
        batch_size = targets.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=batch_size)
        return loss

    def _evaluation_step(self, batch: tuple[Tensor, Tensor], stage: str, metric: nn.Module) -> None:
        loss, predictions, targets = self._loss_and_predictions(batch)
        metric(predictions, targets)
        batch_size = targets.shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch_size)
        self.log(f"{stage}/acc", metric, prog_bar=True, batch_size=batch_size)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Logs ``val/loss`` and ``val/acc`` (epoch averages)."""
        self._evaluation_step(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Logs ``test/loss`` and ``test/acc`` (epoch averages)."""
        self._evaluation_step(batch, "test", self.test_acc)

    def configure_optimizers(self) -> Any:
        """The optimizer on ``self.parameters()`` and, if configured, its scheduler."""
        optimizer = self.optimizer_factory(self.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        scheduler_config: dict[str, Any] = {
            "scheduler": scheduler,
            "interval": self.lr_scheduler_interval,
        }
        if isinstance(scheduler, ReduceLROnPlateau):
            scheduler_config["monitor"] = "val/loss"
        return {"optimizer": optimizer, "lr_scheduler": scheduler_config}
