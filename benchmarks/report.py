"""RESULTS.md writer: sections of markdown with tables and PNG figures next to the file."""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["Section", "markdown_table", "new_figure", "save_figure", "write_results"]


@dataclass
class Section:
    """One section of RESULTS.md.

    Attributes
    ----------
    title
        Heading (``## <title>``).
    lines
        Markdown body, one entry per line or paragraph.
    figures
        PNG file names (relative to RESULTS.md) written by the section.
    data
        Raw numbers for ``results.json``.
    """

    title: str
    lines: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, *lines: str) -> None:
        """Append paragraphs (a blank line is put between them when rendered)."""
        self.lines.extend(lines)

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Append a markdown table."""
        self.lines.append(markdown_table(header, rows))

    def render(self) -> str:
        """The section as markdown."""
        body = "\n\n".join(self.lines)
        images = "\n\n".join(f"![{name}]({name})" for name in self.figures)
        return "\n\n".join(part for part in (f"## {self.title}", body, images) if part)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells are converted with ``str``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def new_figure(columns: int = 1, width: float = 6.0, height: float = 4.0) -> tuple[Any, Any]:
    """A matplotlib figure on the Agg canvas (no display, backend untouched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * columns, height))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, columns)
    return figure, axes


def save_figure(figure: Any, directory: Path, name: str, section: Section) -> None:
    """Save ``figure`` as ``directory/name`` and list it in ``section``."""
    figure.tight_layout()
    figure.savefig(directory / name, dpi=110)
    section.figures.append(name)


def write_results(
    path: Path, sections: Sequence[Section], header_lines: Sequence[str], runs: list[dict]
) -> None:
    """Write RESULTS.md and ``results.json`` (every run and every section's raw data)."""
    environment = (
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), {platform.machine()} {platform.system()}"
    )
    parts = ["# lightning_grow benchmark results", *header_lines, f"Environment: {environment}."]
    parts += [section.render() for section in sections]
    path.write_text("\n\n".join(parts) + "\n")
    raw = {"sections": {section.title: section.data for section in sections}, "runs": runs}
    path.with_name("results.json").write_text(json.dumps(raw, separators=(",", ":"), default=float))
