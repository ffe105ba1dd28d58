"""Target mode (target, target_parameters, target_by) and the validation-monitored stop."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_grow import GrowthCallback
from lightning_grow.callback._monitor import ValidationMonitor
from lightning_grow.decision.target import GrowthTarget

FAST = dict(
    network="net",
    statistics_samples=64,
    held_samples=32,
    compute_budget=None,
    verbose=False,
    wandb_tables=False,
)


class Classifier(L.LightningModule):
    def __init__(self, net: nn.Module, val_values: list[float] | None = None) -> None:
        super().__init__()
        self.net = net
        self.val_values = val_values
        self.checks = 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        if self.val_values is None:
            return
        value = self.val_values[min(self.checks, len(self.val_values) - 1)]
        self.log("val_acc", value, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.checks += 1

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def mlp(width: int = 2) -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, width), nn.ReLU(), nn.Linear(width, 3))


def cnn(channels: int = 2) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, 3, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 16, 3),
    )


def data(image: bool = False, n: int = 256) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = (
        torch.randn(n, 1, 4, 4, generator=generator)
        if image
        else torch.randn(n, 6, generator=generator)
    )
    y = (x.flatten(1)[:, :3].sum(1) > 0).long() + (x.flatten(1)[:, 3] > 1).long()
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=generator)


def fit(
    model, callback, epochs: int = 6, val: bool = False, image: bool = False, **trainer_options
):
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        num_sanity_val_steps=0,
        **trainer_options,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(workers|LeafSpec|training batches).*")
        trainer.fit(model, data(image), data(image) if val else None)
    return trainer


def widths_by_step(callback: GrowthCallback) -> dict[int, dict[str, int]]:
    widths = dict(callback.initial_widths)
    out = {}
    for event in callback.history:
        widths[event.pair] = event.width_after
        out[event.step] = dict(widths)
    return out


def test_mlp_reaches_exactly_the_target_widths_by_the_step():
    model = Classifier(mlp(2))
    callback = GrowthCallback(target={"net.0 -> net.2": 20}, target_by=30, **FAST)
    trainer = fit(model, callback, epochs=6)  # 8 steps per epoch: 48 steps
    assert callback.widths == {"net.0 -> net.2": 20}
    grown = [e for e in callback.history if e.accepted]
    assert len(grown) >= 2  # spread over several decisions, not one jump
    assert max(e.step for e in grown) < 30
    assert all(e.width_after <= 20 for e in callback.history)
    assert model.net[0].out_features == 20 and trainer.global_step == 48


def test_cnn_multiplier_target_every_pair_exactly():
    model = Classifier(cnn(2))
    callback = GrowthCallback(target=3.0, target_by=0.5, **FAST)
    fit(model, callback, epochs=6, image=True)
    expected = {name: 3 * width for name, width in callback.initial_widths.items()}
    assert callback.initial_widths == {"net.0 -> net.2": 2, "net.2 -> net.5": 3}
    assert callback.widths == expected
    for widths in widths_by_step(callback).values():
        assert all(widths[name] <= expected[name] for name in expected)
    assert max(e.step for e in callback.history if e.accepted) < 24


def test_parameter_budget_is_respected_and_nearly_spent():
    model = Classifier(mlp(2))
    budget = 150  # 6*w + w + 3*w + 3 = 10 w + 3 -> at most w = 14
    callback = GrowthCallback(target_parameters=budget, target_by=30, **FAST)
    fit(model, callback, epochs=6)
    parameters = sum(p.numel() for p in model.net.parameters())
    assert parameters <= budget
    assert parameters > budget - 10  # within one neuron of the budget
    assert callback.widths == {"net.0 -> net.2": 14}


def test_no_growth_after_target_by_and_training_goes_on():
    model = Classifier(mlp(2))
    callback = GrowthCallback(target={"net.0 -> net.2": 40}, target_by=20, **FAST)
    trainer = fit(model, callback, epochs=4)
    assert all(e.step < 20 for e in callback.history)
    assert trainer.global_step == 32


def test_monitor_keeps_growing_while_the_metric_improves():
    values = [0.5 + 0.01 * k for k in range(100)]  # improves at every check
    model = Classifier(mlp(2), values)
    callback = GrowthCallback(monitor="val_acc", monitor_mode="max", stop_fraction=None, **FAST)
    fit(model, callback, epochs=8, val=True)
    grown = [e for e in callback.history if e.accepted]
    assert len({e.step for e in grown}) >= 5
    assert not callback.monitor.stopped


def test_monitor_stops_growth_when_the_metric_stops_improving():
    values = [0.5, 0.6, 0.7, 0.7, 0.69, 0.7, 0.8, 0.9, 0.95]  # plateau at checks 4-6
    model = Classifier(mlp(2), values)
    callback = GrowthCallback(
        monitor="val_acc", monitor_mode="max", monitor_patience=3, stop_fraction=None, **FAST
    )
    fit(model, callback, epochs=9, val=True)
    assert callback.monitor.stopped
    stopped_at = 6 * 8  # the 6th check, after epoch 6 (8 steps per epoch)
    assert all(e.step <= stopped_at for e in callback.history)
    assert any(e.accepted for e in callback.history)
    width = callback.widths["net.0 -> net.2"]
    assert model.net[0].out_features == width


def test_monitor_warns_when_the_metric_is_not_logged():
    model = Classifier(mlp(2), None)
    callback = GrowthCallback(monitor="val_acc", **FAST)
    with pytest.warns(UserWarning, match="val_acc.*not logged"):
        fit(model, callback, epochs=1, val=True)


def test_validation_monitor_counts_patience_like_early_stopping():
    monitor = ValidationMonitor("val_loss", "min", patience=2, min_delta=0.0)
    for value in (1.0, 0.9, 0.95, 0.9):
        monitor.update(value)
    assert monitor.stopped and monitor.best == 0.9
    restored = ValidationMonitor("val_loss", "min", patience=2)
    restored.load_state_dict(monitor.state_dict())
    assert restored.stopped and restored.best == 0.9


def test_target_quota_is_front_loaded_and_never_overshoots():
    target = GrowthTarget({"a": 100}, None, 100)
    target.resolve({"a": 10}, float("inf"))
    width, step = 10, 10
    while step < 100:
        quota = target.quota(step, {"a": width}, 0)
        width += quota.neurons["a"]
        assert width <= 100
        step += 10
    assert width == 100


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        (dict(target="big"), TypeError, "target must be"),
        (dict(target=0.5), ValueError, "target must be"),
        (dict(target={}), ValueError, "target is an empty dict"),
        (dict(target={"a -> b": 0}), ValueError, r"target\['a -> b'\]"),
        (dict(target=2.0, target_parameters=100), ValueError, "either target"),
        (dict(target_parameters=0), ValueError, "target_parameters"),
        (dict(target=2.0, target_by=0), ValueError, "target_by"),
        (dict(target=2.0, target_by=1.5), ValueError, "target_by"),
        (dict(target=2.0, target_by="half"), TypeError, "target_by"),
        (dict(monitor=3), TypeError, "monitor must be"),
        (dict(monitor="val_loss", monitor_mode="up"), ValueError, "monitor_mode"),
        (dict(monitor="val_loss", monitor_patience=0), ValueError, "monitor_patience"),
        (dict(monitor="val_loss", target=2.0), ValueError, "exclusive"),
    ],
)
def test_argument_errors_name_the_argument(options, error, match):
    with pytest.raises(error, match=match):
        GrowthCallback(**options)


def test_unknown_target_pair_is_refused_at_setup():
    callback = GrowthCallback(target={"fc9 -> fc10": 8}, **FAST)
    with pytest.raises(Exception, match="target has keys"):
        fit(Classifier(mlp(2)), callback, epochs=1)


def test_resume_keeps_target_and_monitor_state(tmp_path):
    model = Classifier(mlp(2))
    callback = GrowthCallback(target={"net.0 -> net.2": 20}, target_by=30, **FAST)
    trainer = fit(model, callback, epochs=2)  # 16 steps: part of the way
    path = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(path)
    width_mid = callback.widths["net.0 -> net.2"]
    assert 2 < width_mid < 20
    resumed = GrowthCallback(target={"net.0 -> net.2": 20}, target_by=30, **FAST)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=6,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[resumed],
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(workers|LeafSpec|training batches).*")
        trainer.fit(Classifier(mlp(2)), data(), ckpt_path=path)
    assert resumed.target.by_step == 30
    assert resumed.widths == {"net.0 -> net.2": 20}
    assert all(e.step < 30 for e in resumed.history)

    monitored = GrowthCallback(monitor="val_acc", monitor_mode="max", **FAST)
    monitored.monitor.update(0.7)
    state = monitored.state_dict()
    again = GrowthCallback(monitor="val_acc", monitor_mode="max", **FAST)
    again.load_state_dict(state)
    assert again.monitor.best == 0.7 and again.monitor.fresh


def test_target_at_the_starting_width_warns_and_grows_nothing():
    model = Classifier(mlp(4))
    callback = GrowthCallback(target={"net.0 -> net.2": 4}, target_by=20, **FAST)
    with pytest.warns(UserWarning, match="already at its target"):
        fit(model, callback, epochs=2)
    assert callback.widths == {"net.0 -> net.2": 4}
    assert not any(e.accepted for e in callback.history)


def test_monitor_without_a_validation_loop_warns_and_grows_nothing():
    model = Classifier(mlp(2), [0.5])
    callback = GrowthCallback(monitor="val_acc", monitor_mode="max", **FAST)
    with pytest.warns(UserWarning, match="no validation check has reported it"):
        fit(model, callback, epochs=3, val=False)
    assert not any(e.accepted for e in callback.history)
