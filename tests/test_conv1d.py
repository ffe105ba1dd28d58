"""Conv1d pairs (MNIST-1D-style CNNs, audio, time series): a Conv2d of height 1 for the
statistics, its own weights for surgery.

The moments must be exactly those of the same network written with Conv2d kernels ``(1, k)`` on
``(B, C, 1, L)`` maps, whose moments tests/test_statistics.py checks against a brute force.
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_grow.statistics.accumulator import PairStatistics
from lightning_grow.surgery.checkpoint import enable_resize_on_load
from lightning_grow.surgery.widen import NewNeurons, grow_pair
from lightning_grow.topology.pairs import find_growable_pairs
from tests.helpers import permissive_callback, quiet_trainer

F64 = torch.float64
FIELDS = ("S", "M", "Sx", "Mx", "P", "v_sq", "Mx_noise", "P_noise")


class Lift(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.unsqueeze(2)


def _twins(second: str, stride: int, padding: int | str):
    """A Conv1d network and its Conv2d twin (kernels (1, k), maps of height 1), same weights."""
    one = nn.Sequential(
        nn.Conv1d(2, 3, 3, stride=stride, padding=padding),
        nn.BatchNorm1d(3),
        nn.ReLU(),
        nn.Conv1d(3, 4, 3, padding=1) if second == "conv" else nn.Flatten(),
    )
    two = nn.Sequential(
        Lift(),
        nn.Conv2d(2, 3, (1, 3), stride=(1, stride), padding=(0, 1) if padding == 1 else padding),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Conv2d(3, 4, (1, 3), padding=(0, 1)) if second == "conv" else nn.Flatten(),
    )
    length = (9 + 2 * (padding == 1) - 3) // stride + 1 if padding != "same" else 9
    if second == "linear":
        one.append(nn.Linear(3 * length, 4))
        two.append(nn.Linear(3 * length, 4))
    with torch.no_grad():
        for a, b in zip(
            [m for m in one if hasattr(m, "weight")],
            [m for m in two if hasattr(m, "weight")],
            strict=True,
        ):
            b.weight.copy_(a.weight.reshape(b.weight.shape))
            b.bias.copy_(a.bias)
    return one.to(F64), two.to(F64)


@pytest.mark.parametrize(
    ("second", "stride", "padding", "positions"),
    [("conv", 1, 1, None), ("conv", 2, 0, None), ("conv", 1, "same", 4), ("linear", 1, 1, None)],
)
def test_conv1d_moments_equal_those_of_the_height_one_conv2d_twin(
    second, stride, padding, positions
) -> None:
    torch.manual_seed(0)
    one, two = _twins(second, stride, padding)
    x, target = torch.randn(5, 2, 9, dtype=F64), torch.randn(5, 4, dtype=F64)
    moments = []
    for net in (one, two):
        pair = find_growable_pairs(net)[0]
        statistics = PairStatistics(pair, dtype=F64, positions=positions, seed=3)
        with statistics:
            out = net(x)
            out = out.flatten(2).mean(-1) if out.dim() > 2 else out
            nn.functional.mse_loss(out, target).backward()
        moments.append(statistics.moments())
    assert moments[0].n == 5
    for name in FIELDS:
        torch.testing.assert_close(getattr(moments[0], name), getattr(moments[1], name), msg=name)


def test_growing_a_conv1d_pair_at_zero_output_weights_preserves_the_function() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(2, 3, 5, padding=2), nn.BatchNorm1d(3), nn.ReLU())
    net.append(nn.Conv1d(3, 4, 3)).append(nn.Flatten()).append(nn.Linear(4 * 14, 2))
    net.eval()
    pair = find_growable_pairs(net)[0]
    assert pair.name == "0 -> 3"
    x = torch.randn(3, 2, 16)
    before = net(x)
    grow_pair(pair, NewNeurons(torch.randn(2, 2, 5), torch.randn(2), torch.zeros(4, 2, 3)))
    assert net[0].weight.shape == (5, 2, 5) and net[3].weight.shape == (4, 5, 3)
    torch.testing.assert_close(net(x), before, rtol=0, atol=0)


class Series(pl.LightningModule):
    """A small 1-D CNN on a synthetic time-series task, as people write it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(1, 2, 5, padding=2),
            nn.BatchNorm1d(2),
            nn.ReLU(),
            nn.Conv1d(2, 2, 5, padding=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * 16, 2),
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def test_a_conv1d_network_grows_and_a_grown_checkpoint_reloads(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(0, 6.28, 16)
    labels = torch.randint(0, 2, (512,), generator=g)
    frequency = torch.where(labels == 1, 3.0, 1.0)[:, None]
    x = (torch.sin(frequency * t) + 0.5 * torch.randn(512, 16, generator=g))[:, None]
    loader = DataLoader(TensorDataset(x, labels), batch_size=32)
    pl.seed_everything(0, verbose=False)
    model = Series()
    callback = permissive_callback(statistics_samples=128, held_samples=64)
    trainer = quiet_trainer(
        max_steps=40,
        callbacks=[callback],
    )
    trainer.fit(model, loader)
    assert set(callback.initial_widths) == {"net.0 -> net.3", "net.3 -> net.6"}
    accepted = [event for event in callback.history if event.accepted]
    assert accepted, [(e.pair, e.reason) for e in callback.history]
    for event in accepted:
        assert event.loss_after < event.loss_before, event
    assert any(callback.widths[n] > w for n, w in callback.initial_widths.items())

    path = tmp_path / "grown.ckpt"
    trainer.save_checkpoint(path)
    fresh = Series()
    enable_resize_on_load(fresh)
    fresh.load_state_dict(torch.load(path, weights_only=False)["state_dict"])
    model.eval(), fresh.eval()
    torch.testing.assert_close(fresh.net(x[:8]), model.net(x[:8]))
