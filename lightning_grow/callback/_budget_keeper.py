"""Keeping growth inside its compute and memory budget, for the callback (no Lightning here).

:class:`BudgetKeeper` does three things, all decided on rank 0 and shared by broadcast so that
every rank follows the same schedule:

1. **Admission.** Pairs whose decision would need more memory than ``memory_budget`` are left
   out of growth, with a warning that names them, their size and the fix.
2. **Calibration and planning.** During the first training batch it records the spatial and
   sequence sizes each pair sees and times the training step, measures the device's GEMM
   throughput once, and plans the statistics windows (``budget.plan_statistics``):
   which pairs collect together, for how long, on how many images and positions.
3. **Pacing.** After each decision, an :class:`~._overhead.OverheadAccount` compares the
   time growth has added (statistics batches' extra time and whole decisions, measured on the
   batch clock) with the time spent training and, when growth is ahead of its budget, makes the
   next window wait until training has caught up. An explicit share paces every network, a
   small MLP whose cost is hook overhead as much as a ResNet whose cost is FLOPs; ``"auto"``
   paces only networks whose statistics are subsampled. The schedule then depends on
   timings, which ``compute_budget=None`` avoids (bitwise reproducible growth).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_grow.callback._overhead import OverheadAccount
from lightning_grow.decision.budget import (
    PairCost,
    StatisticsPlan,
    gemm_throughput,
    pair_cost,
    pair_memory,
    plan_statistics,
)
from lightning_grow.topology.pairs import GrowablePair

__all__ = ["AUTO_COMPUTE_BUDGET", "BudgetKeeper", "default_memory_budget"]

_MiB = 2**20
AUTO_COMPUTE_BUDGET = 0.1
"""The share of ``compute_budget="auto"`` (for networks whose statistics are subsampled)."""
_SLOWEST_THROUGHPUT = 1e9  # FLOP/s: one slow CPU core's float32 matrix product


def default_memory_budget(device: torch.device) -> int:
    """Bytes one pair's decision may use: an eighth of the device's memory (RAM on the CPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 8
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 16 * 2**30
    return int(total) // 8


def _megabytes(count: int) -> str:
    return f"{count / _MiB:,.0f} MiB"


class BudgetKeeper:
    """Admission, statistics plan and pacing of one fit (see module docstring).

    Parameters
    ----------
    compute_budget
        Share of the training time growth may add (``None``: no limit; statistics use every
        sample and every pair collects in every window, as without a budget).
    memory_budget
        Bytes one pair's decision may use (``None``: no limit; ``"auto"``:
        :func:`default_memory_budget`).
    """

    def __init__(self, compute_budget: float | str | None, memory_budget: int | str | None) -> None:
        # "auto" paces only networks whose statistics are subsampled: on a small network,
        # pacing its millisecond decisions to 10 % of a millisecond step starves growth (digits
        # MLP: 0.962 -> 0.933 accuracy, widths [20, 17] -> [11, 9]); an explicit share is kept
        # for every network.
        self.pace_every_network = compute_budget != "auto"
        self.compute_budget = AUTO_COMPUTE_BUDGET if compute_budget == "auto" else compute_budget
        self.memory_budget = memory_budget
        self.memory: dict[str, tuple[int, int]] = {}
        self._rows: dict[str, int] = {}
        self._positions: dict[str, int] = {}
        self._handles: list[Any] = []
        self._batch_starts: list[float] = []
        self.step_seconds = math.nan
        self.account = None if self.compute_budget is None else OverheadAccount(self.compute_budget)
        self._restored = False
        self._warned_paced_out = False
        self.throughput = math.nan
        self._costs: list[PairCost] = []
        self._plan_options: dict[str, Any] = {}

    # ------------------------------------------------------------------ admission
    def admit(
        self, pairs: Sequence[GrowablePair], device: torch.device, warn: bool
    ) -> list[GrowablePair]:
        """The pairs whose decision fits the memory budget; warn about the others."""
        budget = self.memory_budget
        if budget == "auto":
            budget = default_memory_budget(device)
        admitted = []
        for pair in pairs:
            self.memory[pair.name] = pair_memory(pair.geometry())
            needed = self.memory[pair.name][1]
            if budget is not None and needed > int(budget):
                if warn:
                    warnings.warn(
                        f"GrowthCallback: pair {pair.name} is left out of growth: its decision "
                        f"needs about {_megabytes(needed)}, above the memory budget of "
                        f"{_megabytes(int(budget))} (d_x = {pair.geometry().d_x}). Raise "
                        "memory_budget= to grow it; the other pairs grow.",
                        stacklevel=2,
                    )
                continue
            admitted.append(pair)
        return admitted

    # ------------------------------------------------------------------ calibration
    def start(self, pairs: Sequence[GrowablePair]) -> None:
        """Hook the pairs to record the sizes they see during the calibration batches."""
        self.stop()
        self._batch_starts = []
        for pair in pairs:
            self._handles.append(pair.second.register_forward_hook(self._recorder(pair)))

    def _recorder(self, pair: GrowablePair) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple, output: Any) -> None:
            if not isinstance(output, Tensor) or output.dim() < 2:
                return
            if pair.second_handler.spatial:
                spatial = output.shape[-(pair.second_handler.unbatched_dims - 1) :]
                self._positions[pair.name] = math.prod(spatial)  # (H, W), a Conv1d's (L,)
            elif output.dim() > 2:  # a sequence: every leading position is a row
                self._rows[pair.name] = output.numel() // (output.shape[0] * output.shape[-1])

        return record

    def stop(self) -> None:
        """Remove the calibration hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def observe_batch_start(self) -> None:
        """Time the training batches before the plan: the step time is the last interval.

        The first batch's interval includes one-off warm-up, so it overstates the step a
        little (more generous budget); on the CPU, measured windows correct it
        (:meth:`recalibrate`).
        """
        self._batch_starts.append(time.perf_counter())
        if len(self._batch_starts) >= 2 and not self._restored:
            self.step_seconds = self._batch_starts[-1] - self._batch_starts[-2]
            self.stop()

    # ------------------------------------------------------------------ planning
    def plan(
        self,
        pairs: Sequence[GrowablePair],
        window_samples: Callable[[GrowablePair], int],
        *,
        batch_size: int,
        world_size: int,
        max_window_steps: int | None,
        device: torch.device,
    ) -> StatisticsPlan:
        """The statistics plan (compute it on rank 0 and broadcast it)."""
        costs: list[PairCost] = [
            pair_cost(
                pair.name,
                pair.geometry(),
                rows_per_image=self._rows.get(pair.name, 1),
                output_positions=self._positions.get(pair.name, 1),
                window_samples=window_samples(pair),
            )
            for pair in pairs
        ]
        budget = self.compute_budget
        every_sample = sum(batch_size * c.samples_per_image * c.flops_per_sample for c in costs)
        if budget is None:
            self.throughput = 1.0
        elif every_sample <= budget / 2 * self.step_seconds * _SLOWEST_THROUGHPUT:
            # Every sample fits even on the slowest device: measuring (tens of ms on a CPU,
            # a few % of a small network's whole fit) would not change the plan.
            self.throughput = _SLOWEST_THROUGHPUT
        else:
            self.throughput = gemm_throughput(device)
        self._costs = costs
        self._plan_options = {
            "batch_size": batch_size,
            "world_size": world_size,
            "max_window_steps": max_window_steps,
        }
        return self._plan_now()

    def _plan_now(self) -> StatisticsPlan:
        budget = self.compute_budget
        # Open windows may spend half the budget; the account pauses growth for the rest.
        return plan_statistics(
            self._costs,
            step_seconds=self.step_seconds if budget is not None else 1.0,
            flops_per_second=self.throughput,
            budget=None if budget is None else budget / 2,
            **self._plan_options,
        )

    def recalibrate(
        self, plan: StatisticsPlan, group: int, measured_seconds: float, device: torch.device
    ) -> StatisticsPlan | None:
        """A new plan when a window's statistics missed the budget by far, else ``None``.

        The GEMM throughput of the cost model is a single product's; hooks, gathers and small
        products make real windows slower (or larger products faster). When a subsampled
        window's measured statistics time is over 1.5× its share of the step, or under 1/1.5 of
        it, the throughput is corrected by the measured-to-planned ratio and the windows are
        planned again. Only on the CPU: on accelerators the hooks time kernel launches.
        """
        if self.compute_budget is None or device.type != "cpu" or not self._costs:
            return None
        steps = plan.window_steps[group]
        planned, measured = plan.seconds_per_step[group], measured_seconds / max(steps, 1)
        allowed = self.compute_budget / 2 * self.step_seconds
        if planned <= 0 or measured <= 0:
            return None
        subsampled = plan.subsampled(plan.groups[group])
        # A window that gathers everything is left alone: there the time is hook overhead per
        # batch (small networks), which drawing fewer images would not reduce, only blind.
        if not subsampled or allowed / 1.5 < measured < 1.5 * allowed:
            return None
        ratio = measured / planned
        self.throughput /= ratio
        return self._plan_now()

    @property
    def costs(self) -> list[PairCost]:
        """The cost model of every planned pair (empty before the plan)."""
        return list(self._costs)

    def describe(self, plan: StatisticsPlan) -> str:
        """A table of the plan and the memory of every pair, for the console."""
        lines = [
            "GrowthCallback statistics plan"
            + (
                ""
                if self.compute_budget is None
                else f" (budget {self.compute_budget:.0%} of a {self.step_seconds * 1e3:.0f} ms "
                "training step)"
            ),
            f"{'pair':<40} {'group':>5} {'window':>7} {'images':>7} {'positions':>9} "
            f"{'buffers':>10} {'decision':>10}",
        ]
        for index, (group, steps) in enumerate(zip(plan.groups, plan.window_steps)):
            for name in group:
                sampling = plan.sampling[name]
                stats_bytes, decision_bytes = self.memory.get(name, (0, 0))
                lines.append(
                    f"{name:<40} {index:>5} {steps:>7} "
                    f"{sampling.images_per_batch or 'all':>7} {sampling.positions or 'all':>9} "
                    f"{_megabytes(stats_bytes):>10} {_megabytes(decision_bytes):>10}"
                )
        return "\n".join(lines)

    # ------------------------------------------------------------------ pacing
    def batch_started(self, collecting: bool) -> None:
        """Clock a training batch (``collecting``: it runs the statistics hooks)."""
        if self.account is not None:
            self.account.batch_started(collecting)

    def decided(self, seconds: float) -> None:
        """Charge ``seconds`` of decision work (solves, searches, surgery) to growth."""
        if self.account is not None:
            self.account.decided(seconds)

    def pacing_wait(self, accumulate: int, subsampled: bool) -> int:
        """Optimizer steps the next window should wait so that growth stays within budget.

        ``subsampled``: whether the decided group's statistics were subsampled (an expensive
        network); under ``compute_budget="auto"`` only those are paced.
        """
        if self.account is None or not (subsampled or self.pace_every_network):
            return 0
        return math.ceil(self.account.pause_batches(self.step_seconds) / accumulate)

    def warn_if_paced_out(self, step: int, wait: int, stop: int | None) -> None:
        """Say so (once, on the deciding rank) when a pause outlasts the growth period."""
        if self._warned_paced_out or stop is None or wait <= 0 or step + wait < stop:
            return
        self._warned_paced_out = True
        added = self.account.added_seconds if self.account is not None else 0.0
        warnings.warn(
            f"GrowthCallback: growth has added {added:.2f} s so far, and compute_budget="
            f"{self.compute_budget:g} now pauses it for {wait} steps, past the end of the growth "
            f"period (step {stop}): no further decision will be made. Raise compute_budget, or "
            "pass compute_budget=None to let growth decide at every window.",
            stacklevel=2,
        )

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, float]:
        """The calibration and the pacing account, so that a resumed fit continues them."""
        account = {} if self.account is None else self.account.state_dict()
        return {"step_seconds": self.step_seconds, **account}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Continue a calibrated fit (no new calibration batches)."""
        self.stop()
        self.step_seconds = float(state["step_seconds"])
        if self.account is not None:
            self.account.load_state_dict(state)
        self._restored = True
