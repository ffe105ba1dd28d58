"""EpochProgress: which epochs get a line, and what the line says."""

from __future__ import annotations

import re

import lightning.pytorch as pl
import pytest

from lightning_grow.callback.progress import EpochProgress
from lightning_grow.data import DigitsDataModule
from lightning_grow.models import MLP, ClassifierModule


def test_every_n_epochs_and_the_last_epoch_get_a_line(capsys):
    model = ClassifierModule(MLP(in_features=64, hidden=(4,), num_classes=10))
    trainer = pl.Trainer(
        max_epochs=5,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[EpochProgress(every_n_epochs=2, metrics=("val/acc", "missing/metric"))],
    )
    trainer.fit(model, DigitsDataModule())
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert [line.split(" | ")[0] for line in lines] == ["epoch 2/5", "epoch 4/5", "epoch 5/5"]
    parameters = sum(p.numel() for p in model.parameters())
    pattern = r"epoch 5/5 \| step 10 \| val/acc (\d\.\d{4}) \| ([\d,]+) params \| \d+\.\d+ s"
    match = re.fullmatch(pattern, lines[-1])
    assert match is not None, lines[-1]
    assert float(match[1]) == pytest.approx(float(trainer.callback_metrics["val/acc"]), abs=5e-5)
    assert int(match[2].replace(",", "")) == parameters
    # Before the end, an estimate of the time left; none after the last step.
    assert re.search(r", ~\d+\.\d+ s left$", lines[0])
    assert "left" not in lines[-1]


def test_every_n_epochs_must_be_positive():
    with pytest.raises(ValueError, match="every_n_epochs"):
        EpochProgress(every_n_epochs=0)
