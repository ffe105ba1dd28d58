"""What rank 0 decides at a decision, as a payload every rank applies alike.

A mixin of :class:`~lightning_grow.GrowthCallback` (split out to keep each file readable): the
held batches (split into a half that chooses the amplitudes and a half that confirms them when
the error rate is spent), the growth plan (TINY's significance test, or the target or monitor
quota), and the payload that the callback broadcasts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lightning.pytorch as pl

from lightning_grow.callback._held import HeldOut
from lightning_grow.callback._lightning import default_loss, quiet_evaluation
from lightning_grow.callback._transport import DecisionPayload, to_payload
from lightning_grow.decision.planner import Solved, plan_growth
from lightning_grow.reporting.events import warn_no_samples
from lightning_grow.statistics.accumulator import LazyMoments

if TYPE_CHECKING:
    from lightning_grow.callback.growth import GrowthCallback

__all__ = ["PlanningMixin"]


class PlanningMixin:
    """Rank 0's decision of :class:`~lightning_grow.GrowthCallback`."""

    def _plan(
        self: GrowthCallback,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        statistics_seconds: float,
        solved: Solved | None,
    ) -> DecisionPayload:
        assert self.schedule is not None
        # A window whose batches all had non-finite gradients (e.g. early fp16 AMP steps) has no
        # samples: such pairs sit this decision out.
        serving = self._serving()
        moments = LazyMoments({name: self._statistics[name] for name in serving})
        self._warned_no_samples = self._warned_no_samples or warn_no_samples(
            {name: self._statistics[name] for name in serving}
        )
        # Confirming on samples that chose the amplitude is biased on noise (the best of ~10
        # trials lowers their loss by chance): a confirming half takes no part in the choice.
        margin = self.config.confirm_margin
        split = self.confirm_held_out and (self.spending is not None or margin is not None)
        held = HeldOut(pl_module, self._held, self.loss_fn or default_loss, split)
        confirm = None if not split else held.confirm_chunks() if margin else held.confirm
        with quiet_evaluation(pl_module):
            arguments = ([p for p in self._growing if p.name in serving], moments, held.choose)
            common = {"total_parameters": self.total_parameters, "step": trainer.global_step}
            common |= {"epoch": trainer.current_epoch, "decision_index": self.schedule.decisions}
            common |= {"statistics_seconds": statistics_seconds, "solved": solved}
            planned, events, any_significant = self._plan_quota(
                trainer, *arguments, **common
            ) or plan_growth(*arguments, self.config, **common, confirm=confirm)
        for event in events:
            event.training_step_calls = held.calls
        return DecisionPayload(
            growth=[to_payload(item) for item in planned],
            events=[event.to_dict() for event in events],
            any_significant=any_significant,
        )
