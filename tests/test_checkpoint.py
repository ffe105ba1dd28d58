"""Grown checkpoints: resize-on-load, resuming trainer.fit and load_from_checkpoint."""

from __future__ import annotations

import copy
import pickle

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_grow.surgery.checkpoint import (
    ResizeOnLoadMixin,
    enable_resize_on_load,
    resize_to_state_dict,
)
from lightning_grow.surgery.widen import NewNeurons, grow_pair
from lightning_grow.topology.pairs import GrowablePair

# ---------------------------------------------------------------------------------------------
# resize_to_state_dict and the pre-hook on plain modules


def mlp(hidden: int, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(3, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, 2)
    ).to(dtype)


def cnn(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(channels * 9, 2),
    )


def test_resize_matches_incoming_shapes_and_keeps_dtype_and_requires_grad():
    small, big = mlp(2, torch.float64), mlp(5)
    small[0].bias.requires_grad_(False)
    untouched = small[3].bias
    resized = resize_to_state_dict(small, big.state_dict())
    assert resized == ["0", "1", "3"]
    assert (small[0].in_features, small[0].out_features) == (3, 5)
    assert small[1].num_features == 5 and small[1].running_var.shape == (5,)
    assert small[3].in_features == 5 and small[3].weight.shape == (2, 5)
    assert small[3].bias is untouched
    assert not small[0].bias.requires_grad and small[0].weight.requires_grad
    assert all(
        t.dtype == torch.float64 for t in small.state_dict().values() if t.is_floating_point()
    )
    assert isinstance(small[0].weight, nn.Parameter)
    # Fresh values until loaded: a BatchNorm of the new size.
    assert torch.equal(small[1].running_var, torch.ones(5, dtype=torch.float64))
    assert torch.equal(small[1].weight.detach(), torch.ones(5, dtype=torch.float64))


def test_pre_hook_loads_grown_conv_net_exactly():
    small, big = cnn(2), cnn(6)
    for tensor in big.state_dict().values():
        if tensor.is_floating_point():
            tensor.uniform_(0.5, 1.5)
    enable_resize_on_load(small)
    small.load_state_dict(big.state_dict())
    assert (small[0].out_channels, small[4].in_features) == (6, 54)
    big.eval(), small.eval()
    inputs = torch.randn(2, 1, 3, 3)
    assert torch.equal(small(inputs), big(inputs))
    assert all(
        torch.equal(a, b) for a, b in zip(small.state_dict().values(), big.state_dict().values())
    )


def test_shrinking_works_too():
    big, small = mlp(6), mlp(2)
    enable_resize_on_load(big)
    big.load_state_dict(small.state_dict())
    assert big[0].out_features == 2 and big[1].num_features == 2


def test_prefix_and_hook_on_a_submodule():
    inner_small, inner_big = mlp(2), mlp(4)
    parent = nn.ModuleDict({"head": nn.Linear(2, 2), "body": inner_small})
    big_parent = nn.ModuleDict({"head": nn.Linear(2, 2), "body": inner_big})
    assert resize_to_state_dict(inner_small, big_parent.state_dict(), prefix="body.") == [
        "0",
        "1",
        "3",
    ]
    parent = nn.ModuleDict({"head": nn.Linear(2, 2), "body": mlp(2)})
    enable_resize_on_load(parent["body"])  # the hook receives the "body." prefix
    parent.load_state_dict(big_parent.state_dict())
    assert parent["body"][0].out_features == 4


def test_hook_is_idempotent_and_removable():
    model = mlp(2)
    first = enable_resize_on_load(model)
    second = enable_resize_on_load(model)
    assert len(model._load_state_dict_pre_hooks) == 1 and first.id == second.id
    second.remove()
    assert len(model._load_state_dict_pre_hooks) == 0
    with pytest.raises(RuntimeError, match="size mismatch"):
        model.load_state_dict(mlp(4).state_dict())


def test_other_module_types_with_new_shapes_are_refused_and_nothing_changes():
    small = nn.Sequential(nn.Linear(3, 2), nn.Embedding(5, 2))
    big = nn.Sequential(nn.Linear(3, 4), nn.Embedding(5, 4))
    weight = small[0].weight
    with pytest.raises(ValueError, match=r"'1\.weight' of Embedding.*\(5, 4\).*\(5, 2\)"):
        resize_to_state_dict(small, big.state_dict())
    assert small[0].weight is weight and small[0].out_features == 2


