"""Growth events to every attached Lightning logger, W&B extras and the console.

:class:`GrowthReporter` is owned by :class:`~lightning_grow.callback.growth.GrowthCallback`, which
calls it at fit start, once per decision step and at fit end. The single source of what is reported
is the :class:`~lightning_grow.reporting.events.GrowthEvent` record.

What goes where
---------------
Every logger in ``trainer.loggers`` (CSV, TensorBoard, W&B, MLflow ...) receives the same scalar
metrics at ``trainer.global_step`` (``<k>`` is the pair's metric name, see
:class:`PairMetricNames`):

* ``growth/width/<k>``: hidden width of every pair;
* ``growth/total_parameters``: parameters of the whole network;
* ``growth/decisions``, ``growth/accepted_events``, ``growth/neurons_added``: cumulative counts;
* ``growth/gain/<k>``, ``growth/bottleneck/<k>``: expressivity gain and bottleneck fraction of
  every pair considered at the decision (accepted or not);
* ``growth/time/<phase>``: cumulative seconds per phase (statistics, solve, search, surgery).

With a :class:`~lightning.pytorch.loggers.WandbLogger` attached, rank 0 also logs an incremental
``growth/events`` table (one row per event, columns of :meth:`GrowthEvent.to_dict`), a
``growth/width_chart`` line chart of every pair's width over steps, and the final architecture in
the run summary (``growth/final_architecture``).
"""

from __future__ import annotations

import re
import sys
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn

from lightning_grow.reporting.console import (
    architecture_rows,
    format_event_line,
    print_architecture,
    write_line,
)
from lightning_grow.reporting.events import GrowthEvent, TimingPhase

if TYPE_CHECKING:
    import lightning.pytorch as pl

__all__ = [
    "EVENTS_TABLE_KEY",
    "METRIC_PREFIX",
    "PHASES",
    "WIDTH_CHART_KEY",
    "GrowthReporter",
    "PairMetricNames",
    "event_table_columns",
    "sanitize_metric_name",
]

METRIC_PREFIX = "growth"
EVENTS_TABLE_KEY = f"{METRIC_PREFIX}/events"
WIDTH_CHART_KEY = f"{METRIC_PREFIX}/width_chart"
PHASES = TimingPhase.values()
"""Timing phases that always get a table column, in this order (others are appended)."""

# The intersection of what CSV headers, TensorBoard tags, W&B keys and MLflow metric names
# (alphanumerics, "_", "-", ".", "/", " ") accept; spaces are dropped too, for shell-friendliness.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-/]+")


def sanitize_metric_name(name: str) -> str:
    """``name`` with every run of characters that some logger rejects replaced by ``_``."""
    return _UNSAFE.sub("_", name.strip()).strip("_") or "_"


class PairMetricNames:
    """Stable, logger-safe metric names for pair names such as ``"layer1.0.conv1 -> ...conv2"``.

    A pair is named after its ``first`` layer (``layer1.0.conv1``): the hidden output of
    ``first`` is read by ``second`` only, so a layer is ``first`` of at most one pair. A name
    already taken by another pair (user-declared pairs may break that rule) falls back to
    ``<first>--<second>``, then to a numbered suffix. Names are assigned on first sight and never
    change, so a metric keeps its curve for the whole run.
    """

    def __init__(self, pairs: Iterable[str] = ()) -> None:
        self._names: dict[str, str] = {}
        for pair in pairs:
            self.register(pair)

    def register(self, pair: str) -> str:
        """The metric name of ``pair``, assigning one on first sight."""
        if pair not in self._names:
            first, _, second = pair.partition("->")
            candidates = [sanitize_metric_name(first)]
            if second:
                candidates.append(sanitize_metric_name(f"{first.strip()}--{second.strip()}"))
            taken = set(self._names.values())
            free = [candidate for candidate in candidates if candidate not in taken]
            suffix = 2
            while not free:
                numbered = f"{candidates[-1]}_{suffix}"
                free = [numbered] if numbered not in taken else []
                suffix += 1
            self._names[pair] = free[0]
        return self._names[pair]

    __getitem__ = register

    def as_dict(self) -> dict[str, str]:
        """Pair name → metric name for every pair seen so far."""
        return dict(self._names)


_EVENT_FIELDS = [f.name for f in fields(GrowthEvent) if f.name != "timings"]
_EVENT_TYPES = typing.get_type_hints(GrowthEvent)


def event_table_columns(events: Iterable[GrowthEvent] = ()) -> list[str]:
    """Columns of the W&B events table: :meth:`GrowthEvent.to_dict` keys, timings last.

    The ``time_<phase>`` columns are those of :data:`PHASES` followed by any other phase found in
    ``events`` (an incremental table cannot gain columns later).
    """
    phases = list(PHASES)
    for event in events:
        phases += [phase for phase in event.timings if phase not in phases]
    return _EVENT_FIELDS + [f"time_{phase}" for phase in phases]


