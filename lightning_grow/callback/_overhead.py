"""What growth adds to a fit's wall time, measured, and how long to pause to stay in budget.

The FLOP plan (``decision.budget``) bounds what statistics *should* cost; on small networks
what they cost is hook and Python overhead per batch, and every decision adds solves and
amplitude searches that no FLOP count sees. :class:`OverheadAccount` measures all of it from
the batch clock, so pacing holds for a 64-16-10 MLP as for a ResNet:

* a *plain* batch (no statistics, no decision) measures training alone; a *collecting* batch
  measures training plus the statistics hooks; their medians' difference is what one batch of
  statistics adds (medians, because an interval that spans a validation loop or a dataloader
  restart is an outlier, not a cost);
* decisions are timed directly (solve, search, surgery, everything inside the hook);
* the callback's added time ``C`` against the training time ``T`` then says how many plain
  steps must pass before growth may spend again: ``C <= budget * T``.

Decided on rank 0 (its clock) and broadcast with the decision, so every rank pauses alike.
"""

from __future__ import annotations

import math
import statistics as stats
import time
from collections import deque

__all__ = ["OverheadAccount"]

_KEPT_INTERVALS = 64  # the medians follow the network as it grows
_WARMUP_INTERVALS = 2  # the first batches pay one-off allocation and compilation


class OverheadAccount:
    """The measured time growth added to a fit, and the pause that keeps it in budget.

    Parameters
    ----------
    budget
        Share of the training time growth may add (e.g. ``0.05``).
    """

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self._plain: deque[float] = deque(maxlen=_KEPT_INTERVALS)
        self._collecting: deque[float] = deque(maxlen=_KEPT_INTERVALS)
        self.collecting_batches = 0
        self.decision_seconds = 0.0
        self._last_start: float | None = None
        self._last_collecting = False
        self._decided_in_batch = False
        self._intervals_seen = 0
        self._fit_seconds = 0.0  # wall time of the batches seen, a resumed fit's included

    # ------------------------------------------------------------------ measuring
    def batch_started(self, collecting: bool) -> None:
        """Close the previous batch's interval and open this one's.

        ``collecting``: whether this batch's forward and backward run the statistics hooks.
        """
        now = time.perf_counter()
        if self._last_start is not None:
            interval = now - self._last_start
            self._fit_seconds += interval
            self._intervals_seen += 1
            if not self._decided_in_batch and self._intervals_seen > _WARMUP_INTERVALS:
                (self._collecting if self._last_collecting else self._plain).append(interval)
        if collecting:
            self.collecting_batches += 1
        self._last_start = now
        self._last_collecting = collecting
        self._decided_in_batch = False

    def decided(self, seconds: float) -> None:
        """A decision took ``seconds`` of the current batch (its interval is not a sample)."""
        self.decision_seconds += seconds
        self._decided_in_batch = True

    # ------------------------------------------------------------------ the account
    @property
    def plain_seconds(self) -> float:
        """Median training time of a batch without statistics (``nan`` before any)."""
        return stats.median(self._plain) if self._plain else math.nan

    @property
    def statistics_seconds_per_batch(self) -> float:
        """Median time the statistics hooks add to a batch (0 until both kinds were seen)."""
        if not self._plain or not self._collecting:
            return 0.0
        return max(0.0, stats.median(self._collecting) - stats.median(self._plain))

    @property
    def added_seconds(self) -> float:
        """Time growth added to the fit so far: statistics batches' extra plus decisions."""
        return self.collecting_batches * self.statistics_seconds_per_batch + self.decision_seconds

    @property
    def training_seconds(self) -> float:
        """Wall time of the fit so far (the current batch included), less what growth added."""
        current = 0.0 if self._last_start is None else time.perf_counter() - self._last_start
        return self._fit_seconds + current - self.added_seconds

    def pause_batches(self, fallback_batch_seconds: float) -> int:
        """Plain batches to train before growth may spend again (0 when within budget).

        ``fallback_batch_seconds`` stands in for a plain batch's time before one was measured.
        """
        added, training = self.added_seconds, self.training_seconds
        batch = self.plain_seconds
        if not math.isfinite(batch) or batch <= 0:
            batch = fallback_batch_seconds
        behind = added / self.budget - training
        if behind <= 0 or not math.isfinite(batch) or batch <= 0:
            return 0
        return math.ceil(behind / batch)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, float]:
        """The account's totals, so that a resumed fit keeps paying its debts."""
        return {
            "added_seconds": self.added_seconds,
            "fit_seconds": self._fit_seconds,
        }

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Continue a fit's account: its added time is carried as decision time."""
        # Checkpoints of 0.x releases named these growth_seconds and elapsed_seconds.
        self.decision_seconds = float(state.get("added_seconds", state.get("growth_seconds", 0)))
        self._fit_seconds = float(state.get("fit_seconds", state.get("elapsed_seconds", 0)))
        self.collecting_batches = 0
