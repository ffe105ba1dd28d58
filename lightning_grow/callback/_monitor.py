"""Target mode and the validation-monitored stop of :class:`~lightning_grow.GrowthCallback`.

A mixin of the callback (split out to keep ``growth.py`` readable). Both modes replace the
significance test's say over *how much* to grow with a quota that
:func:`lightning_grow.decision.target.plan_quota` fills with TINY's best neurons:

* target mode (``target`` / ``target_parameters`` with ``target_by``): the quota of
  :class:`~lightning_grow.decision.target.GrowthTarget`; growth stops at the target or at
  ``target_by``, whichever comes first;
* monitor mode (``monitor``): after each validation check that improved the monitored metric,
  the next decision adds up to a quarter of each pair's width; ``monitor_patience`` checks
  without improvement stop growth for good (rolling back is not attempted).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn

from lightning_grow.decision.target import GrowthTarget, Quota, plan_quota
from lightning_grow.topology.facts import parameters_per_neuron

if TYPE_CHECKING:
    from lightning_grow.callback.growth import GrowthCallback

__all__ = ["MONITOR_GROWTH_SHARE", "TargetModeMixin", "ValidationMonitor"]

#: Monitor mode: neurons one decision may add to a pair, as a share of its width (at least 1).
MONITOR_GROWTH_SHARE = 0.25


class ValidationMonitor:
    """Tracks a logged validation metric the way ``EarlyStopping`` does.

    Parameters
    ----------
    monitor
        Key of the metric in ``trainer.callback_metrics`` (e.g. ``"val_loss"``).
    mode
        ``"min"`` or ``"max"``: the direction of improvement.
    patience
        Validation checks without improvement after which growth stops.
    min_delta
        Least change that counts as an improvement.
    """

    def __init__(
        self, monitor: str, mode: Literal["min", "max"], patience: int, min_delta: float = 0.0
    ) -> None:
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.best: float | None = None
        self.wait = 0
        self.stopped = False
        self.fresh = False  # an improvement that no decision has acted on yet
        self.warned = False

    def update(self, value: float) -> None:
        """Record one validation check."""
        if self.stopped or not math.isfinite(value):
            return
        sign = -1.0 if self.mode == "min" else 1.0
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.wait, self.fresh = value, 0, True
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped, self.fresh = True, False

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait, "stopped": self.stopped, "fresh": self.fresh}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.wait = state.get("best"), int(state.get("wait", 0))
        self.stopped, self.fresh = bool(state.get("stopped")), bool(state.get("fresh"))


class TargetModeMixin:
    """Quota-driven growth: the target and the monitor, their stop and their checkpoint state."""

    target: GrowthTarget | None
    monitor: ValidationMonitor | None

    def _init_modes(
        self,
        target: Mapping[str, int] | float | None,
        target_parameters: int | None,
        target_by: int | float,
        monitor: str | None,
        monitor_mode: Literal["min", "max"],
        monitor_patience: int,
    ) -> None:
        quota_mode = target is not None or target_parameters is not None
        self.target = GrowthTarget(target, target_parameters, target_by) if quota_mode else None
        self.monitor = None
        if monitor is not None:
            self.monitor = ValidationMonitor(monitor, monitor_mode, monitor_patience)

    def _target_stop_step(self: GrowthCallback, trainer: pl.Trainer) -> int | None:
        """In target mode the deadline replaces ``stop_step/epoch/fraction``."""
        assert self.target is not None
        self.target.resolve(self.initial_widths, trainer.estimated_stepping_batches)
        smallest = min((parameters_per_neuron(p) for p in self._growing), default=1)
        if self.target.reached(self.widths, self.total_parameters, smallest):
            rank_zero_warn(
                f"GrowthCallback: the network is already at its target ({self.widths}, "
                f"{self.total_parameters} parameters); nothing will grow."
            )
        return self.target.by_step

    def _quota(self: GrowthCallback, trainer: pl.Trainer) -> Quota | None:
        """This decision's quota, or ``None`` for the ordinary significance-tested growth."""
        if self.target is not None:
            return self.target.quota(trainer.global_step, self.widths, self.total_parameters)
        if self.monitor is None:
            return None
        if not self.monitor.fresh:
            if self.monitor.best is None and trainer.current_epoch >= 1 and not self.monitor.warned:
                self.monitor.warned = True
                rank_zero_warn(
                    f"GrowthCallback(monitor={self.monitor.monitor!r}): no validation check has "
                    "reported it after a full epoch (is there a validation loop?); nothing grows "
                    "until one does."
                )
            return Quota()
        self.monitor.fresh = False
        return Quota(
            {n: max(1, math.ceil(MONITOR_GROWTH_SHARE * w)) for n, w in self.widths.items()}
        )

    def _plan_quota(self: GrowthCallback, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> Any:
        """:func:`plan_quota` in a quota mode, else ``None`` (the caller plans as usual)."""
        quota = self._quota(trainer)
        if quota is None:
            return None
        return plan_quota(*args[:3], self.config, quota, **kwargs)

    def _stop_if_done(self: GrowthCallback, trainer: pl.Trainer) -> None:
        """After a decision (every rank, same widths): stop once the target is reached."""
        if self.target is None or self.schedule is None:
            return
        smallest = min((parameters_per_neuron(p) for p in self._growing), default=1)
        if self.target.reached(self.widths, self.total_parameters, smallest):
            self.schedule.stop_step = trainer.global_step

    def on_validation_end(self: GrowthCallback, trainer: pl.Trainer, pl_module: Any) -> None:
        if self.monitor is None or trainer.sanity_checking or self.monitor.stopped:
            return
        value = trainer.callback_metrics.get(self.monitor.monitor)
        value = trainer.strategy.broadcast(None if value is None else float(value), src=0)
        if value is None:
            if not self.monitor.warned:
                self.monitor.warned = True
                rank_zero_warn(
                    f"GrowthCallback(monitor={self.monitor.monitor!r}): the metric is not logged "
                    f"(logged: {sorted(trainer.callback_metrics)}); growth waits for it and "
                    "nothing grows until it appears."
                )
            return
        self.monitor.update(value)
        if self.monitor.stopped and self.schedule is not None:
            self.schedule.stop_step = trainer.global_step

    def _modes_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.target is not None:
            state["target"] = self.target.state_dict()
        if self.monitor is not None:
            state["monitor"] = self.monitor.state_dict()
        return state

    def _load_modes_state(self, state: Mapping[str, Any]) -> None:
        if self.target is not None and "target" in state:
            self.target.load_state_dict(state["target"])
        if self.monitor is not None and "monitor" in state:
            self.monitor.load_state_dict(state["monitor"])
