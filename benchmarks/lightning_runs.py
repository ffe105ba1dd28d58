"""Runs through a Lightning ``Trainer``: grown networks (``GrowthCallback``) and fixed ones.

Every run uses the same quiet ``Trainer`` (CPU, one device, no logger, no checkpoint, no
validation loop) so that the only difference between a grown run and the fixed run of its final
architecture is the callback: that difference is the growth overhead of section 3.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import RunResult, count_parameters, seed_everything

__all__ = [
    "classifier_module",
    "fit_with_trainer",
    "make_loader",
    "run_lightning",
    "width_trajectory",
]


def make_loader(inputs: Tensor, targets: Tensor, batch_size: int, seed: int) -> DataLoader:
    """Shuffled loader whose order is fixed by ``seed`` (as ``DigitsDataModule`` does it)."""
    return DataLoader(
        TensorDataset(inputs, targets),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )


def fit_with_trainer(
    module: pl.LightningModule,
    loader: DataLoader,
    epochs: int,
    callbacks: Sequence[pl.Callback] = (),
) -> float:
    """``Trainer.fit`` on ``loader`` for ``epochs`` epochs; return its wall time in seconds."""
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=list(callbacks),
    )
    with warnings.catch_warnings():
        # Small in-memory loaders: Lightning's "few workers / few batches" advice is noise here.
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*number of training batches.*")
        warnings.filterwarnings("ignore", message=".*validation_step.*but have no.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        started = time.perf_counter()
        trainer.fit(module, train_dataloaders=loader)
        return time.perf_counter() - started


def width_trajectory(
    initial: dict[str, int], history: Sequence[Any]
) -> list[tuple[int, list[int]]]:
    """``(step, widths)`` after every step where some pair grew, from ``GrowthEvent`` records."""
    widths = dict(initial)
    trajectory = [(0, list(widths.values()))]
    by_step: dict[int, list[Any]] = {}
    for event in history:
        if event.accepted:
            by_step.setdefault(event.step, []).append(event)
    for step in sorted(by_step):
        for event in by_step[step]:
            widths[event.pair] = event.width_after
        trajectory.append((step, list(widths.values())))
    return trajectory


def run_lightning(
    *,
    name: str,
    seed: int,
    build_backbone: Callable[[], nn.Module],
    build_module: Callable[[nn.Module], pl.LightningModule],
    train: tuple[Tensor, Tensor],
    evaluate: Callable[[nn.Module], dict[str, float]],
    epochs: int,
    batch_size: int,
    callback_options: dict[str, Any] | None = None,
    extra_callbacks: Sequence[pl.Callback] = (),
) -> RunResult:
    """One seeded Lightning run, grown when ``callback_options`` is given, else fixed.

    Parameters
    ----------
    name
        Label of the run.
    seed
        Seeds the initialisation (the backbone is built right after seeding), the data order and
        the callback's random initialisations.
    build_backbone
        Builds the starting network.
    build_module
        Wraps the backbone in a LightningModule (e.g. ``ClassifierModule``).
    train
        Training inputs and targets.
    evaluate
        Test metrics of the trained backbone.
    epochs, batch_size
        Training length and batch size.
    callback_options
        Keyword arguments of ``GrowthCallback`` (``verbose`` and ``wandb_tables`` default to
        off, ``seed`` to ``seed``); ``None`` trains without the callback.

    Returns
    -------
    RunResult
        With the growth timings, width trajectory and events when grown.
    """
    seed_everything(seed)
    backbone = build_backbone()
    module = build_module(backbone)
    loader = make_loader(*train, batch_size=batch_size, seed=seed)
    callback = None
    if callback_options is not None:
        from lightning_grow import GrowthCallback

        options = {"verbose": False, "wandb_tables": False, "seed": seed, **callback_options}
        callback = GrowthCallback(**options)
    callbacks = ([callback] if callback else []) + list(extra_callbacks)
    seconds = fit_with_trainer(module, loader, epochs, callbacks)
    metrics = evaluate(backbone)
    if callback is None:
        widths = _hidden_widths(backbone)
        return RunResult(
            name,
            seed,
            widths,
            count_parameters(backbone),
            metrics,
            seconds,
            width_trajectory=[(0, widths)],
        )
    return RunResult(
        name=name,
        seed=seed,
        widths=list(callback.widths.values()),
        parameters=count_parameters(backbone),
        metrics=metrics,
        fit_seconds=seconds,
        growth_seconds=dict(callback.timings),
        width_trajectory=width_trajectory(callback.initial_widths, callback.history),
        events=[event.to_dict() for event in callback.history],
    )


def _hidden_widths(backbone: nn.Module) -> list[int]:
    """Output widths of every Linear / Conv2d but the last (the hidden widths of a plain net)."""
    layers = [m for m in backbone.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return [
        layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        for layer in layers[:-1]
    ]


def classifier_module(learning_rate: float) -> Callable[[nn.Module], pl.LightningModule]:
    """``ClassifierModule(backbone, 10, Adam(lr))`` factory (the protocol's LightningModule)."""
    from lightning_grow.models import ClassifierModule

    optimizer = functools.partial(torch.optim.Adam, lr=learning_rate)
    return lambda backbone: ClassifierModule(backbone, num_classes=10, optimizer=optimizer)