def test_inconsistent_incoming_layers_are_refused():
    conv = nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match="kernel size"):
        resize_to_state_dict(conv, {"0.weight": torch.zeros(4, 1, 5, 5), "0.bias": torch.zeros(4)})
    linear = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="inconsistent"):
        resize_to_state_dict(linear, {"0.weight": torch.zeros(5, 3), "0.bias": torch.zeros(4)})
    norm = nn.Sequential(nn.BatchNorm1d(2))
    with pytest.raises(ValueError, match="inconsistent"):
        resize_to_state_dict(norm, {"0.weight": torch.zeros(5), "0.running_mean": torch.zeros(4)})


class ResizableMLP(ResizeOnLoadMixin, nn.Module):
    def __init__(self, hidden: int = 2) -> None:
        super().__init__()
        self.net = mlp(hidden)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs)


def test_mixin_makes_load_state_dict_resize_and_stays_picklable():
    big = ResizableMLP(7)
    restored = ResizableMLP()
    restored.load_state_dict(big.state_dict())
    big.eval(), restored.eval()
    inputs = torch.randn(4, 3)
    assert torch.equal(restored(inputs), big(inputs))
    clone = pickle.loads(pickle.dumps(ResizableMLP()))
    clone.load_state_dict(big.state_dict())
    copied = copy.deepcopy(ResizableMLP())
    copied.load_state_dict(ResizableMLP(5).state_dict())
    assert copied.net[0].out_features == 5


# ---------------------------------------------------------------------------------------------
# Lightning: grow during fit, save, resume with a freshly built model, load_from_checkpoint


class ConvNet(L.LightningModule):
    """conv → BN → ReLU → conv → ReLU → flatten → linear: a conv pair and a conv→linear pair."""

    def __init__(self, channels1: int = 2, channels2: int = 3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(1, channels1, 3, padding=1),
            nn.BatchNorm2d(channels1),
            nn.ReLU(),
            nn.Conv2d(channels1, channels2, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(channels2 * 16, 3),
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs)

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        return F.cross_entropy(self(inputs), targets)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=1e-2, amsgrad=True)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


class ResizableConvNet(ResizeOnLoadMixin, ConvNet):
    pass


def pairs_of(model: ConvNet) -> tuple[GrowablePair, GrowablePair]:
    net = model.net
    conv_pair = GrowablePair("net.0", "net.3", net[0], net[3], net[1], "net.1")
    conv_linear_pair = GrowablePair("net.3", "net.6", net[3], net[6], flatten=True)
    return conv_pair, conv_linear_pair


def small_random_neurons(pair: GrowablePair, count: int) -> NewNeurons:
    first, second = pair.first, pair.second
    if isinstance(second, nn.Conv2d):
        omega = 0.1 * torch.randn(second.out_channels, count, *second.kernel_size)
    else:
        omega = 0.1 * torch.randn(second.out_features, count * second.in_features // pair.width)
    return NewNeurons(
        first_weight=0.3 * torch.randn(count, *first.weight.shape[1:]),
        first_bias=0.1 * torch.randn(count),
        second_weight=omega,
    )


class GrowAtStep(Callback):
    def __init__(self, step: int) -> None:
        self.step = step
        self.grown = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.grown or trainer.global_step != self.step:
            return
        self.grown = True
        for pair, count in zip(pairs_of(pl_module), (2, 3)):
            grow_pair(pair, small_random_neurons(pair, count), trainer.optimizers)


class ResizeOnSetup(Callback):
    def setup(self, trainer, pl_module, stage):
        enable_resize_on_load(pl_module)


class CaptureAtTrainStart(Callback):
    def on_train_start(self, trainer, pl_module):
        optimizer = trainer.optimizers[0]
        self.model_state = copy.deepcopy(pl_module.state_dict())
        self.optimizer_state = copy.deepcopy(optimizer.state_dict())
        self.scheduler_state = copy.deepcopy(trainer.lr_scheduler_configs[0].scheduler.state_dict())
        in_optimizer = [p for group in optimizer.param_groups for p in group["params"]]
        in_model = list(pl_module.parameters())
        self.optimizer_holds_model_parameters = len(in_optimizer) == len(in_model) and all(
            a is b for a, b in zip(in_optimizer, in_model)
        )
        self.scheduler_drives_optimizer = (
            trainer.lr_scheduler_configs[0].scheduler.optimizer is optimizer
        )


def make_trainer(max_steps: int, callbacks: list[Callback]) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps,
        callbacks=callbacks,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
    )


