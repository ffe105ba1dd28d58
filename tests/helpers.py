"""Shared test helpers (imported as ``tests.helpers``; pyproject puts the repo root on the path)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_grow import GrowthCallback
from lightning_grow.decision.policy import PairDecision
from lightning_grow.reporting.events import Reason
from lightning_grow.topology._discovery import discover_pairs


def permissive_callback(**options: Any) -> GrowthCallback:
    """A callback that grows whenever it can: for tests about state and plumbing, not policy."""
    permissive = dict(
        significance_margin=0.0,
        statistics_samples=64,
        held_samples=32,
        gain_threshold=0.0,
        min_loss_decrease=0.0,
        negative_amplitudes=True,
        patience=None,
        stop_fraction=None,
        verbose=False,
        # The compute budget plans from measured timings: runs compared bitwise go without it.
        compute_budget=None,
    )
    callback = GrowthCallback(**{**permissive, **options})
    callback.confirm_held_out = False  # every candidate that lowers the held-out loss grows
    return callback


def quiet_trainer(**options: Any) -> pl.Trainer:
    """A CPU ``Trainer`` without logger, checkpoints, progress bar or model summary."""
    quiet = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return pl.Trainer(**{**quiet, **options})


def tanh_unit_setup() -> SimpleNamespace:
    """A 3-2-2 tanh MLP's one pair, 256 inputs, its outputs, the feature a unit tanh(x₀)
    adds to output 0, and that unit as a candidate (for ``planner._decide_pair``)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 2))
    _, (pair,) = discover_pairs(net, None, "auto")
    inputs = torch.randn(256, 3)
    with torch.no_grad():
        base = net(inputs)
    candidate = SimpleNamespace(
        first_weight=lambda k: torch.tensor([[1.0, 0.0, 0.0]]),
        first_bias=lambda k: torch.zeros(1),
        second_weight=lambda k: torch.tensor([[1.0], [0.0]]),
    )
    decision = PairDecision(pair=pair.name, neurons=1, reason=Reason.GROWN)
    return SimpleNamespace(
        net=net,
        pair=pair,
        inputs=inputs,
        base=base,
        feature=torch.tanh(inputs[:, :1]) * torch.tensor([[1.0, 0.0]]),
        candidate=candidate,
        decision=decision,
    )
