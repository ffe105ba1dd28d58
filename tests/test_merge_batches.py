"""Held-out batches are merged into one forward pass when, and only when, that is exact."""

from __future__ import annotations

from collections import namedtuple

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_grow.callback._lightning import merge_batches
from tests.helpers import permissive_callback

Sample = namedtuple("Sample", ["image", "label"])


def test_tensor_tuples_merge_and_give_the_weighted_mean_loss() -> None:
    generator = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(size, 5, generator=generator), torch.randint(0, 3, (size,)))
        for size in (4, 3, 1)
    ]
    head = nn.Linear(5, 3)
    (merged,) = merge_batches(batches)
    assert isinstance(merged, tuple)
    merged_loss = nn.functional.cross_entropy(head(merged[0]), merged[1])
    weighted = sum(
        nn.functional.cross_entropy(head(x), y, reduction="sum") for x, y in batches
    ) / sum(len(y) for _, y in batches)
    torch.testing.assert_close(merged_loss, weighted)


def test_nested_dicts_named_tuples_and_equal_leaves_keep_their_types() -> None:
    batches = [
        {"sample": Sample(torch.full((2, 3), float(i)), torch.tensor([i, i])), "split": "train"}
        for i in range(3)
    ]
    (merged,) = merge_batches(batches)
    assert merged["split"] == "train"
    assert isinstance(merged["sample"], Sample)
    assert merged["sample"].image.shape == (6, 3)
    assert merged["sample"].label.tolist() == [0, 0, 1, 1, 2, 2]


def test_batches_that_cannot_be_merged_exactly_are_left_as_they_are() -> None:
    class Custom:
        def __init__(self, x: torch.Tensor) -> None:
            self.x = x

    cases = [
        [torch.zeros(2, 5), torch.zeros(2, 6)],  # ragged sequences
        [(torch.zeros(2), ["a", "b"]), (torch.zeros(2), ["c", "d"])],  # per-sample strings
        [Custom(torch.zeros(2)), Custom(torch.zeros(2))],
        [{"x": torch.zeros(2)}, {"y": torch.zeros(2)}],
        [torch.tensor(1.0), torch.tensor(2.0)],  # 0-d: no batch dimension
    ]
    for batches in cases:
        kept = merge_batches(batches)
        assert len(kept) == len(batches)
        assert all(a is b for a, b in zip(kept, batches, strict=True))


class _CountingRegression(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 2), nn.Tanh(), nn.Linear(2, 3))
        self.evaluated_sizes: list[int] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        if not self.training:
            self.evaluated_sizes.append(len(x))
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def test_the_amplitude_search_evaluates_all_held_samples_in_one_call() -> None:
    pl.seed_everything(0, verbose=False)
    x = torch.randn(512, 8)
    y = torch.stack([torch.sin(3 * x[:, 0]), x[:, 1] * x[:, 2], x[:, 3].abs()], dim=1)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    model = _CountingRegression()
    callback = permissive_callback(statistics_samples=128, held_samples=64)
    trainer = pl.Trainer(
        max_steps=60,
        accelerator="cpu",
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, loader)
    assert any(event.accepted for event in callback.history)
    # Four held batches of 16 samples per decision, evaluated as one batch of 64.
    assert model.evaluated_sizes and set(model.evaluated_sizes) == {64}
