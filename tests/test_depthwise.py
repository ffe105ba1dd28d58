"""Depthwise convolutions between the two layers of a pair (MobileNetV2's inverted residual).

expand 1x1 → BN → act → depthwise k×k → BN → act → project 1x1: each new hidden channel gets a
delta filter in the depthwise conv and fresh BatchNorm entries, so for a new channel the chain is
its activations only (docs/math.md §1). Checked here on torchvision's ``mobilenet_v2`` as users
build it and on a hand-written block, against the real network in float64.
"""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import mobilenet_v2

from lightning_grow.decision.amplitude import measure_carried_norms
from lightning_grow.solver.tiny import compute_candidates
from lightning_grow.statistics.accumulator import PairStatistics
from lightning_grow.surgery.checkpoint import enable_resize_on_load
from lightning_grow.surgery.widen import NewNeurons, grow_pair
from lightning_grow.topology.pairs import (
    GrowablePair,
    GrowthConfigurationError,
    find_growable_pairs,
    pairs_from_names,
    rejected_layers,
)
from tests.helpers import permissive_callback, quiet_trainer

F64 = torch.float64


def _block(activation: type[nn.Module] = nn.ReLU6, **depthwise) -> nn.Sequential:
    """expand → BN → act → depthwise → BN → act → project → pool, as the paper's block."""
    options = {"kernel_size": 3, "padding": 1, **depthwise}
    return nn.Sequential(
        nn.Conv2d(3, 4, 1, bias=False),
        nn.BatchNorm2d(4),
        activation(),
        nn.Conv2d(4, 4, groups=4, **options),
        nn.BatchNorm2d(4),
        activation(),
        nn.Conv2d(4, 5, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def _randomise(net: nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics and affine entries, so no entry is an identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(0.3 * torch.randn(size, generator=g))
                module.running_var.copy_(0.5 + torch.rand(size, generator=g))
                module.weight.copy_(1 + 0.2 * torch.randn(size, generator=g))
                module.bias.copy_(0.2 * torch.randn(size, generator=g))


def _mobilenet(**options) -> nn.Module:
    torch.manual_seed(0)
    return mobilenet_v2(width_mult=0.25, num_classes=10, **options)


def test_mobilenet_v2_offers_every_stride_one_inverted_residual() -> None:
    net = _mobilenet()
    names = [pair.name for pair in find_growable_pairs(net)]
    # Stride-1 blocks with an expansion (features.1 has none; 2, 4, 7, 14 have stride 2).
    expected = [f"features.{i}.conv.0.0 -> features.{i}.conv.2" for i in (3, 5, 6, 8, 9, 10)]
    expected += [f"features.{i}.conv.0.0 -> features.{i}.conv.2" for i in (11, 12, 13)]
    expected += [f"features.{i}.conv.0.0 -> features.{i}.conv.2" for i in (15, 16, 17)]
    assert names == [*expected, "features.17.conv.2 -> features.18.0"]
    pair = find_growable_pairs(net)[0]
    kinds = [op.kind.value for op in pair.between]
    assert kinds == ["batch_norm", "activation", "depthwise", "batch_norm", "activation"]
    assert pair.batch_norm is net.features[3].conv[0][1]
    assert pair.activation_slope == 1.0 and pair.dead_at_zero
    stride_two = rejected_layers(net)["features.2.conv.0.0"]
    assert "features.2.conv.1.0" in stride_two and "stride=(2, 2)" in stride_two


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"stride": 2}, "stride=(2, 2)"),
        ({"padding": 0}, "needs padding=(1, 1)"),
        ({"kernel_size": 2, "padding": 0}, "even kernel"),
        ({"dilation": 2, "padding": 1}, "needs padding=(2, 2)"),
    ],
)
def test_a_depthwise_conv_that_would_not_keep_a_new_channel_is_refused(options, reason) -> None:
    net = _block(**options)
    rejection = rejected_layers(net)["0"]
    assert "3" in rejection and reason in rejection, rejection


def test_a_dilated_centred_depthwise_conv_carries_growth() -> None:
    assert [p.name for p in find_growable_pairs(_block(dilation=2, padding=2))] == ["0 -> 6"]


def test_a_grouped_conv_between_a_pair_is_refused_with_the_fix() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, groups=2))
    net.append(nn.ReLU()).append(nn.Conv2d(4, 2, 1))
    rejection = rejected_layers(net)["0"]
    assert "Conv2d 2 between 0" in rejection and "groups=2" in rejection
    assert "Make it depthwise" in rejection
    with pytest.raises(GrowthConfigurationError, match="groups=2"):
        pairs_from_names(net, ["0 -> 4"])


