"""The end-of-fit summary of the command line: how good the grown network is, what growth cost, and
where the logs, the checkpoint and the growth plot are.

Everything here is read from real state after ``trainer.fit``: ``trainer.callback_metrics`` (the
last validation, and the test run the CLI adds when asked), the
:class:`~lightning_grow.GrowthCallback` (widths, history, phase timings) and the loggers' and
checkpoint callbacks' own paths. :class:`FitClock` is the one piece that must watch the fit
itself: it times it, and notes where growth stood when training began, so that a resumed run
reports this fit's cost rather than the checkpoint's accumulated totals.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from lightning_grow.callback.growth import GrowthCallback

__all__ = [
    "EVALUATION_STAGES",
    "FitClock",
    "FitSummary",
    "find_growth_callback",
    "fit_summary",
    "format_seconds",
    "format_summary",
    "format_value",
    "log_dir",
    "network_parameters",
    "stage_metrics",
    "validates_on_test_set",
    "write_growth_plot",
]

# The metric prefixes the summary reports, in this order. ClassifierModule logs ``val/acc`` and
# ``val/loss``; ``val_acc``-style names of other modules are picked up as well.
EVALUATION_STAGES = ("val", "test")
PLOT_FILENAME = "growth.png"


def find_growth_callback(trainer: pl.Trainer) -> GrowthCallback | None:
    """The first :class:`GrowthCallback` among the trainer's callbacks, if any."""
    for callback in trainer.callbacks:
        if isinstance(callback, GrowthCallback):
            return callback
    return None


def network_parameters(trainer: pl.Trainer, module: pl.LightningModule) -> int:
    """Parameters of the network being grown, else of the whole module."""
    growth = find_growth_callback(trainer)
    if growth is not None and growth.network is not None:
        return growth.total_parameters
    return sum(parameter.numel() for parameter in module.parameters())


class FitClock(Callback):
    """Times one ``fit`` and snapshots growth when training starts.

    The CLI appends it to the trainer before ``fit``. ``on_train_start`` runs after a checkpoint
    has been restored (whatever the strategy), so the snapshot holds the widths and the
    cumulative phase timings the resumed callback starts from.

    Attributes
    ----------
    start, end
        ``time.perf_counter()`` at ``on_fit_start`` and ``on_fit_end`` (``None`` until then).
    parameters_at_start
        Network parameters when training started.
    timings_at_start
        ``GrowthCallback.timings`` when training started (empty without a growth callback).
    """

    def __init__(self) -> None:
        self.start: float | None = None
        self.end: float | None = None
        self.parameters_at_start: int | None = None
        self.timings_at_start: dict[str, float] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start, self.end = time.perf_counter(), None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.parameters_at_start = network_parameters(trainer, pl_module)
        growth = find_growth_callback(trainer)
        self.timings_at_start = dict(growth.timings) if growth is not None else {}

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.end = time.perf_counter()

    @property
    def seconds(self) -> float | None:
        """Wall time of the fit, from ``on_fit_start`` to ``on_fit_end``."""
        if self.start is None or self.end is None:
            return None
        return self.end - self.start


def stage_metrics(metrics: Mapping[str, Any], stage: str) -> dict[str, float]:
    """The scalar metrics of one stage (``val/acc`` or ``val_acc`` for ``"val"``), as floats."""
    selected = {}
    for name, value in metrics.items():
        if name.startswith((f"{stage}/", f"{stage}_")):
            try:
                selected[name] = float(value)
            except (TypeError, ValueError):  # a non-scalar tensor: nothing to print
                continue
    return dict(sorted(selected.items()))


def validates_on_test_set(datamodule: Any) -> bool:
    """Whether the datamodule's validation and test loaders read the same dataset object (as
    ``DigitsDataModule(val_size=0)`` and the CIFAR modules do)."""
    try:
        validation, test = datamodule.val_dataloader(), datamodule.test_dataloader()
    except Exception:  # any loader that cannot be built here: do not claim they are the same
        return False
    dataset = getattr(validation, "dataset", None)
    return dataset is not None and dataset is getattr(test, "dataset", None)


def log_dir(trainer: pl.Trainer) -> Path:
    """Where the run's files belong: the first CSV or TensorBoard logger's versioned folder, else
    the first logger's ``save_dir``, else ``default_root_dir``.

    This is ``trainer.log_dir`` without its broadcast, so that rank 0 alone may call it.
    """
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger | TensorBoardLogger):
            return Path(logger.log_dir)
    for logger in trainer.loggers:
        if logger.save_dir:
            return Path(logger.save_dir)
    return Path(trainer.default_root_dir)