def _table_row(event: GrowthEvent, columns: Sequence[str]) -> list[Any]:
    # Plain Python scalars of one fixed type per column: W&B infers column types from the first
    # row and rejects a later row whose float column holds, say, a numpy scalar or an int.
    record = event.to_dict()
    row: list[Any] = []
    for column in columns:
        value = record.get(column)
        kind = _EVENT_TYPES.get(column, float)
        row.append(None if value is None else kind(value))
    return row


def _warn_if_media_misplaced(logger: WandbLogger) -> None:
    """Warn when W&B will write media files outside the logger's ``save_dir``.

    Under ``ddp_spawn`` the worker re-attaches to the run the main process created, and wandb
    0.30 rebuilds the attached run's settings from the environment: its files (growth tables,
    charts) land under ``WANDB_DIR`` or the working directory instead of ``save_dir``.
    """
    settings = getattr(logger.experiment, "settings", None)
    root = getattr(settings, "root_dir", None)
    if not logger.save_dir or not root or Path(root).resolve() == Path(logger.save_dir).resolve():
        return
    rank_zero_warn(
        f"W&B writes this run's media files (growth tables and charts) under {root}, not under "
        f"the WandbLogger save_dir {logger.save_dir} (a run re-attached in a spawned process "
        f"takes its directory from the environment). Set WANDB_DIR={logger.save_dir} to keep "
        "them together."
    )


