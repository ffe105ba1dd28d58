"""The digits protocol of issue 9 and fixed-width baselines trained with a plain torch loop.

Protocol: ``load_digits()``, ``X / 16``, ``train_test_split(test_size=400, random_state=0,
stratify=y)``, MLP 64-h-h-10 (ReLU), Adam lr 1e-3, batch 64, 60 epochs, test accuracy and
cross-entropy after the last epoch.

The plain loop is step-for-step the Lightning ``fit`` of :mod:`benchmarks.lightning_runs`: the
network is built right after ``seed_everything(seed)`` and the training loader shuffles with
``torch.Generator().manual_seed(seed)``, exactly like ``DigitsDataModule(seed=seed)``; the smoke
test checks that both give the same weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import RunResult, count_parameters, evaluate_classifier, seed_everything

__all__ = [
    "DigitsProtocol",
    "DigitsSplit",
    "build_mlp",
    "load_digits_split",
    "train_fixed",
    "train_plain",
]


@dataclass(frozen=True)
class DigitsProtocol:
    """Training hyper-parameters of the protocol (shared by every digits run)."""

    epochs: int = 60
    batch_size: int = 64
    learning_rate: float = 1e-3


@dataclass(frozen=True)
class DigitsSplit:
    """The fixed protocol split as float32 tensors (``(n, 64)`` inputs, int64 labels)."""

    train_inputs: Tensor
    train_labels: Tensor
    test_inputs: Tensor
    test_labels: Tensor

    def images(self, inputs: Tensor) -> Tensor:
        """``(n, 64)`` vectors as ``(n, 1, 8, 8)`` images (for CNNs)."""
        return inputs.reshape(-1, 1, 8, 8)


def load_digits_split() -> DigitsSplit:
    """``load_digits()`` scaled by 1/16 and split with the protocol's stratified 400-image test."""
    digits = load_digits()
    images = (digits.data / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=400, random_state=0, stratify=labels
    )
    return DigitsSplit(
        torch.from_numpy(x_train),
        torch.from_numpy(y_train),
        torch.from_numpy(x_test),
        torch.from_numpy(y_test),
    )


def build_mlp(hidden: Sequence[int], activation: str = "relu") -> nn.Module:
    """The protocol's network: ``lightning_grow.models.MLP(64, hidden, 10, activation)``."""
    from lightning_grow.models import MLP

    return MLP(in_features=64, hidden=tuple(hidden), num_classes=10, activation=activation)


def train_plain(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    seed: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
) -> float:
    """Train ``model`` in place with Adam on shuffled mini-batches; return the wall time.

    The shuffle generator is seeded with ``seed`` once, as ``DigitsDataModule`` does, so the data
    order matches a Lightning ``fit`` over the same tensors.
    """
    loader = DataLoader(
        TensorDataset(inputs, targets),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    model.train()
    started = time.perf_counter()
    for _ in range(epochs):
        for batch_inputs, batch_targets in loader:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(batch_inputs), batch_targets).backward()
            optimizer.step()
    return time.perf_counter() - started


def train_fixed(
    hidden: Sequence[int],
    seed: int,
    split: DigitsSplit,
    protocol: DigitsProtocol = DigitsProtocol(),
    activation: str = "relu",
    name: str | None = None,
) -> RunResult:
    """Train the fixed-width MLP ``64-hidden-10`` on the protocol and evaluate it on the test split.

    Parameters
    ----------
    hidden
        Hidden widths, e.g. ``(64, 64)``.
    seed
        Seed of the initialisation and the data order.
    split
        The protocol split (:func:`load_digits_split`).
    protocol
        Epochs, batch size and learning rate.
    activation
        Hidden activation of the MLP.
    name
        Label of the run (default ``"fixed h=<widths>"``).

    Returns
    -------
    RunResult
        Test accuracy / cross-entropy, parameters and fit time.
    """
    seed_everything(seed)
    model = build_mlp(hidden, activation)
    seconds = train_plain(
        model,
        split.train_inputs,
        split.train_labels,
        seed=seed,
        epochs=protocol.epochs,
        batch_size=protocol.batch_size,
        learning_rate=protocol.learning_rate,
    )
    widths = [int(width) for width in hidden]
    return RunResult(
        name=name or "fixed h=" + "-".join(map(str, widths)),
        seed=seed,
        widths=widths,
        parameters=count_parameters(model),
        metrics=evaluate_classifier(model, split.test_inputs, split.test_labels),
        fit_seconds=seconds,
        width_trajectory=[(0, widths)],
    )
