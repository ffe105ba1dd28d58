"""Model builders (MLP, CNN, narrow ResNet-18) and the ClassifierModule."""

from __future__ import annotations

import functools
import importlib

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from lightning_grow.data import DigitsDataModule
from lightning_grow.models import CNN, MLP, CifarResNet18, ClassifierModule, resnet18
from lightning_grow.topology.pairs import find_growable_pairs


def _from_config(config: dict) -> nn.Module:
    module_path, name = config["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module_path), name)(**config["init_args"])


def _trainer(tmp_path, **options) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    return pl.Trainer(**{**defaults, **options})


# -- builders ------------------------------------------------------------------------------------


def test_mlp_layers_and_forward_match_an_explicit_computation():
    model = MLP(in_features=64, hidden=(5, 3), num_classes=10, activation="tanh").double()
    names = [name for name, _ in model.named_children()]
    assert names == ["flatten", "fc1", "act1", "fc2", "act2", "head"]
    assert (model.fc1.in_features, model.fc1.out_features) == (64, 5)
    assert (model.fc2.in_features, model.fc2.out_features) == (5, 3)
    assert (model.head.in_features, model.head.out_features) == (3, 10)
    images = torch.randn(4, 1, 8, 8, dtype=torch.float64)  # flattened inside
    hidden = images.reshape(4, 64)
    for layer in (model.fc1, model.fc2):
        hidden = torch.tanh(hidden @ layer.weight.T + layer.bias)
    expected = hidden @ model.head.weight.T + model.head.bias
    torch.testing.assert_close(model(images), expected)


def test_mlp_dropout_and_activation_choices():
    model = MLP(hidden=(4,), dropout=0.25, activation="gelu")
    assert isinstance(model.act1, nn.GELU)
    assert isinstance(model.drop1, nn.Dropout) and model.drop1.p == 0.25
    assert not any(isinstance(m, nn.Dropout) for m in MLP(hidden=(4,)).modules())
    with pytest.raises(ValueError, match="activation"):
        MLP(activation="swishy")


@pytest.mark.parametrize("batch_norm", [True, False])
def test_cnn_shapes_and_layers(batch_norm):
    model = CNN(
        in_channels=3, channels=(4, 6, 8), num_classes=7, image_size=16, batch_norm=batch_norm
    )
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 7)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 4), (4, 6), (6, 8)]
    for conv in convs:
        assert conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.stride == (1, 1)
        assert (conv.bias is None) == batch_norm
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [n.num_features for n in norms] == ([4, 6, 8] if batch_norm else [])
    assert model.head.in_features == 8 * 16 * 16
    pooled = CNN(in_channels=3, channels=(4, 6, 8), num_classes=7, image_size=16, pool=True)
    assert pooled.head.in_features == 8 * 4 * 4
    assert pooled(torch.randn(2, 3, 16, 16)).shape == (2, 7)


@pytest.mark.parametrize("pool", [False, True])
def test_cnn_last_conv_feeds_flatten_and_linear_directly(pool):
    model = CNN(channels=(3, 4, 5), pool=pool)
    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    calls = [node.target for node in graph.nodes if node.op == "call_module"]
    after_last_conv = calls[calls.index("conv3") + 1 :]
    kinds = [type(modules[name]) for name in after_last_conv]
    assert kinds == [nn.BatchNorm2d, nn.ReLU, nn.Flatten, nn.Linear]
    between_first_convs = [
        type(modules[n]) for n in calls[calls.index("conv1") + 1 : calls.index("conv2")]
    ]
    assert (nn.MaxPool2d in between_first_convs) == pool


