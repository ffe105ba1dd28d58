"""GrowthCallback end to end on one CPU process: it grows, it helps, it resumes, it refuses."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_grow import GrowthCallback
from lightning_grow.data import DigitsDataModule
from lightning_grow.models import CNN, MLP, ClassifierModule
from tests.helpers import permissive_callback


def _trainer(callbacks, **options) -> pl.Trainer:
    defaults = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    defaults.update(options)
    return pl.Trainer(callbacks=callbacks, **defaults)


def _digits_accuracy(grow: bool, epochs: int) -> tuple[float, GrowthCallback | None]:
    pl.seed_everything(0, verbose=False)
    data = DigitsDataModule(batch_size=64)
    model = ClassifierModule(MLP(64, (2, 2), 10), num_classes=10)
    callback = GrowthCallback(verbose=False) if grow else None
    trainer = _trainer([callback] if callback else [], max_epochs=epochs)
    trainer.fit(model, data)
    accuracy = trainer.test(model, data, verbose=False)[0]["test/acc"]
    return accuracy, callback


def test_digits_mlp_from_width_two_grows_and_beats_the_tiny_network() -> None:
    fixed_accuracy, _ = _digits_accuracy(grow=False, epochs=20)
    grown_accuracy, callback = _digits_accuracy(grow=True, epochs=20)
    assert callback is not None
    widths = callback.widths
    assert all(width > 2 for width in widths.values()), widths
    assert any(event.accepted for event in callback.history)
    assert grown_accuracy > fixed_accuracy + 0.05, (grown_accuracy, fixed_accuracy)
    assert grown_accuracy > 0.85
    assert set(callback.timings) == {"statistics", "solve", "search", "surgery"}
    assert all(seconds >= 0 for seconds in callback.timings.values())


class _ImageClassifier(ClassifierModule):
    pass


def _tiny_resnet(num_classes: int) -> nn.Module:
    """torchvision BasicBlocks with 8 residual channels and 1-channel interiors (growable)."""
    from torchvision.models.resnet import BasicBlock

    blocks = []
    for _ in range(2):
        block = BasicBlock(8, 8)
        block.conv1 = nn.Conv2d(8, 1, 3, padding=1, bias=False)
        block.bn1 = nn.BatchNorm2d(1)
        block.conv2 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        blocks.append(block)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        *blocks,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )


@pytest.mark.parametrize("architecture", ["cnn", "resnet"])
def test_conv_models_grow_and_accepted_events_lower_the_held_loss(architecture: str) -> None:
    pl.seed_everything(0, verbose=False)
    if architecture == "cnn":
        data = DigitsDataModule(batch_size=32, flatten=False)
        network = CNN(in_channels=1, channels=(2, 2), num_classes=10, image_size=8)
    else:
        images = torch.randn(256, 3, 8, 8)
        labels = (images[:, 0].mean((1, 2)) > 0).long() + 2 * (images[:, 1].mean((1, 2)) > 0)
        loader = DataLoader(TensorDataset(images, labels), batch_size=32, shuffle=True)
        data = pl.LightningDataModule.from_datasets(train_dataset=loader.dataset, batch_size=32)
        network = _tiny_resnet(num_classes=4)
    model = _ImageClassifier(network, num_classes=10 if architecture == "cnn" else 4)
    callback = permissive_callback(statistics_samples=128, held_samples=64)
    trainer = _trainer([callback], max_steps=40)
    trainer.fit(model, data)
    accepted = [event for event in callback.history if event.accepted]
    assert accepted, [(e.pair, e.reason) for e in callback.history]
    for event in accepted:
        assert event.loss_after < event.loss_before, event
        assert event.width_after == event.width_before + event.neurons_added
    initial = callback.initial_widths
    assert any(callback.widths[name] > initial[name] for name in initial)
    # The grown network still runs forward and backward.
    images, labels = next(iter(trainer.train_dataloader))
    nn.functional.cross_entropy(model(images), labels).backward()


class _Regression(pl.LightningModule):
    """Deterministic regression with a tiny MLP (no shuffling, so runs are comparable)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 1), nn.Tanh(), nn.Linear(1, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-2)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.9)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler}}


def _regression_loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(320, 8, generator=generator)
    teacher = torch.randn(8, 3, generator=generator)
    y = torch.sin(3 * x @ teacher) + 0.5 * (x[:, :3] ** 2)
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=False)