def loader() -> DataLoader:
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(32, 1, 4, 4, generator=generator)
    targets = torch.randint(0, 3, (32,), generator=generator)
    return DataLoader(TensorDataset(inputs, targets), batch_size=8)


def assert_same(actual, expected, where: str = "") -> None:
    """Recursive equality for nested state dicts; tensors bitwise."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor) and actual.shape == expected.shape, where
        assert torch.equal(actual, expected), where
    elif isinstance(expected, dict):
        assert set(actual) == set(expected), where
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, f"{where}[{index}]")
    else:
        assert actual == expected, where


@pytest.fixture(scope="module")
def grown_run(tmp_path_factory):
    """Train two epochs (8 steps), growing both pairs after step 3; save the checkpoint."""
    torch.manual_seed(0)
    model = ConvNet()
    trainer = make_trainer(8, [GrowAtStep(3)])
    trainer.fit(model, loader())
    path = tmp_path_factory.mktemp("grown") / "grown.ckpt"
    trainer.save_checkpoint(path)
    return model, trainer, path


def test_growth_during_fit_is_in_the_checkpoint(grown_run):
    model, trainer, path = grown_run
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint["global_step"] == 8
    assert checkpoint["state_dict"]["net.0.weight"].shape == (4, 1, 3, 3)
    assert checkpoint["state_dict"]["net.3.weight"].shape == (6, 4, 3, 3)
    assert checkpoint["state_dict"]["net.6.weight"].shape == (3, 6 * 16)
    # Five optimizer steps on the grown parameters: their new entries have moved.
    adam_state = checkpoint["optimizer_states"][0]["state"]
    assert all(int(entry["step"]) == 8 for entry in adam_state.values())
    first_weight_state = adam_state[0]["exp_avg"]
    assert first_weight_state.shape == (4, 1, 3, 3) and bool((first_weight_state[2:] != 0).any())
    assert_same(checkpoint["state_dict"], model.state_dict())
    assert_same(checkpoint["optimizer_states"][0], trainer.optimizers[0].state_dict())


def test_resume_into_a_fresh_model_restores_everything(grown_run):
    _, _, path = grown_run
    checkpoint = torch.load(path, weights_only=False)
    capture = CaptureAtTrainStart()
    model = ConvNet()
    trainer = make_trainer(9, [ResizeOnSetup(), capture])
    trainer.fit(model, loader(), ckpt_path=path)

    assert_same(capture.model_state, checkpoint["state_dict"], "state_dict")
    assert_same(capture.optimizer_state, checkpoint["optimizer_states"][0], "optimizer")
    assert_same(capture.scheduler_state, checkpoint["lr_schedulers"][0], "scheduler")
    assert capture.optimizer_holds_model_parameters
    assert capture.scheduler_drives_optimizer
    assert trainer.global_step == 9  # and it trains on


def test_resume_without_the_hook_fails(grown_run):
    _, _, path = grown_run
    trainer = make_trainer(9, [])
    with pytest.raises(RuntimeError, match="size mismatch"):
        trainer.fit(ConvNet(), loader(), ckpt_path=path)


def test_load_from_checkpoint_with_the_mixin_gives_identical_outputs(grown_run):
    grown_model, _, path = grown_run
    restored = ResizableConvNet.load_from_checkpoint(path)
    assert restored.net[0].out_channels == 4 and restored.net[6].in_features == 96
    grown_model.eval(), restored.eval()
    inputs = torch.randn(5, 1, 4, 4)
    with torch.no_grad():
        assert torch.equal(restored(inputs), grown_model(inputs))
