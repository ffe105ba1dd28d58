"""Human-readable growth output: one line per accepted event, a table of the final architecture.

Formatting is kept apart from the Lightning side (:mod:`lightning_grow.reporting.loggers`) so that
it can be used on a bare history, e.g. ``print(format_architecture(...))`` after loading a
checkpoint.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TextIO

from lightning_grow.reporting.events import GrowthEvent

__all__ = [
    "ArchitectureRow",
    "architecture_rows",
    "format_architecture",
    "format_event_line",
    "print_architecture",
    "write_line",
]


def format_event_line(event: GrowthEvent) -> str:
    """One concise line describing a growth event.

    Example: ``growth step 120 (epoch 1) | fc1 -> fc2: width 8 -> 12 (+4) | gain 0.231 |
    loss 1.2340 -> 1.1980 | 12,345 params | tiny``.
    """
    return (
        f"growth step {event.step} (epoch {event.epoch}) | {event.pair}: "
        f"width {event.width_before} -> {event.width_after} ({event.neurons_added:+d}) | "
        f"gain {event.expressivity_gain:.3g} | "
        f"loss {event.loss_before:.4g} -> {event.loss_after:.4g} | "
        f"{event.total_parameters:,} params | {event.method}"
    )


@dataclass(frozen=True)
class ArchitectureRow:
    """One growable pair in the final-architecture table."""

    pair: str
    initial_width: int
    final_width: int
    parameters: int | None

    @property
    def neurons_added(self) -> int:
        return self.final_width - self.initial_width


def architecture_rows(
    initial_widths: Mapping[str, int],
    widths: Mapping[str, int],
    parameters_per_pair: Mapping[str, int],
) -> list[ArchitectureRow]:
    """Rows in the order of ``widths``; a pair missing from ``initial_widths`` did not grow."""
    return [
        ArchitectureRow(
            pair=pair,
            initial_width=int(initial_widths.get(pair, width)),
            final_width=int(width),
            parameters=(int(parameters_per_pair[pair]) if pair in parameters_per_pair else None),
        )
        for pair, width in widths.items()
    ]


_HEADERS = ("pair", "initial width", "final width", "added", "parameters")
_TITLE = "Grown architecture"


def _cells(row: ArchitectureRow) -> tuple[str, str, str, str, str]:
    parameters = "-" if row.parameters is None else f"{row.parameters:,}"
    return (
        row.pair,
        str(row.initial_width),
        str(row.final_width),
        f"{row.neurons_added:+d}",
        parameters,
    )


def format_architecture(rows: list[ArchitectureRow], total_parameters: int) -> str:
    """The final-architecture table as plain text (no dependency beyond the standard library)."""
    body = [_cells(row) for row in rows]
    footer = ("total", "", "", f"{sum(r.neurons_added for r in rows):+d}", f"{total_parameters:,}")
    table = [_HEADERS, *body, footer]
    sizes = [max(len(line[column]) for line in table) for column in range(len(_HEADERS))]

    def render(line: tuple[str, ...]) -> str:
        # Pair names read best left-aligned, numbers right-aligned.
        cells = [line[0].ljust(sizes[0])]
        cells += [cell.rjust(size) for cell, size in zip(line[1:], sizes[1:])]
        return "  ".join(cells).rstrip()

    rule = "-" * len(render(_HEADERS))
    lines = [_TITLE, rule, render(_HEADERS), rule, *map(render, body), rule, render(footer)]
    return "\n".join(lines)


def print_architecture(
    rows: list[ArchitectureRow], total_parameters: int, stream: TextIO | None = None
) -> None:
    """Print the final-architecture table: with ``rich`` when it is importable, else plain text.

    Parameters
    ----------
    rows
        From :func:`architecture_rows`.
    total_parameters
        Parameters of the whole network.
    stream
        Where to write; standard output when ``None``.
    """
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        write_line(format_architecture(rows, total_parameters), stream)
        return
    table = Table(title=_TITLE)
    table.add_column(_HEADERS[0], justify="left")
    for header in _HEADERS[1:]:
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(*_cells(row))
    table.add_row(
        "total", "", "", f"{sum(r.neurons_added for r in rows):+d}", f"{total_parameters:,}"
    )
    Console(file=stream if stream is not None else sys.stdout).print(table)


def write_line(text: str, stream: TextIO | None = None) -> None:
    """Write ``text`` and a newline without tearing an active tqdm progress bar.

    With ``stream=None`` the text goes to standard output through ``tqdm.write``, which clears
    and redraws Lightning's progress bars around it; an explicit stream is written directly.
    """
    if stream is not None:
        stream.write(text + "\n")
        stream.flush()
        return
    try:
        from tqdm import tqdm
    except ImportError:
        print(text, flush=True)
        return
    tqdm.write(text, file=sys.stdout)
