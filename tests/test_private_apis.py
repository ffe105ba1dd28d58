"""Guards of the private APIs the package relies on (all used in ``callback/_lightning.py``).

Each test pins the version the API was verified on and checks the behaviour the package needs.
When a dependency is upgraded, a failure here says which private API to re-verify, before a
subtle failure in training does.
"""

from __future__ import annotations

import inspect

import lightning
import lightning.pytorch as pl
import pytest
import torch
import torchmetrics
from lightning.pytorch.loops.fit_loop import _FitLoop
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from lightning_grow.callback import _lightning
from lightning_grow.callback._lightning import quiet_evaluation, should_accumulate

#: The versions every private API below was verified on (constraints.txt pins them).
VERIFIED = {"lightning": "2.6.6", "torch": "2.14.1", "torchmetrics": "1.9.0"}


def _pinned(package: str, installed: str) -> None:
    base = installed.split("+")[0]
    if base != VERIFIED[package]:
        pytest.fail(
            f"{package} {base} is installed; lightning_grow's use of its private APIs was "
            f"verified on {VERIFIED[package]}. Re-verify the APIs listed in "
            "lightning_grow/callback/_lightning.py and update VERIFIED in this file."
        )


def test_the_guarded_versions_are_installed() -> None:
    _pinned("lightning", lightning.__version__)
    _pinned("torch", torch.__version__)
    _pinned("torchmetrics", torchmetrics.__version__)


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _Record(pl.Callback):
    def __init__(self) -> None:
        self.seen: list[bool] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen.append(should_accumulate(trainer))


def test_fit_loop_should_accumulate_says_when_a_step_follows() -> None:
    """``_FitLoop._should_accumulate``: True after a batch that only accumulates gradients."""
    assert callable(getattr(_FitLoop, "_should_accumulate", None)), "Lightning removed it"
    record = _Record()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=2,
        accumulate_grad_batches=2,
        callbacks=[record],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    data = TensorDataset(torch.randn(8, 2), torch.randn(8, 1))
    trainer.fit(_Tiny(), DataLoader(data, batch_size=2))
    assert record.seen == [True, False, True, False]


def test_ddp_remove_autograd_hooks_exists_without_arguments() -> None:
    """``DistributedDataParallel._remove_autograd_hooks()``, called before a re-wrap."""
    method = getattr(nn.parallel.DistributedDataParallel, "_remove_autograd_hooks", None)
    assert callable(method), "torch removed DistributedDataParallel._remove_autograd_hooks"
    assert list(inspect.signature(method).parameters) == ["self"]
    assert "_remove_autograd_hooks" in inspect.getsource(_lightning.rewrap_ddp)


def test_torchmetrics_state_attributes_are_what_quiet_evaluation_restores() -> None:
    """``Metric._defaults`` names the states; ``_update_count``, ``_computed`` and
    ``_forward_cache`` are the bookkeeping an update changes."""
    metric = MulticlassAccuracy(num_classes=3)
    assert set(metric._defaults) >= {"tp", "fp", "tn", "fn"}
    for name in ("_update_count", "_computed", "_forward_cache"):
        assert hasattr(metric, name), f"torchmetrics Metric has no {name}"

    class Holder(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.metric = metric

    holder = Holder()
    preds, target = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1])
    metric.update(preds, target)
    before = {name: getattr(metric, name).clone() for name in metric._defaults}
    with quiet_evaluation(holder):
        metric(preds, torch.tensor([2, 2, 2]))  # forward updates state and the caches
    assert metric._update_count == 1
    for name, value in before.items():
        torch.testing.assert_close(getattr(metric, name), value)


def test_ddp_strategy_keeps_its_start_method() -> None:
    """``DDPStrategy._start_method``: ``"spawn"`` copies rank 0's weights back into the parent."""
    assert DDPStrategy(start_method="spawn")._start_method == "spawn"
    assert DDPStrategy()._start_method == "popen"
