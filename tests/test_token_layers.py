"""Linear layers on token-shaped inputs ``(B, ..., D)``: the models people train today.

Every leading position (a token, a ConvNeXt pixel in channels-last layout) is a row of the same
layer, as a convolution's positions are; the samples of the statistics and of the significance
test are the sequences (images), never the tokens. The moments are checked against a float64
brute force that flattens tokens into rows; growth runs end to end on a hand-written pre-LN
transformer block and an MLP-Mixer block.
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_grow.decision.amplitude import measure_activity, scale_neurons
from lightning_grow.statistics.accumulator import PairStatistics
from lightning_grow.surgery.widen import NewNeurons, grow_pair
from lightning_grow.topology.pairs import (
    GrowthConfigurationError,
    find_growable_pairs,
    pairs_from_names,
)
from tests.helpers import permissive_callback

F64 = torch.float64


class PreLNBlock(nn.Module):
    """A pre-LN transformer block as people write it: attention, then a GELU FFN on (B, T, d)."""

    def __init__(self, d: int, hidden: int, heads: int = 2) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class MixerBlock(nn.Module):
    """MLP-Mixer: a token-mixing MLP (Linear over the token axis) and a channel-mixing MLP."""

    def __init__(self, tokens: int, channels: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.token_fc1 = nn.Linear(tokens, hidden)
        self.token_fc2 = nn.Linear(hidden, tokens)
        self.norm2 = nn.LayerNorm(channels)
        self.channel_fc1 = nn.Linear(channels, hidden)
        self.channel_fc2 = nn.Linear(hidden, channels)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm1(x).transpose(1, 2)  # (B, C, T): the token MLP acts on the last axis
        x = x + self.token_fc2(nn.functional.gelu(self.token_fc1(y))).transpose(1, 2)
        return x + self.channel_fc2(nn.functional.gelu(self.channel_fc1(self.norm2(x))))


class SequenceClassifier(nn.Module):
    def __init__(self, block: nn.Module, d: int, features: int = 3, classes: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(features, d)
        self.block = block
        self.head = nn.Linear(d, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.block(self.embed(x)).mean(1))


class Module(pl.LightningModule):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _sequences(tokens: int = 5, n: int = 512) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, tokens, 3, generator=g)
    y = ((x[..., 0] * x[..., 1]).sum(1) > 0).long()  # needs products of features: a bottleneck
    return DataLoader(TensorDataset(x, y), batch_size=32)


def _fit(net: nn.Module, tokens: int, steps: int = 40, **options) -> tuple[Module, object]:
    pl.seed_everything(0, verbose=False)
    model = Module(net)
    callback = permissive_callback(statistics_samples=128, held_samples=64, **options)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    trainer.fit(model, _sequences(tokens))
    return model, callback


# ------------------------------------------------------------------ moments
@pytest.mark.parametrize("shape", [(6, 5), (3, 2, 4)])  # (B, T, ·) and (B, H, W, ·)
def test_token_moments_match_a_float64_brute_force_over_token_rows(shape) -> None:
    torch.manual_seed(0)
    d, hidden, out = 4, 3, 5
    first, second = nn.Linear(d, hidden).to(F64), nn.Linear(hidden, out).to(F64)
    net = nn.Sequential(first, nn.GELU(), second)
    pair = find_growable_pairs(net)[0]
    statistics = PairStatistics(pair, dtype=F64, loss_reduction="sum")
    x = torch.randn(*shape, d, dtype=F64)
    target = torch.randn(*shape, out, dtype=F64)
    with statistics:
        z2 = net(x)
        (0.5 * (z2 - target).square().sum()).backward()

    # Brute force: every token is a row; the sums are divided by the number of sequences and
    # the noise sign is that of the sequence (+1 even, -1 odd): tokens of one sequence share it.
    n = shape[0]
    rows_x = torch.cat([x, torch.ones(*shape, 1, dtype=F64)], -1)
    h = nn.functional.gelu(first(x)).detach()
    rows_h = torch.cat([h, torch.ones(*shape, 1, dtype=F64)], -1)
    v = -(second(h) - target).detach()
    sign = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(n)], dtype=F64)
    sign = sign.view(n, *([1] * (len(shape) - 1)), 1)
    flat = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731
    X, H, V, Xs = flat(rows_x), flat(rows_h), flat(v), flat(rows_x * sign)
    moments = statistics.moments()
    assert moments.n == n
    expected = {
        "S": H.T @ H / n,
        "M": V.T @ H / n,
        "Sx": X.T @ X / n,
        "Mx": X.T @ V / n,
        "P": (X.T @ H / n)[:, None, :],
        "Mx_noise": Xs.T @ V / n,
        "P_noise": (Xs.T @ H / n)[:, None, :],
        "v_sq": V.square().sum() / n,
    }
    for name, value in expected.items():
        torch.testing.assert_close(getattr(moments, name), value, msg=name)


def test_new_units_activity_is_measured_per_unit_over_every_token() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.GELU(), nn.Linear(3, 2)).to(F64)
    pair = find_growable_pairs(net)[0]
    # Two new units on 8 tokens: a per-token scale (the former bug) would have 8 factors.
    neurons = NewNeurons(torch.randn(2, 4, dtype=F64), torch.randn(2, dtype=F64), torch.randn(2, 2))
    x = torch.randn(5, 8, 4, dtype=F64)
    with torch.no_grad():
        _, existing_rms, mean, var = measure_activity(pair, neurons, lambda: float(net(x).sum()))
    z_new = (x @ neurons.first_weight.T + neurons.first_bias).reshape(-1, 2)
    z_old = net[0](x).detach().reshape(-1, 3)
    torch.testing.assert_close(mean, z_new.mean(0))
    torch.testing.assert_close(var, z_new.var(0, unbiased=False))
    assert float(existing_rms) == pytest.approx(float(z_old.square().mean(0).sqrt().median()))
    with pytest.raises(ValueError, match="8 factors for 2 neurons"):
        scale_neurons(neurons, torch.ones(8))


# ------------------------------------------------------------------ surgery
def test_growing_a_token_ffn_at_zero_output_weights_preserves_the_function() -> None:
    torch.manual_seed(0)
    net = SequenceClassifier(PreLNBlock(8, 2), 8).eval()
    pair = find_growable_pairs(net, ["block.fc1 -> block.fc2"])[0]
    x = torch.randn(4, 6, 3)
    before = net(x)
    neurons = NewNeurons(torch.randn(3, 8), torch.randn(3), torch.zeros(8, 3))
    grow_pair(pair, neurons)
    assert net.block.fc1.out_features == net.block.fc2.in_features == 5
    torch.testing.assert_close(net(x), before, rtol=0, atol=0)


# ------------------------------------------------------------------ end to end
def test_pre_ln_transformer_ffn_grows_and_each_accepted_event_lowers_the_held_loss() -> None:
    model, callback = _fit(SequenceClassifier(PreLNBlock(8, 2), 8), tokens=5)
    name = "net.block.fc1 -> net.block.fc2"
    assert set(callback.initial_widths) == {name}
    accepted = [event for event in callback.history if event.accepted]
    assert accepted, [(e.pair, e.reason) for e in callback.history]
    for event in accepted:
        assert event.loss_after < event.loss_before, event
        # Neurons come from the solve's candidates, never one per token (the former bug).
        assert event.width_after == event.width_before + event.neurons_added
    assert callback.widths[name] == model.net.block.fc1.out_features > 2
    assert model.net.block.fc2.in_features == model.net.block.fc1.out_features
    x, y = next(iter(_sequences()))
    nn.functional.cross_entropy(model.net(x), y).backward()


def test_mlp_mixer_token_and_channel_mixing_mlps_are_discovered_and_grow() -> None:
    model, callback = _fit(SequenceClassifier(MixerBlock(5, 8, 2), 8), tokens=5, steps=60)
    token, channel = (
        "net.block.token_fc1 -> net.block.token_fc2",
        "net.block.channel_fc1 -> net.block.channel_fc2",
    )
    assert set(callback.initial_widths) == {token, channel}
    grown = {e.pair for e in callback.history if e.accepted}
    assert grown == {token, channel}, [(e.pair, e.reason) for e in callback.history]
    block = model.net.block
    assert block.token_fc2.in_features == block.token_fc1.out_features == callback.widths[token]


# ------------------------------------------------------------------ refusals
def test_transformer_encoder_layer_is_refused_with_the_true_reason_and_the_fix() -> None:
    net = nn.Sequential(nn.TransformerEncoderLayer(8, 2, 4, batch_first=True))
    with pytest.raises(GrowthConfigurationError) as error:
        find_growable_pairs(net)
    message = str(error.value)
    assert "not called by forward" not in message
    assert "TransformerEncoderLayer" in message and "fast path" in message
    with pytest.raises(GrowthConfigurationError, match="fast path"):
        pairs_from_names(net, ["0.linear1 -> 0.linear2"])
