"""The held-out batches of a decision, split into a half that chooses and a half that confirms.

The amplitude search picks an amplitude and a sign among about ten trials by their held-out
loss. Confirming the loss decrease on those same samples is biased: on pure noise the best of
ten trials lowers the loss of the samples it was chosen on (noise runs that grew showed
0.1–0.5 % "decreases"). The callback therefore chooses on one half of the held batches and
accepts only if the chosen neurons also lower the loss of the other half, which played no part
in the choice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.data import extract_batch_size
from torch import Tensor

from lightning_grow.callback._lightning import LossFn, merge_batches

__all__ = ["HeldOut", "split_batches"]


def _halve(batch: Any) -> tuple[Any, Any] | None:
    """A batch of tensors cut in two along dim 0 (``None`` if it holds anything else)."""
    if isinstance(batch, Tensor):
        if batch.dim() == 0 or batch.shape[0] < 2:
            return None
        half = batch.shape[0] // 2
        return batch[:half], batch[half:]
    if isinstance(batch, dict):
        halves = {key: _halve(value) for key, value in batch.items()}
        if any(value is None for value in halves.values()):
            return None
        return (
            {key: value[0] for key, value in halves.items()},  # type: ignore[index]
            {key: value[1] for key, value in halves.items()},  # type: ignore[index]
        )
    if isinstance(batch, (tuple, list)) and not hasattr(batch, "_fields") and batch:
        parts = [_halve(value) for value in batch]
        if any(part is None for part in parts) or len({len(p[0]) for p in parts}) > 1:  # type: ignore[index]
            return None
        kind = type(batch)
        return kind(p[0] for p in parts), kind(p[1] for p in parts)  # type: ignore[index]
    return None


def split_batches(batches: list[Any]) -> tuple[list[Any], list[Any]]:
    """Two disjoint halves of the held batches, each merged for one ``training_step`` call.

    Two or more batches split by batch (the first half chooses); a single batch of tensors is
    cut along dim 0. A single batch of anything else cannot be split: both halves are that
    batch, and the confirmation is then on the samples that chose (as before the split).
    """
    if len(batches) >= 2:
        middle = len(batches) // 2
        return merge_batches(batches[:middle]), merge_batches(batches[middle:])
    merged = merge_batches(batches)
    halves = _halve(merged[0]) if len(merged) == 1 else None
    if halves is None:
        return merged, merged
    return [halves[0]], [halves[1]]


class HeldOut:
    """Mean loss of the model on the choosing and on the confirming half of the held batches.

    Parameters
    ----------
    pl_module
        The module whose loss is measured (in the caller's quiet evaluation).
    batches
        The held batches of this decision.
    loss_fn
        ``loss_fn(pl_module, batch) -> loss``.
    split
        Split the batches in two halves (``False``: both are all of them).
    """

    def __init__(
        self,
        pl_module: pl.LightningModule,
        batches: list[Any],
        loss_fn: LossFn,
        split: bool = True,
    ) -> None:
        if split:
            self.choosing, self.confirming = split_batches(batches)
        else:
            self.choosing = self.confirming = merge_batches(batches)
        self.pl_module, self.loss_fn = pl_module, loss_fn
        self.calls = 0

    def _mean(self, batches: list[Any]) -> float:
        total, count = 0.0, 0
        for batch in batches:
            self.calls += 1
            size = extract_batch_size(batch)
            total += float(self.loss_fn(self.pl_module, batch)) * size
            count += size
        return total / max(count, 1)

    @property
    def choose(self) -> Callable[[], float]:
        """The loss on the choosing half."""
        return lambda: self._mean(self.choosing)

    @property
    def confirm(self) -> Callable[[], float]:
        """The loss on the confirming half."""
        return lambda: self._mean(self.confirming)

    def confirm_chunks(self, chunks: int = 8) -> Callable[[], list[float]]:
        """The losses of up to ``chunks`` disjoint parts of the confirming half (one call each).

        Parts are halves of halves along the batch dimension; batches that cannot be cut stay
        whole (then fewer parts, possibly one).
        """
        parts = self.confirming
        while len(parts) < chunks:
            halves = [_halve(part) for part in parts]
            if any(half is None for half in halves):
                break
            parts = [piece for half in halves for piece in half]  # type: ignore[union-attr]
        return lambda: [self._mean([part]) for part in parts]