def _grow_every_pair(net: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for pair in find_growable_pairs(net):
        first, second = pair.first.weight, pair.second.weight
        k = 2
        alpha = torch.randn(k, *first.shape[1:], generator=g, dtype=first.dtype)
        omega = torch.zeros(second.shape[0], k, *second.shape[2:], dtype=second.dtype)
        grow_pair(pair, NewNeurons(alpha, None, omega))


def test_growing_every_mobilenet_pair_at_zero_output_weights_preserves_the_function() -> None:
    net = _mobilenet().to(F64)
    _randomise(net, 1)
    net.eval()
    x = torch.randn(2, 3, 32, 32, dtype=F64)
    before = net(x)
    widths = {p.name: p.width for p in find_growable_pairs(net)}
    _grow_every_pair(net, 2)
    after = {p.name: p.width for p in find_growable_pairs(net)}
    assert after == {name: width + 2 for name, width in widths.items()}
    depthwise = net.features[3].conv[1][0]
    assert (
        depthwise.groups
        == depthwise.in_channels
        == depthwise.out_channels
        == widths["features.3.conv.0.0 -> features.3.conv.2"] + 2
    )
    torch.testing.assert_close(net(x), before, rtol=0, atol=1e-12)


def test_a_conv1d_depthwise_block_grows_and_keeps_its_function() -> None:
    net = nn.Sequential(nn.Conv1d(2, 3, 1), nn.BatchNorm1d(3), nn.ReLU6())
    net.append(nn.Conv1d(3, 3, 5, padding=2, groups=3)).append(nn.BatchNorm1d(3))
    net.append(nn.ReLU6()).append(nn.Conv1d(3, 4, 1))
    net = net.to(F64).eval()
    x = torch.randn(2, 2, 7, dtype=F64)
    before = net(x)
    pair = find_growable_pairs(net)[0]
    assert pair.name == "0 -> 6"
    grow_pair(
        pair, NewNeurons(torch.randn(2, 2, 1, dtype=F64), torch.randn(2), torch.zeros(4, 2, 1))
    )
    assert net[3].weight.shape == (5, 1, 5) and net[3].groups == 5
    torch.testing.assert_close(net(x), before, rtol=0, atol=1e-12)


def test_a_hand_built_pair_classifies_its_depthwise_conv() -> None:
    """``(name, op)`` pairs given by hand get the kinds discovery gives (the conv is no
    activation)."""
    net = _block()
    traced = find_growable_pairs(net)[0]
    plain = tuple((op.name, op.op) for op in traced.between)
    hand = GrowablePair("0", "6", net[0], net[6], net[1], "1", plain)
    assert [op.kind for op in hand.between] == [op.kind for op in traced.between]


def test_a_grown_mobilenet_reloads_from_its_state_dict(tmp_path) -> None:
    net = _mobilenet()
    _grow_every_pair(net, 3)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))  # the new out-weights are no longer zero
    path = tmp_path / "grown.pt"
    torch.save(net.state_dict(), path)
    fresh = _mobilenet()
    enable_resize_on_load(fresh)
    fresh.load_state_dict(torch.load(path))
    net.eval(), fresh.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(fresh(x), net(x), rtol=0, atol=0)
    depthwise = fresh.features[5].conv[1][0]
    assert depthwise.groups == depthwise.in_channels == net.features[5].conv[1][0].groups


def _new_channel_chain(net: nn.Sequential, z: Tensor) -> Tensor:
    """A grown net's last channel from its pre-activation ``z`` through BN, act, dw, BN, act."""
    for module in list(net)[1:6]:
        z = module(z)
    return z


def test_a_new_channel_sees_its_activations_only(tmp_path) -> None:
    """dw∘BN∘act on a new channel is the act of a fresh BN: ReLU6∘ReLU6 = ReLU6 (eps = 0)."""
    net = _block().to(F64)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = 0.0
    _randomise(net, 4)
    net.eval()
    pair = find_growable_pairs(net)[0]
    grow_pair(pair, NewNeurons(torch.randn(1, 3, 1, 1, dtype=F64), None, torch.zeros(5, 1, 1, 1)))
    x = 4 * torch.randn(2, 3, 6, 6, dtype=F64)
    z = net[0](x)
    new = _new_channel_chain(net, z)[:, -1]
    torch.testing.assert_close(new, z[:, -1].clamp(0, 6), rtol=0, atol=1e-15)
    assert (z[:, -1] > 6).any() and (z[:, -1] < 0).any()  # both kinks of ReLU6 were exercised