def test_resume_from_checkpoint_continues_with_the_same_decisions(tmp_path) -> None:
    # Run A: 60 steps straight through, with a checkpoint at step 30 (end of epoch 3).
    pl.seed_everything(0, verbose=False)
    model_a = _Regression()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=30, save_top_k=-1)
    callback_a = permissive_callback()
    trainer_a = _trainer([callback_a, checkpoint], max_steps=60, enable_checkpointing=True)
    trainer_a.fit(model_a, _regression_loader())
    path = next(p for p in tmp_path.iterdir() if "step=30" in p.name)
    assert any(e.accepted and e.step <= 30 for e in callback_a.history)
    assert any(e.accepted and e.step > 30 for e in callback_a.history)

    # Run B: a freshly built tiny model resumed from step 30.
    pl.seed_everything(0, verbose=False)
    model_b = _Regression()
    callback_b = permissive_callback()
    trainer_b = _trainer([callback_b], max_steps=60)
    trainer_b.fit(model_b, _regression_loader(), ckpt_path=path)

    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)

    def decisions(callback: GrowthCallback) -> list[tuple]:
        return [(e.step, e.pair, e.neurons_added, e.amplitude) for e in callback.history]

    # B's history holds A's first 30 steps (from the checkpoint) and then the same decisions.
    assert decisions(callback_b) == decisions(callback_a)
    sched_a = trainer_a.lr_scheduler_configs[0].scheduler.state_dict()
    sched_b = trainer_b.lr_scheduler_configs[0].scheduler.state_dict()
    assert sched_a["last_epoch"] == sched_b["last_epoch"]


def test_model_without_growable_pair_gives_a_clear_error() -> None:
    class Single(_Regression):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 3))

    with pytest.raises(ValueError, match=r"(?i)growable"):
        _trainer([GrowthCallback(verbose=False)], max_steps=1).fit(Single(), _regression_loader())


def test_unsupported_strategy_is_refused_with_a_clear_message() -> None:
    from lightning.pytorch.strategies import FSDPStrategy

    from lightning_grow.callback._lightning import check_strategy

    with pytest.raises(ValueError, match="FSDP"):
        check_strategy(FSDPStrategy())


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"method": "magic"}, "method"),
        ({"gain_threshold": -1.0}, "gain_threshold"),
        ({"stop_fraction": 1.5}, "stop_fraction"),
        ({"held_samples": 0}, "held_samples"),
        ({"amplitude_range": (1.0, 0.5)}, "amplitude_range"),
        ({"pairs": "fc1 -> fc2"}, "pairs"),
    ],
)
def test_bad_arguments_are_rejected_at_construction(arguments, message) -> None:
    with pytest.raises(ValueError, match=message):
        GrowthCallback(**arguments)


class _ReluRegression(_Regression):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 2), nn.ReLU(), nn.Linear(2, 3))


def _grow_once(method: str) -> tuple[_ReluRegression, GrowthCallback]:
    pl.seed_everything(0, verbose=False)
    model = _ReluRegression()
    callback = permissive_callback(method=method)
    _trainer([callback], max_steps=3).fit(model, _regression_loader())
    assert [e.accepted for e in callback.history] == [True], callback.history
    return model, callback


def test_gradmax_units_with_zero_fan_in_still_receive_gradients() -> None:
    model, callback = _grow_once("gradmax")
    event = callback.history[0]
    first = model.net[0]
    new_rows = slice(event.width_before, event.width_after)
    # Function-preserving: zero fan-in; output weights are non-zero.
    assert torch.count_nonzero(first.weight[new_rows]) == 0
    assert torch.count_nonzero(model.net[2].weight[:, new_rows]) > 0
    x, y = next(iter(_regression_loader()))
    nn.functional.mse_loss(model.net(x), y).backward()
    # ReLU'(0) = 0 in PyTorch: without the nudge these gradients would be exactly zero.
    assert torch.count_nonzero(first.weight.grad[new_rows]) > 0


def test_random_growth_preserves_the_function_at_installation() -> None:
    model, callback = _grow_once("random")
    event = callback.history[0]
    new_rows = slice(event.width_before, event.width_after)
    assert torch.count_nonzero(model.net[2].weight[:, new_rows]) == 0
    assert torch.count_nonzero(model.net[0].weight[new_rows]) > 0
    assert event.loss_after == event.loss_before


def test_quiet_evaluation_leaves_in_place_updated_metrics_untouched() -> None:
    from torchmetrics import MeanMetric

    from lightning_grow.callback._lightning import quiet_evaluation

    module = _Regression()
    module.tracked = MeanMetric()
    module.tracked.update(torch.tensor([1.0, 3.0]))
    with quiet_evaluation(module):
        module.tracked.update(torch.tensor([100.0]))  # MeanMetric updates its state in place
    assert module.tracked.compute() == 2.0
    assert module.training
