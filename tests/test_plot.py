"""plot_growth: curves from events, event dicts and CSVLogger files; a real, non-blank PNG."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from lightning_grow.reporting.events import GrowthEvent
from lightning_grow.reporting.plot import GrowthCurves, growth_curves, plot_growth

CONV = "layer1.0.conv1 -> layer1.0.conv2"
FC = "fc1 -> fc2"


def _event(step: int, pair: str, before: int, after: int, total: int) -> GrowthEvent:
    return GrowthEvent(
        step=step,
        epoch=step // 10,
        pair=pair,
        accepted=after > before,
        reason="grown" if after > before else "not significant",
        neurons_added=after - before,
        width_before=before,
        width_after=after,
        expressivity_gain=0.1,
        bottleneck_fraction=0.4,
        num_significant=after - before,
        amplitude=0.5,
        loss_before=1.0,
        loss_after=0.9,
        total_parameters=total,
        method="tiny",
        timings={"statistics": 0.1},
    )


# Deliberately out of step order: the history may be concatenated from several fits.
EVENTS = [
    _event(30, CONV, 6, 9, 1500),
    _event(30, FC, 12, 12, 1500),
    _event(10, CONV, 4, 6, 1200),
    _event(10, FC, 8, 8, 1200),
    _event(20, FC, 8, 12, 1350),
]
EXPECTED = GrowthCurves(
    widths={
        CONV: [(0, 4), (10, 6), (30, 9)],
        FC: [(0, 8), (10, 8), (20, 12), (30, 12)],
    },
    total_parameters=[(10, 1200), (20, 1350), (30, 1500)],
)


def test_curves_from_events_and_from_dicts() -> None:
    assert growth_curves(EVENTS) == EXPECTED
    assert growth_curves([event.to_dict() for event in EVENTS]) == EXPECTED


def _write_csv_logger_metrics(folder: Path) -> Path:
    """A metrics.csv written by a real CSVLogger, growth metrics interleaved with others."""
    logger = CSVLogger(folder, name="csv")
    conv, fc, total = "growth/width/layer1.0.conv1", "growth/width/fc1", "growth/total_parameters"
    logger.log_metrics({conv: 4, fc: 8, total: 1000}, step=0)
    logger.log_metrics({"train/loss": 2.0}, step=3)
    logger.log_metrics({conv: 6, fc: 8, total: 1200, "growth/gain/fc1": 0.1}, step=10)
    logger.log_metrics({"train/loss": 1.0}, step=12)
    logger.log_metrics({conv: 6, fc: 12, total: 1350}, step=20)
    logger.save()
    return Path(logger.log_dir) / "metrics.csv"


def test_curves_from_csv_logger_file(tmp_path) -> None:
    path = _write_csv_logger_metrics(tmp_path)
    expected = GrowthCurves(
        widths={"layer1.0.conv1": [(0, 4), (10, 6), (20, 6)], "fc1": [(0, 8), (10, 8), (20, 12)]},
        total_parameters=[(0, 1000), (10, 1200), (20, 1350)],
    )
    assert growth_curves(path) == expected
    assert growth_curves(str(path)) == expected


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("L"), dtype=np.float64)


def _assert_real_plot(path: Path) -> None:
    assert path.stat().st_size > 10_000
    pixels = _pixels(path)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 600
    # A blank canvas is one grey level; axes, lines, ticks and labels give a spread of them.
    assert pixels.std() > 10
    assert (pixels < 128).mean() > 0.005  # dark ink: lines, text


def test_plot_from_events_writes_png(tmp_path) -> None:
    target = tmp_path / "figures" / "growth.png"
    written = plot_growth(EVENTS, target, title="MLP on digits")
    assert written == target
    _assert_real_plot(target)


def test_plot_from_csv_writes_png(tmp_path) -> None:
    written = plot_growth(_write_csv_logger_metrics(tmp_path), tmp_path / "from_csv.png")
    _assert_real_plot(written)


def test_title_is_drawn(tmp_path) -> None:
    plain = _pixels(plot_growth(EVENTS, tmp_path / "plain.png"))
    titled = _pixels(plot_growth(EVENTS, tmp_path / "titled.png", title="A long title"))
    assert plain.shape == titled.shape
    assert np.abs(plain - titled).max() > 100


def test_missing_matplotlib_names_the_plot_extra(tmp_path, monkeypatch) -> None:
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.ticker"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=r"lightning-grow\[plot\]"):
        plot_growth(EVENTS, tmp_path / "never.png")
    assert not (tmp_path / "never.png").exists()


def test_nothing_to_plot_is_an_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_growth([], tmp_path / "empty.png")
    csv_without_growth = tmp_path / "metrics.csv"
    csv_without_growth.write_text("step,train/loss\n0,1.0\n1,0.5\n")
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_growth(csv_without_growth, tmp_path / "empty.png")
    with pytest.raises(FileNotFoundError):
        growth_curves(tmp_path / "missing.csv")
