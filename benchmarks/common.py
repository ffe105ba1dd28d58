"""Shared records and helpers: one training run's outcome, seeding, evaluation, summaries."""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_grow.surgery.widen import count_parameters

__all__ = [
    "RunResult",
    "count_parameters",
    "evaluate_classifier",
    "evaluate_regressor",
    "mean_std",
    "seed_everything",
]


@dataclass
class RunResult:
    """The outcome of one training run, as every section reports it.

    Attributes
    ----------
    name
        Which configuration ran (``"fixed h=64"``, ``"tiny"``, ``"gromo tiny"`` ...).
    seed
        Seed of the initialisation and of the data order.
    widths
        Final hidden widths, in layer order.
    parameters
        Parameters of the final network.
    metrics
        Test metrics after the last epoch (``accuracy`` and ``cross_entropy``, or ``mse``).
    fit_seconds
        Wall time of the training loop (growth included, final evaluation excluded).
    growth_seconds
        Seconds spent in growth, by phase (empty for fixed-width runs).
    width_trajectory
        ``(optimizer step, widths)`` after every accepted growth, starting from the initial widths.
    events
        Growth decisions as flat dicts (``GrowthEvent.to_dict()`` or the GroMo equivalent).
    """

    name: str
    seed: int
    widths: list[int]
    parameters: int
    metrics: dict[str, float]
    fit_seconds: float
    growth_seconds: dict[str, float] = field(default_factory=dict)
    width_trajectory: list[tuple[int, list[int]]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def growth_fraction(self) -> float:
        """Share of the fit time spent in growth phases (0 for fixed runs)."""
        return sum(self.growth_seconds.values()) / self.fit_seconds if self.fit_seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly record for ``results.json``.

        The per-decision events are summarised as ``event_reasons`` (count per reason): a
        teacher–student run alone makes ~500 decisions, and RESULTS.md already tabulates them.
        """
        record = asdict(self)
        events = record.pop("events")
        record["event_reasons"] = dict(
            Counter(e.get("reason", "grown" if e["accepted"] else "rejected") for e in events)
        )
        return record


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that a run is reproducible on one thread."""
    random.seed(seed)
    # Seeds the legacy global generator that third-party code may still draw from.
    np.random.seed(seed)  # noqa: NPY002
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate_classifier(model: nn.Module, inputs: Tensor, labels: Tensor) -> dict[str, float]:
    """Test accuracy and mean cross-entropy of ``model`` on one in-memory split (eval mode)."""
    was_training = model.training
    model.eval()
    logits = model(inputs)
    model.train(was_training)
    return {
        "accuracy": (logits.argmax(dim=1) == labels).float().mean().item(),
        "cross_entropy": F.cross_entropy(logits, labels).item(),
    }


@torch.no_grad()
def evaluate_regressor(model: nn.Module, inputs: Tensor, targets: Tensor) -> dict[str, float]:
    """Test mean squared error of ``model`` (averaged over samples and outputs)."""
    was_training = model.training
    model.eval()
    predictions = model(inputs)
    model.train(was_training)
    return {"mse": F.mse_loss(predictions, targets).item()}


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value, NaN for none)."""
    values = [float(value) for value in values]
    if not values:
        return math.nan, math.nan
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), spread


def format_mean_std(values: Sequence[float], digits: int = 3, scientific: bool = False) -> str:
    """``"0.975 ± 0.004"`` (or ``"2.6e-04 ± 3.1e-05"``) over the given values."""
    mean, spread = mean_std(values)
    if math.isnan(mean):
        return "n/a"
    if scientific:
        return f"{mean:.{digits - 1}e} ± {spread:.1e}"
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def paired_comparison(better: Sequence[float], worse: Sequence[float]) -> str:
    """How far ``worse - better`` is from zero over paired seeds, e.g. for test losses.

    ``"0.020 ± 0.034 (s.e. 0.011), 7 of 10 seeds, sign test p = 0.17"``: the mean paired
    difference with its sample spread and standard error, the seeds where ``better`` is lower,
    and the exact one-sided sign-test probability of at least that many wins by chance.
    """
    differences = [w - b for b, w in zip(better, worse, strict=True)]
    n = len(differences)
    if n < 2:
        return "n/a (fewer than 2 seeds)"
    mean, spread = mean_std(differences)
    wins = sum(difference > 0 for difference in differences)
    p_value = sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n
    return (
        f"{mean:.3f} ± {spread:.3f} (s.e. {spread / math.sqrt(n):.3f}), {wins} of {n} seeds, "
        f"sign test p = {p_value:.2g}"
    )