class GrowthReporter:
    """Reports growth to every Lightning logger, to W&B (tables, chart, summary) and the console.

    Parameters
    ----------
    verbose
        Print one line per accepted event and a final-architecture table (rank 0 only).
    wandb_tables
        With a ``WandbLogger`` attached, also log the incremental events table and the width chart
        (the scalar metrics and the run summary are written regardless).
    stream
        Console destination; ``None`` writes to standard output without breaking tqdm bars.

    Notes
    -----
    Call order: :meth:`on_fit_start`, then :meth:`on_decision` once per decision step on every
    rank, then :meth:`on_fit_end`. Metrics go through ``logger.log_metrics``, which Lightning's
    loggers guard to rank 0; console output and direct W&B calls are made on rank 0 only.
    """

    def __init__(
        self, verbose: bool = True, wandb_tables: bool = True, stream: TextIO | None = None
    ) -> None:
        self.verbose = verbose
        self.wandb_tables = wandb_tables
        self.stream = stream
        self.metric_names = PairMetricNames()
        self.decisions = 0
        self.accepted_events = 0
        self.neurons_added = 0
        self.phase_seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self.width_history: list[tuple[int, dict[str, int]]] = []
        self._tables: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles callbacks into the workers: live W&B tables belong to one process,
        # and the standard streams cannot be pickled but exist under the same name there.
        state = self.__dict__.copy()
        state["_tables"] = {}
        for name in ("stdout", "stderr"):
            if self.stream is getattr(sys, name):
                state["stream"] = f"<sys.{name}>"
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name in ("stdout", "stderr"):
            if state.get("stream") == f"<sys.{name}>":
                state["stream"] = getattr(sys, name)
        self.__dict__.update(state)

    # ------------------------------------------------------------------ hooks
    def on_fit_start(
        self,
        trainer: pl.Trainer,
        widths: Mapping[str, int],
        total_parameters: int,
        history: Sequence[GrowthEvent] = (),
    ) -> None:
        """Log the starting architecture so that every curve begins at the current step.

        Parameters
        ----------
        trainer
            The running trainer.
        widths
            Hidden width of every pair, by pair name.
        total_parameters
            Parameters of the whole network.
        history
            Events of earlier fits (a resumed run): cumulative counters and the width chart
            continue from them instead of restarting at zero.
        """
        # Widths first, as in the original run, so a resumed run names its metrics the same.
        for pair in widths:
            self.metric_names.register(pair)
        self._restore(history, widths)
        self.width_history.append((trainer.global_step, dict(widths)))
        self._log_metrics(trainer, self._state_metrics(widths, total_parameters))
        for logger in trainer.loggers if trainer.is_global_zero else []:
            if isinstance(logger, WandbLogger):
                _warn_if_media_misplaced(logger)
        for run in self._wandb_runs(trainer):
            # Growth curves share the trainer's step axis whatever the logger's defaults are.
            run.define_metric("trainer/global_step")
            run.define_metric(f"{METRIC_PREFIX}/*", step_metric="trainer/global_step")

    def on_decision(
        self,
        trainer: pl.Trainer,
        events: Sequence[GrowthEvent],
        widths: Mapping[str, int],
        total_parameters: int,
    ) -> None:
        """Report one decision step.

        Parameters
        ----------
        trainer
            The running trainer (metrics are logged at ``trainer.global_step``).
        events
            One event per pair considered at this step, accepted or not.
        widths
            Hidden width of every pair after the decision.
        total_parameters
            Parameters of the whole network after the decision.
        """
        self.decisions += 1
        self._count(events)
        self.width_history.append((trainer.global_step, dict(widths)))
        metrics = self._state_metrics(widths, total_parameters)
        for event in events:
            name = self.metric_names[event.pair]
            metrics[f"{METRIC_PREFIX}/gain/{name}"] = float(event.expressivity_gain)
            metrics[f"{METRIC_PREFIX}/bottleneck/{name}"] = float(event.bottleneck_fraction)
        self._log_metrics(trainer, metrics)
        if self.wandb_tables:
            for index, run in enumerate(self._wandb_runs(trainer)):
                self._log_wandb_extras(run, index, events, trainer.global_step)
        if self.verbose and trainer.is_global_zero:
            for event in events:
                if event.accepted:
                    write_line(format_event_line(event), self.stream)

    def on_fit_end(
        self,
        trainer: pl.Trainer,
        initial_widths: Mapping[str, int],
        widths: Mapping[str, int],
        parameters_per_pair: Mapping[str, int],
        total_parameters: int,
    ) -> None:
        """Print the final architecture and store it in the W&B run summary.

        Parameters
        ----------
        trainer
            The trainer that just finished fitting.
        initial_widths, widths
            Hidden width of every pair when growth started and now.
        parameters_per_pair
            Parameters owned by each pair's layers (``first``, BatchNorm, ``second``).
        total_parameters
            Parameters of the whole network.
        """
        rows = architecture_rows(initial_widths, widths, parameters_per_pair)
        for run in self._wandb_runs(trainer):
            run.summary[f"{METRIC_PREFIX}/final_architecture"] = {
                row.pair: {
                    "initial_width": row.initial_width,
                    "final_width": row.final_width,
                    "neurons_added": row.neurons_added,
                    "parameters": row.parameters,
                }
                for row in rows
            }
            run.summary[f"{METRIC_PREFIX}/total_parameters"] = int(total_parameters)
            run.summary[f"{METRIC_PREFIX}/accepted_events"] = self.accepted_events
            run.summary[f"{METRIC_PREFIX}/neurons_added"] = self.neurons_added
        if self.verbose and trainer.is_global_zero:
            print_architecture(rows, int(total_parameters), self.stream)

    # ------------------------------------------------------------------ internals
    def _restore(self, history: Sequence[GrowthEvent], widths: Mapping[str, int]) -> None:
        self.decisions = self.accepted_events = self.neurons_added = 0
        self.phase_seconds = dict.fromkeys(PHASES, 0.0)
        self.width_history = []
        if not history:
            return
        # Width of every pair before its first event; pairs never considered kept their width.
        current = dict(widths)
        for event in reversed(history):
            current[event.pair] = event.width_before
        self.width_history.append((0, dict(current)))
        steps = sorted({event.step for event in history})
        for step in steps:
            at_step = [event for event in history if event.step == step]
            self.decisions += 1
            self._count(at_step)
            current.update({event.pair: event.width_after for event in at_step})
            self.width_history.append((step, dict(current)))
        for event in history:
            self.metric_names.register(event.pair)

    def _count(self, events: Iterable[GrowthEvent]) -> None:
        for event in events:
            if event.accepted:
                self.accepted_events += 1
                self.neurons_added += int(event.neurons_added)
            for phase, seconds in event.timings.items():
                self.phase_seconds[phase] = self.phase_seconds.get(phase, 0.0) + float(seconds)

    def _state_metrics(self, widths: Mapping[str, int], total_parameters: int) -> dict[str, float]:
        metrics: dict[str, float] = {
            f"{METRIC_PREFIX}/width/{self.metric_names[pair]}": int(width)
            for pair, width in widths.items()
        }
        metrics[f"{METRIC_PREFIX}/total_parameters"] = int(total_parameters)
        metrics[f"{METRIC_PREFIX}/decisions"] = self.decisions
        metrics[f"{METRIC_PREFIX}/accepted_events"] = self.accepted_events
        metrics[f"{METRIC_PREFIX}/neurons_added"] = self.neurons_added
        for phase, seconds in self.phase_seconds.items():
            metrics[f"{METRIC_PREFIX}/time/{sanitize_metric_name(phase)}"] = seconds
        return metrics

    @staticmethod
    def _log_metrics(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    @staticmethod
    def _wandb_runs(trainer: pl.Trainer) -> list[Any]:
        # ``WandbLogger.experiment`` is a dummy on other ranks, but guarding here also keeps
        # rank != 0 from ever touching wandb state (and from creating runs by accident).
        if not trainer.is_global_zero:
            return []
        return [logger.experiment for logger in trainer.loggers if isinstance(logger, WandbLogger)]

    def _log_wandb_extras(
        self, run: Any, index: int, events: Sequence[GrowthEvent], step: int
    ) -> None:
        import wandb

        if index not in self._tables:
            # INCREMENTAL: each log writes only the rows added since the previous one.
            self._tables[index] = wandb.Table(
                columns=event_table_columns(events), log_mode="INCREMENTAL"
            )
        table = self._tables[index]
        for event in events:
            table.add_data(*_table_row(event, table.columns))
        pairs = list(self.width_history[-1][1])
        steps = [entry_step for entry_step, _ in self.width_history]
        chart = wandb.plot.line_series(
            xs=steps,
            ys=[[widths.get(pair, 0) for _, widths in self.width_history] for pair in pairs],
            keys=pairs,
            title="Hidden width per pair",
            xname="trainer/global_step",
        )
        run.log({EVENTS_TABLE_KEY: table, WIDTH_CHART_KEY: chart, "trainer/global_step": step})