def write_growth_plot(
    trainer: pl.Trainer, directory: Path, resumed: bool = False
) -> tuple[Path | None, str]:
    """Draw width per pair and parameters against steps as ``growth.png`` in ``directory``.

    The source is the CSV logger's ``metrics.csv`` when there is one and the fit started from
    scratch: it holds the starting point (step 0) and the parameter count measured after every
    decision. Otherwise (no CSV logger, or a resumed fit whose CSV lacks the earlier fits) it is
    the growth callback's history, which spans every fit.

    Returns
    -------
    tuple
        The written file (or ``None``) and a short note: why no plot was drawn, else ``""``.
    """
    growth = find_growth_callback(trainer)
    if growth is None:
        return None, "no GrowthCallback"
    if not growth.history:
        return None, "no growth decision yet"
    from lightning_grow.reporting.plot import plot_growth

    source: Any = growth.history
    csv_loggers = [logger for logger in trainer.loggers if isinstance(logger, CSVLogger)]
    if csv_loggers and not resumed:
        metrics = Path(csv_loggers[0].log_dir) / "metrics.csv"
        if metrics.is_file():
            source = metrics
    try:
        path = plot_growth(source, directory / PLOT_FILENAME, title="Growth")
    except ImportError:
        return None, "needs matplotlib: pip install 'lightning-grow[plot]'"
    return path, ""


@dataclass
class FitSummary:
    """What :func:`format_summary` prints.

    Attributes
    ----------
    epochs, steps
        ``trainer.current_epoch`` and ``trainer.global_step`` after the fit.
    metrics
        Stage (``"val"``, ``"test"``) → metric name → value.
    parameters_start, parameters_end
        Network parameters when training started and at the end.
    initial_widths, widths
        Width of every growable pair when growth began and at the end.
    accepted_events
        Accepted growth events so far (a resumed run counts those before it too).
    fit_seconds
        Wall time of the fit.
    growth_seconds
        Seconds per growth phase spent in this fit.
    files
        Label → path of the logs, the plot, checkpoints and the saved config.
    notes
        Label → one-line remark (why a plot or a test run is missing).
    test_is_validation
        The test metrics come from the images validation used.
    """

    epochs: int
    steps: int
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    parameters_start: int | None = None
    parameters_end: int | None = None
    initial_widths: dict[str, int] = field(default_factory=dict)
    widths: dict[str, int] = field(default_factory=dict)
    accepted_events: int = 0
    fit_seconds: float | None = None
    growth_seconds: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    test_is_validation: bool = False


def fit_summary(
    trainer: pl.Trainer,
    module: pl.LightningModule,
    clock: FitClock | None,
    metrics: Mapping[str, Mapping[str, float]],
) -> FitSummary:
    """Collect the summary of a finished fit from the trainer, the growth callback and the clock.

    Parameters
    ----------
    trainer, module
        The trainer that fitted and its module.
    clock
        The :class:`FitClock` that watched the fit, if any.
    metrics
        Stage → metrics, captured by the caller (a test run resets ``callback_metrics``).
    """
    summary = FitSummary(
        epochs=trainer.current_epoch,
        steps=trainer.global_step,
        metrics={stage: dict(values) for stage, values in metrics.items()},
        parameters_end=network_parameters(trainer, module),
    )
    if clock is not None:
        summary.parameters_start = clock.parameters_at_start
        summary.fit_seconds = clock.seconds
    growth = find_growth_callback(trainer)
    if growth is not None:
        summary.initial_widths = dict(growth.initial_widths)
        summary.widths = growth.widths
        summary.accepted_events = sum(1 for event in growth.history if event.accepted)
        before = clock.timings_at_start if clock is not None else {}
        summary.growth_seconds = {
            phase: seconds - before.get(phase, 0.0) for phase, seconds in growth.timings.items()
        }
        account = growth.budget.account
        if account is not None and account.added_seconds > 0:
            # The phases above miss what hooks cost inside each batch; the batch clock estimates it
            # (median batch with statistics minus median batch without, times the count).
            added, training = account.added_seconds, account.training_seconds
            share = f" ({100 * added / training:.1f} % of training)" if training > 0 else ""
            summary.notes["growth added"] = f"{format_seconds(added)} from batch times{share}"
    summary.files.update(_logger_files(trainer))
    for callback in trainer.checkpoint_callbacks:
        # last.ckpt when saved, else the checkpoint ModelCheckpoint kept (the latest one when
        # it monitors nothing).
        path = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
        if path:
            summary.files.setdefault("checkpoint", str(path))
    return summary


