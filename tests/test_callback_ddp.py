"""GrowthCallback under 2-process DDP (ddp_spawn, gloo, CPU): every rank grows identically."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_grow import GrowthCallback
from lightning_grow.surgery.checkpoint import ResizeOnLoadMixin
from tests.helpers import permissive_callback

# Tensors crossing into spawned processes fail with the default strategy on this kind of machine.
torch.multiprocessing.set_sharing_strategy("file_system")


class _Regression(ResizeOnLoadMixin, pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(8, 2),
            nn.BatchNorm1d(2),
            nn.ReLU(),
            nn.Linear(2, 1),
            nn.Tanh(),
            nn.Linear(1, 3),
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def _loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=generator)
    y = torch.tanh(x @ torch.randn(8, 3, generator=generator)) + 0.3 * x[:, :3] ** 2
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)


class _Fingerprints(Callback):
    """At the end of training, every rank hashes its parameters and optimizer state."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Parameters and optimizer state must agree bitwise. Buffers (BatchNorm running stats)
        # legitimately differ: DDP broadcasts them from rank 0 before each forward, then every
        # rank updates them with its own batch.
        digests: dict[str, str] = {}
        for name, tensor in pl_module.named_parameters():
            digests[name] = _digest(tensor)
        for index, state in enumerate(trainer.optimizers[0].state.values()):
            for key in sorted(state):
                if isinstance(state[key], torch.Tensor):
                    digests[f"optimizer.{index}.{key}"] = _digest(state[key])
        growth = next(c for c in trainer.callbacks if isinstance(c, GrowthCallback))
        record = {"digests": digests, "widths": growth.widths}
        gathered: list[dict] = [{} for _ in range(trainer.world_size)]
        dist.all_gather_object(gathered, record)
        if trainer.is_global_zero:
            accepted = sum(event.accepted for event in growth.history)
            self.path.write_text(json.dumps({"ranks": gathered, "accepted": accepted}))


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


@pytest.mark.parametrize(
    ("accumulate", "precision"), [(1, "32-true"), (2, "32-true"), (1, "bf16-mixed")]
)
def test_ddp_ranks_stay_bitwise_identical_through_growth(tmp_path, accumulate, precision) -> None:
    pl.seed_everything(0, verbose=False)
    model = _Regression()
    result = tmp_path / "fingerprints.json"
    growth = permissive_callback()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_steps=24,
        accumulate_grad_batches=accumulate,
        precision=precision,
        callbacks=[growth, _Fingerprints(result)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, _loader())

    report = json.loads(result.read_text())
    first, second = report["ranks"]
    assert report["accepted"] >= 2, report
    assert first["widths"] == second["widths"]
    differing = [key for key in first["digests"] if first["digests"][key] != second["digests"][key]]
    assert not differing, differing
    # ddp_spawn copies rank 0's grown weights back into this process's (smaller) model.
    assert model.net[0].out_features == first["widths"]["net.0 -> net.3"]


def _fingerprint_run(tmp_path: Path, spread: bool) -> dict:
    pl.seed_everything(0, verbose=False)
    result = tmp_path / f"fingerprints-{spread}.json"
    growth = permissive_callback()
    growth.spread_solves = spread
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_steps=24,
        callbacks=[growth, _Fingerprints(result)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(_Regression(), _loader())
    return json.loads(result.read_text())


def test_solves_spread_over_ranks_grow_bitwise_like_one_rank_solving_everything(tmp_path) -> None:
    spread = _fingerprint_run(tmp_path, spread=True)
    single = _fingerprint_run(tmp_path, spread=False)
    assert spread["accepted"] >= 2 and spread["accepted"] == single["accepted"]
    # Both pairs grew (from 2 and 1), so both ranks' solves were used.
    widths = spread["ranks"][0]["widths"]
    assert widths["net.0 -> net.3"] > 2 and widths["net.3 -> net.5"] > 1, widths
    assert spread["ranks"][0]["widths"] == single["ranks"][0]["widths"]
    assert spread["ranks"][0]["digests"] == single["ranks"][0]["digests"]
