"""The growth schedule of :class:`~lightning_grow.GrowthCallback` and what a checkpoint keeps.

A mixin of the callback (split out to keep each file readable): building the schedule and the
statistics plan at the first batch after calibration, the stop step, and the callback's
``state_dict`` (history, the in-flight window, the plan and the budget's account) with its
restoration on resume.
"""

from __future__ import annotations

import math
import zlib
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.data import extract_batch_size

from lightning_grow.callback._lightning import refresh_compiled
from lightning_grow.decision.budget import StatisticsPlan
from lightning_grow.decision.policy import GrowthSchedule
from lightning_grow.reporting.events import GrowthEvent
from lightning_grow.statistics.accumulator import PairStatistics
from lightning_grow.surgery.checkpoint import in_flight_state
from lightning_grow.topology.facts import moment_dimension
from lightning_grow.topology.pairs import GrowablePair

if TYPE_CHECKING:
    from lightning_grow.callback.growth import GrowthCallback

__all__ = ["GrowthStateMixin"]


class GrowthStateMixin:
    """Schedule building and checkpoint state of :class:`~lightning_grow.GrowthCallback`."""

    def _build_schedule(self: GrowthCallback, trainer: pl.Trainer, batch: Any) -> GrowthSchedule:
        """The schedule, at the first batch; its windows' length comes with the plan.

        With a compute budget the first batch is timed (its statistics are deferred) and the
        plan is made at the second (:meth:`_plan_statistics`), so that the first window still
        starts at the first batch, as without a budget.
        """
        # The batch size of rank 0 sets the window length so all ranks agree on the schedule.
        local_batch = extract_batch_size(batch)
        self._batch_size = int(trainer.strategy.broadcast(local_batch, src=0))
        accumulate = self._accumulate = trainer.accumulate_grad_batches
        hold_steps = math.ceil(self.held_samples / (self._batch_size * accumulate))
        schedule = self.schedule = GrowthSchedule(
            warmup_steps=self.warmup_steps,
            window_steps=1,
            hold_steps=max(hold_steps, 1),
            cooldown_steps=self.cooldown_steps,
            stop_step=self._stop_step(trainer),
            patience=self.patience,
        )
        restored = self._pending_state is not None
        if restored:
            self._restore_in_flight(schedule, self._pending_state, trainer.is_global_zero)
            self._pending_state = None
        self.budget.observe_batch_start()
        if self.plan is not None or self.budget.compute_budget is None:
            self._plan_statistics(trainer, warn=not restored)
        return schedule

    def _plan_statistics(self: GrowthCallback, trainer: pl.Trainer, warn: bool = True) -> None:
        """Plan the statistics on rank 0 (or keep a restored plan), share it, start following it."""
        assert self.schedule is not None
        stop_step = self.schedule.stop_step
        plan = self.plan
        if plan is None:
            self.budget.observe_batch_start()
        if trainer.is_global_zero and plan is None:
            growth_steps = None if stop_step is None else stop_step - trainer.global_step
            plan = self.budget.plan(
                self._growing,
                lambda pair: self.statistics_samples or max(512, 2 * moment_dimension(pair)),
                batch_size=self._batch_size,
                world_size=trainer.world_size,
                # Every group should get several turns before growth stops.
                max_window_steps=None if not growth_steps else max(1, growth_steps // 8),
                device=self._growing[0].first.weight.device,
            )
            if self.verbose:
                rank_zero_info(self.budget.describe(plan))
        self._follow_plan(
            StatisticsPlan.from_dict(
                trainer.strategy.broadcast(plan.to_dict() if plan else None, src=0)
            )
        )
        self._group %= len(self.plan.groups)
        serving = set(self._serving())
        for name, statistics in self._statistics.items():
            if name in serving:
                statistics.flush()  # the deferred first batch, now with the planned sampling
            elif statistics.is_open:
                statistics.close()  # another group's turn comes later
        self.schedule.window_steps = max(
            1, math.ceil(self.plan.window_steps[self._group] / self._accumulate)
        )
        left = None if stop_step is None else stop_step - trainer.global_step
        if warn and trainer.is_global_zero and left is not None and left > 0:
            hold = self.schedule.hold_steps
            _warn_if_undecidable(self.plan, left, self._accumulate, hold)

    def _next_windows(
        self: GrowthCallback,
        trainer: pl.Trainer,
        geometries: dict[str, Any],
        events: list[GrowthEvent],
    ) -> bool:
        """Start each pair's next statistics window; return whether any window is extended.

        A pair that did not grow and whose shapes did not change keeps its statistics and adds
        the next window's samples to them (up to ``max_window_extensions`` windows): "not
        significant with n samples" calls for more samples, not for giving up. A pair that grew,
        or whose neighbour's growth changed its shapes, starts afresh.
        """
        accepted = {event.pair for event in events if event.accepted}
        decided = {event.pair for event in events}
        extending = False
        for pair in self._growing:
            name = pair.name
            statistics = self._statistics[name]
            if pair.geometry() != geometries[name]:
                statistics.remove()
                self._statistics[name] = self._new_statistics(pair)
                self._extensions[name] = 0
            elif name not in decided:
                continue  # another group's window: untouched until its turn
            elif name not in accepted and self._extensions[name] < self.max_window_extensions:
                self._extensions[name] += 1
                extending = True
                if not trainer.is_global_zero:
                    # After the reduction every rank holds the global sums: only rank 0 keeps
                    # them, so the next reduction counts every sample once.
                    statistics.reset()
            else:
                statistics.reset()
                self._extensions[name] = 0
        return extending

    def _new_statistics(self: GrowthCallback, pair: GrowablePair) -> PairStatistics:
        sampling = self.plan.sampling[pair.name] if self.plan is not None else None
        return PairStatistics(
            pair,
            loss_reduction=self.loss_reduction,
            images_per_batch=sampling.images_per_batch if sampling else None,
            positions=sampling.positions if sampling else None,
            # crc32, not hash(): str hashes change from process to process.
            seed=self.config.seed + 7919 * len(self.history) + zlib.crc32(pair.name.encode()),
        )

    def _close_statistics(self: GrowthCallback) -> None:
        for statistics in self._statistics.values():
            if statistics.is_open:
                statistics.close()

    def _remove_statistics(self: GrowthCallback) -> None:
        for statistics in self._statistics.values():
            statistics.remove()
        if self._statistics:  # growth stopped: compiled code without the hooks' graph breaks
            refresh_compiled(self._statistics)
        self._statistics = {}

    def _follow_plan(self: GrowthCallback, plan: StatisticsPlan) -> None:
        """Adopt a recalibrated plan: open windows keep their sums (per-image averages)."""
        self.plan = plan
        for name, statistics in self._statistics.items():
            sampling = plan.sampling[name]
            statistics.images_per_batch = sampling.images_per_batch
            statistics.positions = sampling.positions

    def _serving(self: GrowthCallback) -> list[str]:
        """Names of the pairs whose statistics window is the current one (all of them while
        the first batch is timed, before the plan)."""
        if self.plan is None:
            return [pair.name for pair in self._growing]
        return self.plan.groups[self._group % len(self.plan.groups)]

    def _next_group(self: GrowthCallback) -> None:
        """Serve the next group of pairs; its window has its own length."""
        assert self.plan is not None and self.schedule is not None
        self._group = (self._group + 1) % len(self.plan.groups)
        steps = self.plan.window_steps[self._group]
        self.schedule.window_steps = max(1, math.ceil(steps / self._accumulate))

    def _stop_step(self: GrowthCallback, trainer: pl.Trainer) -> int | None:
        if self.monitor is not None and self.monitor.stopped:
            return 0  # resumed after the monitored metric stopped growth
        if self.target is not None:
            return self._target_stop_step(trainer)
        stops: list[int] = []
        if self.stop_step is not None:
            stops.append(self.stop_step)
        total = trainer.estimated_stepping_batches
        if self.stop_fraction is not None and math.isfinite(total):
            stops.append(int(self.stop_fraction * total))
        if self.stop_epoch is not None:
            batches = trainer.num_training_batches
            if math.isfinite(batches):
                steps_per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
                stops.append(int(self.stop_epoch * steps_per_epoch))
        return min(stops) if stops else None

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self: GrowthCallback) -> dict[str, Any]:
        state: dict[str, Any] = {
            "history": [event.to_dict() for event in self.history],
            "initial_widths": dict(self.initial_widths),
            "timings": dict(self.timings),
        } | self._modes_state()
        if self.spending is not None:
            state["spending"] = self.spending.state_dict()
        if self.schedule is not None:
            state["schedule"] = self.schedule.state_dict()
            # An interrupted window resumes where it was (rank 0's partial sums under DDP); after
            # fit, the window and held batches as fit ended.
            kept = None if self._statistics else self._kept_in_flight
            state.update(kept or in_flight_state(self._statistics, self._held))
            state["extensions"] = dict(self._extensions)
            state["group"] = self._group
            if self.plan is not None:
                state["plan"] = self.plan.to_dict()
                state["budget"] = self.budget.state_dict()
        return state

    def _keep_in_flight(self: GrowthCallback) -> None:
        if self._statistics:
            self._kept_in_flight = in_flight_state(self._statistics, self._held)

    def load_state_dict(self: GrowthCallback, state_dict: dict[str, Any]) -> None:
        self.history = [GrowthEvent.from_dict(record) for record in state_dict["history"]]
        self.initial_widths = dict(state_dict["initial_widths"])
        self.timings.update(state_dict.get("timings", {}))
        self._load_modes_state(state_dict)
        if self.spending is not None:
            self.spending.load_state_dict(state_dict.get("spending", {}))
        if "schedule" in state_dict:
            self._pending_state = state_dict
            self.schedule = None

    def _restore_in_flight(
        self: GrowthCallback, schedule: GrowthSchedule, state: dict[str, Any], is_global_zero: bool
    ) -> None:
        schedule.load_state_dict(state["schedule"])
        self._extensions.update(state.get("extensions", {}))
        self._group = int(state.get("group", 0)) % len(self.plan.groups) if self.plan else 0
        # Saved sums are rank 0's (global after a reduction): the other ranks start empty so the
        # next reduction counts every sample once.
        for name, sums in state.get("statistics", {}).items() if is_global_zero else ():
            if name in self._statistics:
                device = next(iter(self._statistics[name].pair.first.parameters())).device
                self._statistics[name].load_flat_sums(sums.to(device))
        device = self.pairs[0].first.weight.device if self.pairs else "cpu"
        self._held = [move_data_to_device(batch, device) for batch in state.get("held", [])]


def _warn_if_undecidable(
    plan: StatisticsPlan, growth_steps: int, accumulate: int, hold_steps: int
) -> None:
    """Say on rank 0 which pairs cannot be decided before growth stops, with the numbers."""
    elapsed, late = 0, []
    for group, batches in zip(plan.groups, plan.window_steps):
        elapsed += math.ceil(batches / accumulate) + hold_steps
        if elapsed > growth_steps:
            late.extend(group)
    if not late:
        return
    first = math.ceil(plan.window_steps[0] / accumulate) + hold_steps
    rank_zero_warn(
        f"GrowthCallback: {len(late)} of {sum(map(len, plan.groups))} pairs cannot be decided "
        f"before growth stops in {growth_steps} optimizer steps (the first window and its held "
        f"batches need {first} steps; all windows in turn {elapsed}): "
        f"{', '.join(late[:4])}{' …' if len(late) > 4 else ''}. Train longer or grow for "
        "longer (stop_fraction), raise compute_budget, or lower statistics_samples."
    )