def test_resnet18_is_a_torchvision_resnet_with_standard_residual_widths():
    model = resnet18(width_factor=1 / 64, num_classes=10)
    assert type(model) is ResNet
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8
    for stage, planes in enumerate((64, 128, 256, 512), start=1):
        for index, block in enumerate(getattr(model, f"layer{stage}")):
            assert block.conv2.out_channels == planes and block.bn2.num_features == planes
            stride = 2 if stage > 1 and index == 0 else 1
            assert block.conv1.stride == (stride, stride)
    assert model.fc.in_features == 512 and model.fc.out_features == 10
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    ("width_factor", "expected"),
    [
        (1 / 64, [1, 2, 4, 8]),
        (1 / 4, [16, 32, 64, 128]),
        (1e-3, [1, 1, 1, 1]),
        (0.3, [19, 38, 77, 154]),
    ],
)
def test_resnet18_width_factor_sets_block_interiors(width_factor, expected):
    model = resnet18(width_factor=width_factor)
    for stage, middle in enumerate(expected, start=1):
        for block in getattr(model, f"layer{stage}"):
            assert block.conv1.out_channels == middle
            assert block.bn1.num_features == middle
            assert block.conv2.in_channels == middle


def test_resnet18_full_width_has_torchvision_shapes_except_the_stem():
    ours = resnet18(width_factor=1.0, num_classes=10).state_dict()
    reference = torchvision.models.resnet18(num_classes=10).state_dict()
    assert ours.keys() == reference.keys()
    for key, tensor in reference.items():
        if key != "conv1.weight":
            assert ours[key].shape == tensor.shape, key
    assert ours["conv1.weight"].shape == (64, 3, 3, 3)
    imagenet = resnet18(width_factor=1.0, cifar_stem=False)
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)
    cifar = resnet18()
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity)


def test_cifar_resnet18_class_matches_the_function():
    torch.manual_seed(7)
    built = resnet18(width_factor=1 / 16, num_classes=100)
    torch.manual_seed(7)
    from_class = CifarResNet18(width_factor=1 / 16, num_classes=100)
    assert isinstance(from_class, ResNet)
    expected = built.state_dict()
    for key, tensor in from_class.state_dict().items():
        torch.testing.assert_close(tensor, expected[key], msg=key)


@pytest.mark.parametrize(
    "build",
    [
        lambda: (MLP(hidden=(3, 2)), torch.randn(5, 64)),
        lambda: (CNN(channels=(2, 3)), torch.randn(5, 1, 8, 8)),
        lambda: (resnet18(), torch.randn(2, 3, 32, 32)),
    ],
    ids=["mlp", "cnn", "resnet18"],
)
def test_builders_are_fx_traceable_and_rebuildable_from_their_config(build):
    model, inputs = build()
    model.eval()
    traced = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(traced(inputs), model(inputs))
    rebuilt = _from_config(model.init_config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def test_builders_expose_exactly_the_intended_growable_pairs():
    def pairs(model: nn.Module) -> list[str]:
        return [pair.name for pair in find_growable_pairs(model)]

    assert pairs(MLP(hidden=(3, 2))) == ["fc1 -> fc2", "fc2 -> head"]
    assert pairs(CNN(channels=(2, 3))) == ["conv1 -> conv2", "conv2 -> head"]
    # A pooling layer between two convolutions is not modelled: only the last pair remains.
    assert pairs(CNN(channels=(2, 3, 4), pool=True)) == ["conv3 -> head"]
    # ResNet: every block interior, never the residual stream.
    expected = [
        f"layer{stage}.{index}.conv1 -> layer{stage}.{index}.conv2"
        for stage in range(1, 5)
        for index in range(2)
    ]
    assert pairs(resnet18()) == expected
    assert pairs(ClassifierModule(MLP())) == [
        "backbone.fc1 -> backbone.fc2",
        "backbone.fc2 -> backbone.head",
    ]


# -- ClassifierModule ----------------------------------------------------------------------------


def _dataset_loss(module: ClassifierModule, data: DigitsDataModule) -> float:
    inputs, targets = data.train_set.tensors
    with torch.no_grad():
        logits = module.backbone.double()(inputs.double())
    module.float()
    return float(F.cross_entropy(logits, targets))


def test_short_fit_on_digits_reduces_the_training_loss(tmp_path):
    data = DigitsDataModule(batch_size=64)
    data.setup()
    module = ClassifierModule(
        MLP(hidden=(16,)), optimizer=functools.partial(torch.optim.Adam, lr=1e-2)
    )
    before = _dataset_loss(module, data)
    _trainer(tmp_path, max_steps=40, limit_val_batches=0).fit(module, data)
    after = _dataset_loss(module, data)
    assert after < 0.6 * before


def test_training_step_returns_the_batch_cross_entropy():
    module = ClassifierModule(MLP(hidden=(4,)))
    inputs, targets = torch.rand(8, 64), torch.randint(0, 10, (8,))
    with pytest.warns(UserWarning):  # self.log without a trainer
        loss = module.training_step((inputs, targets), 0)
    expected = -torch.log_softmax(module(inputs).double(), dim=1)[torch.arange(8), targets].mean()
    torch.testing.assert_close(loss.double(), expected)


def test_logged_metrics_match_an_independent_evaluation(tmp_path):
    data = DigitsDataModule(batch_size=50)
    module = ClassifierModule(MLP(hidden=(8,)))
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=3, log_every_n_steps=1)
    trainer.fit(module, data)
    logged = trainer.callback_metrics
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(logged)
    (tested,) = trainer.test(module, data, verbose=False)
    inputs, targets = data.test_set.tensors
    with torch.no_grad():
        logits = module.backbone.double()(inputs.double())
    expected_loss = float(F.cross_entropy(logits, targets))
    expected_acc = float((logits.argmax(1) == targets).double().mean())
    assert tested["test/loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert tested["test/acc"] == pytest.approx(expected_acc, abs=1e-6)
    # val_size == 0: validation ran on the same split with the same weights.
    assert float(logged["val/acc"]) == pytest.approx(expected_acc, abs=1e-6)


def test_default_optimizer_is_adam_on_all_parameters():
    module = ClassifierModule(MLP())
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["lr"] == 1e-3
    optimized = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(optimized) == sorted(id(p) for p in module.parameters())


@pytest.mark.parametrize(("interval", "expected_steps"), [("step", 3), ("epoch", 1)])
def test_scheduler_interval_is_honoured(tmp_path, interval, expected_steps):
    module = ClassifierModule(
        MLP(hidden=(4,)),
        optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
        lr_scheduler_interval=interval,
    )
    config = module.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.SGD)
    assert config["lr_scheduler"]["interval"] == interval
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=0)
    trainer.fit(module, DigitsDataModule())
    (optimizer,) = trainer.optimizers
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**expected_steps)


