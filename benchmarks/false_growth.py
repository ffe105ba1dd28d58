"""False growth on noise, and power on a planted task, of ``GrowthCallback``'s decisions.

A growth decision is a statistical test: "this pair has an expressivity bottleneck". On a task
whose targets are independent of the inputs no network has one, so every run that grows is a
false growth. This script trains many small networks on such tasks and reports the share of
runs that grew, with a 95 % Clopper–Pearson interval, next to the power on a planted task (a
student of a wider teacher, where growth is right).

Every run draws fresh samples (one epoch, no sample seen twice), so training cannot create a
bottleneck by memorising: the only signal is the one planted.

The networks have the digits suite's shape (64 inputs, two hidden layers of 2, 10 outputs):

* ``regression``: ``MLP(64, (2, 2), 10, tanh)``, targets ``N(0, I)`` independent of the inputs,
  MSE.
* ``labels``: ``MLP(64, (2, 2), 10, relu)``, labels uniform over 10 classes, cross-entropy.
* ``planted``: ``MLP(64, (2,), 10, tanh)`` student of ``64 → 16 tanh → 10`` (pre-activations of unit
  variance) plus ``N(0, 0.1²)`` noise; growth is expected. Reports the share of runs that grew,
  the mean final width and the test MSE.

Usage::

    PYTHONPATH=. python -m benchmarks.false_growth --runs 100 --planted-runs 20
    PYTHONPATH=. python -m benchmarks.false_growth --label spending \
        --option false_growth_rate=0.05 --option significance_margin=None

Compare defaults across versions by pointing ``PYTHONPATH`` at another checkout (the script only
uses ``GrowthCallback()``'s public arguments).
"""

from __future__ import annotations

import argparse
import ast
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["clopper_pearson", "main", "noise_run", "planted_run"]

IN_FEATURES, OUT_FEATURES, HIDDEN = 64, 10, (2, 2)
SAMPLES, BATCH = 16384, 64


class _Module(pl.LightningModule):
    """A backbone, Adam (lr 1e-3) and a loss: the lightest module the callback accepts."""

    def __init__(self, backbone: nn.Module, loss: Callable[[Tensor, Tensor], Tensor]) -> None:
        super().__init__()
        self.backbone = backbone
        self.loss = loss

    def forward(self, inputs: Tensor) -> Tensor:
        return self.backbone(inputs)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, targets = batch
        return self.loss(self(inputs), targets)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


@dataclass
class Outcome:
    """One run: whether it grew, its final width and its test loss."""

    grew: bool
    width: int
    test_loss: float


def _fit(
    module: _Module, inputs: Tensor, targets: Tensor, seed: int, options: dict[str, Any]
) -> Any:
    from lightning_grow import GrowthCallback

    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(inputs, targets),
        batch_size=BATCH,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    callback = GrowthCallback(verbose=False, wandb_tables=False, seed=seed, **options)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[callback],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, train_dataloaders=loader)
    return callback


def noise_run(task: str, seed: int, options: dict[str, Any]) -> Outcome:
    """One run on targets independent of the inputs (``task``: regression or labels)."""
    from lightning_grow.models import MLP

    generator = torch.Generator().manual_seed(10_000 + seed)
    inputs = torch.randn(SAMPLES, IN_FEATURES, generator=generator)
    torch.manual_seed(seed)
    if task == "regression":
        targets = torch.randn(SAMPLES, OUT_FEATURES, generator=generator)
        backbone = MLP(IN_FEATURES, HIDDEN, OUT_FEATURES, activation="tanh")
        module = _Module(backbone, F.mse_loss)
    elif task == "labels":
        targets = torch.randint(0, OUT_FEATURES, (SAMPLES,), generator=generator)
        backbone = MLP(IN_FEATURES, HIDDEN, OUT_FEATURES, activation="relu")
        module = _Module(backbone, F.cross_entropy)
    else:
        raise ValueError(f"unknown task {task!r}")
    callback = _fit(module, inputs, targets, seed, options)
    width = sum(callback.widths.values())
    return Outcome(any(event.accepted for event in callback.history), width, math.nan)


def planted_run(seed: int, options: dict[str, Any]) -> Outcome:
    """A width-1 student of a fixed width-8 tanh teacher: growth is expected."""
    from lightning_grow.models import MLP

    teacher = torch.Generator().manual_seed(4321)
    hidden = 16
    weight1 = torch.randn(hidden, IN_FEATURES, generator=teacher) / IN_FEATURES**0.5
    weight2 = torch.randn(OUT_FEATURES, hidden, generator=teacher) / hidden**0.5
    generator = torch.Generator().manual_seed(20_000 + seed)
    inputs = torch.randn(SAMPLES + 2048, IN_FEATURES, generator=generator)
    targets = torch.tanh(inputs @ weight1.T) @ weight2.T
    targets = targets + 0.1 * torch.randn(targets.shape, generator=generator)
    torch.manual_seed(seed)
    backbone = MLP(IN_FEATURES, (2,), OUT_FEATURES, activation="tanh")
    module = _Module(backbone, F.mse_loss)
    callback = _fit(module, inputs[:SAMPLES], targets[:SAMPLES], seed, options)
    with torch.no_grad():
        test = float(F.mse_loss(backbone(inputs[SAMPLES:]), targets[SAMPLES:]))
    width = next(iter(callback.widths.values()))
    return Outcome(any(event.accepted for event in callback.history), width, test)


def clopper_pearson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial confidence interval for ``successes / trials``."""
    from scipy.stats import beta

    tail = (1.0 - level) / 2.0
    low = 0.0 if successes == 0 else float(beta.ppf(tail, successes, trials - successes + 1))
    high = (
        1.0 if successes == trials else float(beta.ppf(1 - tail, successes + 1, trials - successes))
    )
    return low, high


def _rate(outcomes: list[Outcome]) -> str:
    grew = sum(outcome.grew for outcome in outcomes)
    low, high = clopper_pearson(grew, len(outcomes))
    return f"{grew}/{len(outcomes)} = {grew / len(outcomes):.1%} (95% CI {low:.1%}–{high:.1%})"


def main(argv: list[str] | None = None) -> dict[str, list[Outcome]]:
    """Run the noise and planted tasks; print one line per task."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="noise runs per task")
    parser.add_argument("--planted-runs", type=int, default=20)
    parser.add_argument("--tasks", default="regression,labels,planted")
    parser.add_argument("--label", default="", help="a name for this version in the output")
    parser.add_argument("--option", action="append", default=[], help="callback arg=value")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # one line per task, no banners
    pairs = (item.split("=", 1) for item in args.option)
    options = {key: ast.literal_eval(value) for key, value in pairs}
    results: dict[str, list[Outcome]] = {}
    for task in args.tasks.split(","):
        started = time.perf_counter()
        if task == "planted":
            outcomes = [planted_run(seed, options) for seed in range(args.planted_runs)]
        else:
            outcomes = [noise_run(task, seed, options) for seed in range(args.runs)]
        results[task] = outcomes
        seconds = time.perf_counter() - started
        line = f"{args.label} {task:10s} grew in {_rate(outcomes)}"
        if task == "planted":
            widths = [outcome.width for outcome in outcomes]
            losses = [outcome.test_loss for outcome in outcomes]
            line += (
                f"; width mean {sum(widths) / len(widths):.1f} (min {min(widths)}, max "
                f"{max(widths)}); test MSE mean {sum(losses) / len(losses):.4f}"
            )
        print(f"{line}  [{seconds:.0f}s]", flush=True)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