@pytest.mark.parametrize("activation", [nn.Tanh, nn.SiLU])
def test_first_order_decrease_matches_a_finite_difference_of_the_real_loss(activation) -> None:
    """The package's ``σ'(0) Σ αᵀ Mx ω`` equals ``-dL/dε`` of the real grown network whose new
    neurons have first-layer weights ``ε α`` (smooth activations, so the derivative exists; the
    BatchNorms have ``eps = 0`` so that a fresh entry is exactly the identity)."""
    torch.manual_seed(5)
    net = _block(activation).to(F64)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = 0.0
    _randomise(net, 6)
    net.eval()
    x, target = torch.randn(6, 3, 5, 5, dtype=F64), torch.randn(6, 5, dtype=F64)
    pair = find_growable_pairs(net)[0]
    # Statistics read training forwards; the convs behave alike in both modes, while the
    # BatchNorms stay in eval mode so that the loss is the same function of ε below.
    pair.first.train(), pair.second.train()
    statistics = PairStatistics(pair, dtype=F64)
    with statistics:
        nn.functional.mse_loss(net(x), target).backward()
    candidates = compute_candidates(
        statistics.moments(),
        pair.geometry(),
        max_neurons=2,
        activation_slope=pair.activation_slope,
    )
    assert candidates.first_order_decrease[-1] > 0

    def loss(k: int, epsilon: float) -> float:
        grown = copy.deepcopy(net)
        neurons = NewNeurons(
            epsilon * candidates.first_weight(k), None, candidates.second_weight(k)
        )
        grow_pair(find_growable_pairs(grown)[0], neurons)
        with torch.no_grad():
            return float(nn.functional.mse_loss(grown(x), target))

    epsilon = 1e-5
    for k in (1, 2):
        measured = (loss(k, -epsilon) - loss(k, epsilon)) / (2 * epsilon)
        torch.testing.assert_close(
            candidates.first_order_decrease[k - 1].item(), measured, rtol=1e-6, atol=1e-12
        )


class TinyMobileNet(pl.LightningModule):
    """torchvision's MobileNetV2 at width 1/4 on 16×16 images, as a user writes it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mobilenet_v2(width_mult=0.25, num_classes=2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def test_a_tiny_mobilenet_grows_its_inverted_residuals_and_its_checkpoint_reloads(
    tmp_path,
) -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (128,), generator=g)
    x = torch.randn(128, 3, 16, 16, generator=g) + labels[:, None, None, None]
    pl.seed_everything(0, verbose=False)
    model = TinyMobileNet()
    callback = permissive_callback(statistics_samples=32, held_samples=32)
    trainer = quiet_trainer(
        max_steps=40,  # the first decisions, with running BN statistics still settling, refuse
        callbacks=[callback],
    )
    trainer.fit(model, DataLoader(TensorDataset(x, labels), batch_size=16))
    assert len(callback.initial_widths) == 13
    accepted = [event for event in callback.history if event.accepted]
    for event in accepted:
        assert event.loss_after < event.loss_before, event
    grown = [n for n, w in callback.widths.items() if w > callback.initial_widths[n]]
    inverted = [name for name in grown if ".conv.0.0 -> " in name]
    assert inverted, [(e.pair, e.reason) for e in callback.history]
    for name in inverted:
        block = name.removeprefix("net.").split(".conv")[0]
        depthwise = model.net.get_submodule(f"{block}.conv.1.0")
        assert depthwise.groups == depthwise.out_channels == callback.widths[name]

    path = tmp_path / "grown.ckpt"
    trainer.save_checkpoint(path)
    fresh = TinyMobileNet()
    enable_resize_on_load(fresh)
    fresh.load_state_dict(torch.load(path, weights_only=False)["state_dict"])
    model.eval(), fresh.eval()
    torch.testing.assert_close(fresh.net(x[:8]), model.net(x[:8]))


def test_the_norm_after_the_depthwise_conv_is_the_identity_for_new_channels_in_both_modes() -> None:
    """Its new entries come from the new channels' measured mean and variance at its input
    (checked against a hook on the real grown network); with them the BatchNorm passes the new
    channels unchanged in eval mode, and in train mode on the batch they were measured on."""
    torch.manual_seed(7)
    net = _block().to(F64)
    _randomise(net, 8)
    net.eval()
    x = torch.randn(4, 3, 6, 6, dtype=F64)
    pair = find_growable_pairs(net)[0]
    neurons = NewNeurons(torch.randn(2, 3, 1, 1, dtype=F64), None, torch.zeros(5, 2, 1, 1))
    measured = measure_carried_norms(pair, neurons, lambda: float(net(x).detach().sum()))
    assert list(measured) == ["4"]

    seen: list[Tensor] = []
    net[4].register_forward_hook(lambda module, inputs, output: seen.append(inputs[0][:, -2:]))
    grown = copy.deepcopy(net)
    grow_pair(find_growable_pairs(grown)[0], copy.deepcopy(neurons))
    seen.clear()
    grown(x)
    h = seen[0].transpose(0, 1).flatten(1)
    mean, var = measured["4"]
    torch.testing.assert_close(mean, h.mean(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(var, h.var(1, unbiased=False), rtol=1e-12, atol=1e-12)

    neurons.carried_norms = measured
    grow_pair(pair, neurons)
    norm = net[4]
    for training in (False, True):
        norm.train(training)
        seen.clear()
        with torch.no_grad():
            out = norm(net[3](net[2](net[1](net[0](x)))))
        torch.testing.assert_close(out[:, -2:], seen[0], rtol=0, atol=1e-12)