def test_plateau_scheduler_monitors_the_validation_loss():
    module = ClassifierModule(MLP(), lr_scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau)
    config = module.configure_optimizers()
    assert config["lr_scheduler"]["monitor"] == "val/loss"
    with pytest.raises(ValueError, match="interval"):
        ClassifierModule(MLP(), lr_scheduler_interval="batch")


def test_logit_count_is_checked_against_num_classes():
    module = ClassifierModule(MLP(num_classes=5), num_classes=10)
    with pytest.raises(ValueError, match="5 logits"):
        module._loss_and_predictions((torch.rand(2, 64), torch.zeros(2, dtype=torch.long)))


def test_load_from_checkpoint_rebuilds_a_builder_backbone_and_optimizer(tmp_path):
    module = ClassifierModule(
        MLP(hidden=(6, 5)),
        optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
    )
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(module, DigitsDataModule())
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    # LightningCLI's --ckpt_path reads hyperparameters with weights_only=True.
    assert "backbone" in torch.load(path, weights_only=True)["hyper_parameters"]
    loaded = ClassifierModule.load_from_checkpoint(path)
    assert isinstance(loaded.backbone, MLP) and loaded.backbone.fc2.out_features == 5
    for key, tensor in module.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], tensor, msg=key)
    optimizer = loaded.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["lr"] == 0.05 and optimizer.param_groups[0]["momentum"] == 0.9


def test_load_from_checkpoint_with_a_custom_backbone_takes_it_as_an_argument(tmp_path):
    def backbone() -> nn.Module:
        return nn.Sequential(nn.Linear(64, 7), nn.ReLU(), nn.Linear(7, 10))

    module = ClassifierModule(backbone(), optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(module, DigitsDataModule())
    path = tmp_path / "custom.ckpt"
    trainer.save_checkpoint(path)
    hparams = torch.load(path, weights_only=True)["hyper_parameters"]
    assert "backbone" not in hparams and "optimizer" not in hparams
    loaded = ClassifierModule.load_from_checkpoint(path, backbone=backbone())
    for key, tensor in module.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], tensor, msg=key)