def _logger_files(trainer: pl.Trainer) -> dict[str, str]:
    files: dict[str, str] = {}
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger):
            files.setdefault("CSV log", str(Path(logger.log_dir) / "metrics.csv"))
        elif isinstance(logger, TensorBoardLogger):
            files.setdefault("TensorBoard", str(logger.log_dir))
        elif isinstance(logger, WandbLogger) and trainer.is_global_zero:
            run = logger.experiment
            # run.dir is <run folder>/files; `wandb sync` takes the run folder.
            folder = str(Path(run.dir).parent)
            note = " (offline: `wandb sync` uploads it)" if run.offline else ""
            files.setdefault("W&B run", folder + note)
    return files


def format_value(value: float) -> str:
    """A metric with four decimals (``0.9675``), or four significant digits when large."""
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"


def format_seconds(value: float) -> str:
    """``1.23 s``, ``12.3 s``, ``4m05s`` or ``1h02m03s``."""
    if value < 10:
        return f"{value:.2f} s"
    if value < 60:
        return f"{value:.1f} s"
    minutes, seconds = divmod(round(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def _metric_cells(values: Mapping[str, float], stage: str) -> str:
    # "val/acc 0.9550" reads as "acc 0.9550" on the row already labelled validation.
    cells = [f"{name[len(stage) + 1 :]} {format_value(value)}" for name, value in values.items()]
    return "  ".join(cells)


_STAGE_LABELS = {"val": "validation", "test": "test"}


def format_summary(summary: FitSummary) -> str:
    """The summary as a few aligned lines of plain text."""
    rows: list[tuple[str, str]] = []
    for stage in EVALUATION_STAGES:
        values = summary.metrics.get(stage)
        if values:
            cells = _metric_cells(values, stage)
            if stage == "test" and summary.test_is_validation:
                cells += "  (same images as validation)"
            rows.append((_STAGE_LABELS[stage], cells))
        elif stage in summary.notes:
            rows.append((_STAGE_LABELS[stage], summary.notes[stage]))
    if summary.parameters_end is not None:
        rows.append(("parameters", _parameters_cell(summary)))
    if summary.fit_seconds is not None:
        rows.append(("time", _time_cell(summary.fit_seconds, summary.growth_seconds)))
    if summary.growth_seconds:
        rows.append(("growth time", _phases_cell(summary.growth_seconds)))
    for label, path in summary.files.items():
        rows.append((label, path))
    for label, note in summary.notes.items():
        if label not in EVALUATION_STAGES:
            rows.append((label, note))
    width = max(len(label) for label, _ in rows) if rows else 0
    epochs = f"{summary.epochs} epoch{'s' if summary.epochs != 1 else ''}"
    title = f"Summary after {epochs} ({summary.steps:,} steps)"
    return "\n".join([title, *(f"  {label.ljust(width)}  {text}" for label, text in rows)])


def _parameters_cell(summary: FitSummary) -> str:
    end, start = summary.parameters_end, summary.parameters_start
    text = f"{end:,}" if start is None else f"{start:,} -> {end:,}"
    if start and start != end:
        text += f" ({end / start:.1f}x)"
    if summary.widths:
        # Neurons since growth began (initial_widths survive a resume), events likewise.
        added = sum(w - summary.initial_widths.get(p, w) for p, w in summary.widths.items())
        text += f", {added:+,} neurons in {summary.accepted_events} growth events"
    return text


def _time_cell(fit_seconds: float, growth_seconds: Mapping[str, float]) -> str:
    growth = sum(growth_seconds.values())
    training = format_seconds(fit_seconds - growth)
    text = f"{format_seconds(fit_seconds)} fit: {training} training and validation"
    if growth_seconds:
        share = f" ({100 * growth / fit_seconds:.0f} %)" if fit_seconds > 0 else ""
        text += f", {format_seconds(growth)} growth{share}"
    return text


def _phases_cell(growth_seconds: Mapping[str, float]) -> str:
    return ", ".join(f"{phase} {seconds:.2f} s" for phase, seconds in growth_seconds.items())
