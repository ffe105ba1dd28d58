"""Plot how a network grew: hidden width per pair and total parameters against training steps.

matplotlib is an optional dependency (the ``plot`` extra). It is imported only when a figure is
drawn, and only through its object-oriented API with the Agg canvas, so plotting neither needs a
display nor changes the backend of an interactive session.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_grow.reporting.events import GrowthEvent

__all__ = ["GrowthCurves", "growth_curves", "plot_growth"]

_WIDTH_PREFIX = "growth/width/"
_TOTAL_KEY = "growth/total_parameters"

GrowthSource = str | os.PathLike[str] | Iterable[GrowthEvent | Mapping[str, Any]]


@dataclass
class GrowthCurves:
    """Step-wise curves to plot.

    Attributes
    ----------
    widths
        Label (pair name, or its metric name when read from a CSV) → ``[(step, width), ...]``
        sorted by step.
    total_parameters
        ``[(step, parameters), ...]`` sorted by step (empty when unknown).
    """

    widths: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    total_parameters: list[tuple[int, int]] = field(default_factory=list)


def growth_curves(source: GrowthSource) -> GrowthCurves:
    """Curves from growth events, event dicts, or a CSVLogger ``metrics.csv``.

    From events, every pair starts at step 0 with the width it had before its first event, and
    gets one point per event (rejected events repeat the width); the total parameter count has one
    point per decision step (the value after the decision). From a CSV, the points are the rows
    where ``growth/width/<name>`` and ``growth/total_parameters`` were logged.
    """
    if isinstance(source, str | os.PathLike):
        return _curves_from_csv(Path(source))
    events = [
        item if isinstance(item, GrowthEvent) else GrowthEvent.from_dict(dict(item))
        for item in source
    ]
    return _curves_from_events(events)


def _curves_from_events(events: list[GrowthEvent]) -> GrowthCurves:
    curves = GrowthCurves()
    totals: dict[int, int] = {}
    # A stable sort keeps the producer's order among events of the same step.
    for event in sorted(events, key=lambda e: e.step):
        points = curves.widths.setdefault(event.pair, [(0, int(event.width_before))])
        points.append((int(event.step), int(event.width_after)))
        totals[int(event.step)] = int(event.total_parameters)
    curves.total_parameters = sorted(totals.items())
    return curves


def _curves_from_csv(path: Path) -> GrowthCurves:
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path}")
    curves = GrowthCurves()
    totals: dict[int, int] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            step_text = row.get("step", "")
            if not step_text:
                continue
            step = int(float(step_text))
            for column, text in row.items():
                value = _number(text)
                if value is None:
                    continue
                if column.startswith(_WIDTH_PREFIX):
                    label = column.removeprefix(_WIDTH_PREFIX)
                    curves.widths.setdefault(label, []).append((step, int(value)))
                elif column == _TOTAL_KEY:
                    totals[step] = int(value)
    for label, points in curves.widths.items():
        curves.widths[label] = sorted(dict(points).items())
    curves.total_parameters = sorted(totals.items())
    return curves


def _number(text: str | None) -> float | None:
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def plot_growth(
    source: GrowthSource, path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Draw width per pair and total parameters against steps, and save the figure as a PNG.

    Parameters
    ----------
    source
        A list of :class:`~lightning_grow.reporting.events.GrowthEvent` (or their ``to_dict()``
        records), e.g. ``GrowthCallback.history``; or the path of a CSVLogger ``metrics.csv``.
    path
        Where to write the PNG (parent folders are created).
    title
        Figure title.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ImportError
        When matplotlib is missing (install the ``plot`` extra).
    ValueError
        When the source holds no width information.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as error:
        raise ImportError(
            "plot_growth needs matplotlib: install the 'plot' extra, "
            "pip install 'lightning-grow[plot]'"
        ) from error

    curves = growth_curves(source)
    if not curves.widths:
        raise ValueError("nothing to plot: the source has no growth events or width metrics")

    figure = Figure(figsize=(11.0, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    # A shared step axis lines up each width jump with its parameter jump.
    width_axes, parameter_axes = figure.subplots(1, 2, sharex=True)
    for label, points in curves.widths.items():
        steps, widths = zip(*points)
        width_axes.plot(
            steps, widths, drawstyle="steps-post", marker="o", markersize=3, label=label
        )
    width_axes.set(xlabel="training step", ylabel="hidden width", title="Width per pair")
    width_axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    width_axes.grid(alpha=0.3)
    # Long pair names would squeeze the axes: shrink the legend as pairs multiply.
    width_axes.legend(fontsize="small" if len(curves.widths) <= 8 else "x-small")

    if curves.total_parameters:
        steps, totals = zip(*curves.total_parameters)
        parameter_axes.plot(steps, totals, drawstyle="steps-post", marker="o", markersize=3)
    else:
        parameter_axes.text(0.5, 0.5, "not recorded", ha="center", va="center")
    parameter_axes.set(xlabel="training step", ylabel="parameters", title="Total parameters")
    parameter_axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    parameter_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    parameter_axes.grid(alpha=0.3)
    if title:
        figure.suptitle(title)

    output = Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, format="png", dpi=120)
    return output
