"""Discovery of growable pairs: what is found, what is rejected, and the error messages."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from lightning_grow.topology.pairs import (
    GrowablePair,
    GrowthConfigurationError,
    find_growable_pairs,
    pairs_from_names,
    rejected_layers,
)


def names(pairs: list[GrowablePair]) -> list[str]:
    return [pair.name for pair in pairs]


def replay_between(pair: GrowablePair, z: torch.Tensor) -> torch.Tensor:
    for _, op in pair.between:
        z = op(z)
    return z


def captured_inputs(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    model(x)
    handle.remove()
    return seen[0]


# ---------------------------------------------------------------- discovery
def test_mlp_sequential_with_inplace_relu_dropout_and_gelu() -> None:
    model = nn.Sequential(
        nn.Linear(4, 8),
        nn.ReLU(inplace=True),
        nn.Dropout(0.1),
        nn.Linear(8, 6),
        nn.GELU(),
        nn.Linear(6, 3),
    )
    first, second = find_growable_pairs(model)
    assert (first.name, second.name) == ("0 -> 3", "3 -> 5")
    assert [name for name, _ in first.between] == ["1", "2"]
    assert first.between[0][1] is model[1] and first.between[1][1] is model[2]
    assert (first.activation_slope, first.dead_at_zero) == (1.0, True)
    assert (second.activation_slope, second.dead_at_zero) == (0.5, False)
    assert first.kind == "linear" and first.batch_norm is None and not first.flatten
    assert first.first is model[0] and first.second is model[3]
    assert list(rejected_layers(model)) == ["5"]
    assert "returned by forward" in rejected_layers(model)["5"]


def test_cnn_sequential_with_batch_norm_and_flatten() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 5),
    )
    conv_conv, conv_linear = find_growable_pairs(model)
    assert conv_conv.name == "0 -> 3" and conv_conv.kind == "conv"
    assert conv_conv.batch_norm is model[1] and conv_conv.batch_norm_name == "1"
    assert [name for name, _ in conv_conv.between] == ["1", "2"]
    assert conv_linear.name == "3 -> 6" and conv_linear.kind == "conv_linear"
    assert conv_linear.flatten and conv_linear.geometry().hidden_positions == 9
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    for pair in (conv_conv, conv_linear):
        z = pair.first(captured_inputs(model, pair.first, x))
        torch.testing.assert_close(
            replay_between(pair, z), captured_inputs(model, pair.second, x), rtol=0, atol=0
        )


FLATTENS = {
    "module": lambda net, z: net.flatten(z),
    "torch.flatten": lambda net, z: torch.flatten(z, 1),
    "method": lambda net, z: z.flatten(1),
    "view_size": lambda net, z: z.view(z.size(0), -1),
    "reshape_shape": lambda net, z: z.reshape(z.shape[0], -1),
    "view_explicit": lambda net, z: z.view(-1, 4 * 4 * 4),
}


class ConvFlattenLinear(nn.Module):
    def __init__(self, flatten: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 4 * 4, 3)
        self.how = flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(FLATTENS[self.how](self, torch.relu(self.conv(x))))


@pytest.mark.parametrize("how", sorted(FLATTENS))
def test_conv_flatten_linear_in_every_spelling(how: str) -> None:
    model = ConvFlattenLinear(how)
    (pair,) = find_growable_pairs(model)
    assert pair.name == "conv -> fc" and pair.flatten and pair.kind == "conv_linear"
    x = torch.randn(3, 2, 6, 6)
    torch.testing.assert_close(
        replay_between(pair, model.conv(x)), captured_inputs(model, model.fc, x)
    )


def test_resnet18_gives_exactly_the_eight_basic_block_pairs() -> None:
    model = resnet18()
    pairs = find_growable_pairs(model)
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert names(pairs) == [f"{b}.conv1 -> {b}.conv2" for b in blocks]
    for pair, block in zip(pairs, blocks):
        assert pair.batch_norm is model.get_submodule(f"{block}.bn1")
        assert [name for name, _ in pair.between] == [f"{block}.bn1", f"{block}.relu"]
        assert pair.dead_at_zero and pair.activation_slope == 1.0
    rejected = rejected_layers(model)
    assert "add" in rejected["layer1.0.conv2"] and "pooling" in rejected["conv1"]
    assert "returned by forward" in rejected["fc"]


class ResidualOnHidden(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 5), nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x) + x))


class TwoReaders(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.fc1(x))
        return self.fc2(h), h.mean()


class ConcatHidden(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 4), nn.Linear(9, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.cat([torch.relu(self.fc1(x)), x], dim=1))


@pytest.mark.parametrize(
    ("model", "phrase"),
    [(ResidualOnHidden(), "residual"), (TwoReaders(), "2 readers"), (ConcatHidden(), "cat")],
)
def test_hidden_tensor_read_elsewhere_is_not_growable(model: nn.Module, phrase: str) -> None:
    assert find_growable_pairs(model, allow_empty=True) == []
    assert phrase in rejected_layers(model)["fc1"]
    with pytest.raises(GrowthConfigurationError, match="fc1: .*" + phrase):
        find_growable_pairs(model)


ACTIVATIONS = {
    "F.relu": F.relu,
    "torch.relu": torch.relu,
    "method relu": lambda z: z.relu(),
    "F.relu inplace": lambda z: F.relu(z, inplace=True),
    "F.relu6": F.relu6,
    "F.leaky_relu": lambda z: F.leaky_relu(z, 0.2),
    "F.gelu": F.gelu,
    "F.silu": F.silu,
    "torch.tanh": torch.tanh,
    "method sigmoid": lambda z: z.sigmoid(),
    "F.elu": F.elu,
    "F.hardswish": F.hardswish,
    "F.mish": F.mish,
    "F.softplus": F.softplus,
    "nn.ReLU6": nn.ReLU6(),
    "nn.LeakyReLU": nn.LeakyReLU(0.1),
    "nn.SiLU": nn.SiLU(),
    "nn.Sigmoid": nn.Sigmoid(),
    "nn.Mish": nn.Mish(),
    "nn.Softplus": nn.Softplus(beta=2.0),
    "nn.Hardswish": nn.Hardswish(),
    "nn.ELU": nn.ELU(),
    "nn.Tanh": nn.Tanh(),
}


class FunctionalMLP(nn.Module):
    def __init__(self, activation: str) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 2)
        if isinstance(ACTIVATIONS[activation], nn.Module):
            self.act = ACTIVATIONS[activation]
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = getattr(self, "act", None) or ACTIVATIONS[self.activation]
        return self.fc2(act(self.fc1(x)))


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_activation_slope_and_dead_at_zero_match_autograd(activation: str) -> None:
    model = FunctionalMLP(activation).double()
    (pair,) = find_growable_pairs(model)
    assert len(pair.between) == 1
    # One-sided (right) derivative at 0 by a finite difference, and PyTorch's derivative at 0.
    f = ACTIVATIONS[activation]
    eps = 1e-7
    zero = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    right = (f(torch.full((1,), eps, dtype=torch.float64)) - f(torch.zeros(1).double())) / eps
    assert pair.activation_slope == pytest.approx(float(right), abs=1e-5)
    (at_zero,) = torch.autograd.grad(f(zero.clone()).sum(), zero)
    assert pair.dead_at_zero == (float(at_zero) == 0.0)
    z = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(replay_between(pair, z.clone()), f(z.clone()))


def test_names_and_predicate_filter_the_pairs() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    assert names(find_growable_pairs(model, ["2"])) == ["2 -> 4"]
    assert names(find_growable_pairs(model, ["0->2"])) == ["0 -> 2"]
    assert names(find_growable_pairs(model, predicate=lambda p: p.dead_at_zero)) == ["2 -> 4"]
    with pytest.raises(GrowthConfigurationError, match=r"'4' is not a growable pair.*returned"):
        find_growable_pairs(model, ["4"])


# ---------------------------------------------------------------- rejections and errors
def error_of(model: nn.Module) -> str:
    with pytest.raises(GrowthConfigurationError) as info:
        find_growable_pairs(model)
    return str(info.value)


def test_grouped_and_dilated_convs_are_rejected_with_the_reason() -> None:
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.ReLU(), nn.Conv2d(4, 4, 3))
    assert "groups=2" in error_of(grouped) and "0:" in error_of(grouped)
    dilated = nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, dilation=2))
    message = error_of(dilated)
    assert "dilation=(2, 2)" in message and "next layer 2" in message
    assert "groups=1, dilation=1" in message


def test_pooling_between_the_pair_is_rejected() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3))
    assert "pooling (2: MaxPool2d)" in error_of(model)

    class FunctionalPool(ConvFlattenLinear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(F.max_pool2d(self.conv(x), 1).flatten(1))

    assert "pooling (max_pool2d)" in rejected_layers(FunctionalPool("module"))["conv"]


def test_unknown_module_between_and_the_supported_list() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Softmax(-1), nn.Linear(4, 2))
    message = error_of(model)
    assert "module 1 (Softmax) on the hidden tensor is not supported" in message
    assert "BatchNorm1d/2d, activations" in message and "pairs_from_names" in message
    # A norm across the hidden units says why (tests/test_user_features.py has the details).
    layer_norm = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    assert "1 (LayerNorm) normalises every sample over the hidden units" in error_of(layer_norm)


def test_shared_layer_and_batch_norm_size() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.relu(self.fc1(torch.relu(self.fc1(x)))))

    assert "called 2 times" in rejected_layers(Shared())["fc1"]
    linear_flatten = nn.Sequential(nn.Linear(3, 4), nn.Flatten(), nn.Linear(4, 2))
    assert "only supported between Conv2d and Linear" in error_of(linear_flatten)
    wrong_bn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(3), nn.Conv2d(4, 4, 3))
    assert "num_features=3, but the hidden width is 4" in error_of(wrong_bn)
    bn1d_on_map = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm1d(4), nn.Conv2d(4, 4, 3))
    assert "BatchNorm1d 1 does not fit after a Conv2d" in error_of(bn1d_on_map)


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.GELU(), nn.Linear(6, 4))
        self.fc1, self.bn, self.act, self.fc2 = (
            nn.Linear(4, 5),
            nn.BatchNorm1d(5),
            nn.Tanh(),
            nn.Linear(5, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(x)
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            x = -x
        return self.fc2(self.act(self.bn(self.fc1(x))))


def test_untraceable_model_suggests_explicit_pairs() -> None:
    message = error_of(Untraceable())
    assert "torch.fx cannot trace Untraceable" in message
    assert "pairs_from_names" in message and "dict form" in message


def test_pairs_from_names_traces_the_common_parent_when_the_model_cannot_be_traced() -> None:
    model = Untraceable()
    (pair,) = pairs_from_names(model, ["block.0 -> block.3"])
    assert pair.batch_norm is model.block[1] and pair.batch_norm_name == "block.1"
    assert [name for name, _ in pair.between] == ["block.1", "block.2"]
    assert pair.activation_slope == 0.5


def test_pairs_from_names_dict_form_for_untraceable_code() -> None:
    model = Untraceable()
    spec = {"first": "fc1", "second": "fc2", "batch_norm": "bn", "activation": "act"}
    (pair,) = pairs_from_names(model, [spec])
    assert pair.batch_norm is model.bn and [name for name, _ in pair.between] == ["bn", "act"]
    assert pair.activation_slope == 1.0 and not pair.dead_at_zero
    (pair,) = pairs_from_names(model, [{"first": "fc1", "second": "fc2", "activation": "relu"}])
    assert pair.dead_at_zero and pair.batch_norm is None
    with pytest.warns(UserWarning, match="dict form"):
        (pair,) = pairs_from_names(model, [("fc1", "fc2")])
    assert pair.between == ()
    with pytest.raises(GrowthConfigurationError, match="num_features=6, but the hidden width is 5"):
        pairs_from_names(model, [{"first": "fc1", "second": "fc2", "batch_norm": "block.1"}])


def test_pairs_from_names_spellings_and_validation() -> None:
    model = resnet18()
    by_string = pairs_from_names(model, ["layer2.1.conv1 -> layer2.1.conv2"])
    by_tuple = pairs_from_names(model, [("layer2.1.conv1", "layer2.1.conv2")])
    spec = {"first": "layer2.1.conv1", "second": "layer2.1.conv2", "batch_norm": "layer2.1.bn1"}
    by_dict = pairs_from_names(model, [spec])
    for pairs in (by_string, by_tuple, by_dict):
        assert names(pairs) == ["layer2.1.conv1 -> layer2.1.conv2"]
        assert pairs[0].batch_norm is model.layer2[1].bn1
    with pytest.raises(GrowthConfigurationError, match=r"no module named 'layer2.1.cnv1'.*conv1"):
        pairs_from_names(model, ["layer2.1.cnv1 -> layer2.1.conv2"])
    with pytest.raises(GrowthConfigurationError, match="not growable: function add"):
        pairs_from_names(model, ["layer2.1.conv2 -> layer3.0.conv1"])
    with pytest.raises(GrowthConfigurationError, match="in_channels=128 differs"):
        pairs_from_names(model, ["layer1.0.conv1 -> layer2.1.conv2"])
    with pytest.raises(GrowthConfigurationError, match=r"not an nn\.Linear or nn\.Conv2d"):
        pairs_from_names(model, ["layer1.0.bn1 -> layer1.0.conv2"])
    with pytest.raises(GrowthConfigurationError, match="cannot read the pair specification"):
        pairs_from_names(model, ["layer1.0.conv1"])
    with pytest.raises(GrowthConfigurationError, match="several pairs"):
        pairs_from_names(model, ["layer1.0.conv1 -> layer1.0.conv2"] * 2)
    with pytest.raises(GrowthConfigurationError, match="pooling"):
        pairs_from_names(
            nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3)), ["0 -> 2"]
        )


def test_linear_to_conv_is_not_a_pair() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    conv = nn.Sequential(nn.Linear(3, 4), nn.Conv2d(4, 2, 1))
    with pytest.raises(GrowthConfigurationError, match="Linear 0 → Conv2d 1"):
        pairs_from_names(conv, ["0 -> 1"])
    assert names(pairs_from_names(model, ["0 -> 2"])) == ["0 -> 2"]
