"""The trade-off picture's arithmetic: FLOPs from width trajectories, the fixed-curve verdict."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.tradeoff_plot import (
    DIGITS_TRAIN,
    TEACHER_TRAIN,
    Panel,
    Series,
    _mlp2,
    _student,
    load_panels,
    markdown,
    trajectory_flops,
    verdict,
)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize(
    ("name", "samples", "epochs", "macs"),
    [
        ("digits2: TINY to h=32 by 0.5", DIGITS_TRAIN, 60, _mlp2),
        ("teacher: TINY to h=64 by 0.5", TEACHER_TRAIN, 200, _student),
    ],
)
def test_trajectory_flops_reproduce_the_counted_flops(name, samples, epochs, macs) -> None:
    """Recomputed from the recorded widths = counted at every optimizer step during training."""
    runs = json.loads((BENCHMARKS / "tradeoff_runs.json").read_text())[name]
    for run in runs:
        computed = trajectory_flops(run["width_trajectory"], samples, epochs, macs)
        assert computed == pytest.approx(run["flops"], rel=1e-12)


def _series(label: str, metric: list[float], parameters: float) -> Series:
    return Series(label, metric, [parameters] * len(metric), [parameters] * len(metric), "test")


def test_verdict_interpolates_the_fixed_curve_in_log_size() -> None:
    fixed = [_series("fixed a", [0.90, 0.91], 100.0), _series("fixed b", [0.96, 0.97], 10000.0)]
    panel = Panel("toy", "test accuracy", fixed, [])
    # Halfway in log-parameters: the curve reads 0.935 there.
    delta, word = verdict(panel, _series("on", [0.93, 0.94], 1000.0), "parameters")
    assert delta == pytest.approx(0.0) and word == "on"
    assert verdict(panel, _series("up", [0.99, 0.991], 1000.0), "parameters")[1] == "above"
    assert verdict(panel, _series("down", [0.80, 0.801], 1000.0), "parameters")[1] == "below"
    assert "beyond" in verdict(panel, _series("far", [0.97, 0.97], 1e6), "flops")[1]
    # The fixed widths may be listed in any order.
    reversed_panel = Panel("toy", "test accuracy", fixed[::-1], [])
    assert verdict(reversed_panel, _series("on", [0.93, 0.94], 1000.0), "parameters")[0] == delta


def test_mse_is_compared_in_log_and_lower_is_better() -> None:
    fixed = [_series("fixed a", [1e-2, 1e-2], 10.0), _series("fixed b", [1e-4, 1e-4], 1000.0)]
    panel = Panel("toy", "test MSE", fixed, [])
    delta, word = verdict(panel, _series("worse", [1e-2, 1.0001e-2], 100.0), "parameters")
    assert delta == pytest.approx(-1.0, abs=1e-3) and word == "below"


def test_tables_cover_every_protocol_from_the_stored_results() -> None:
    panels = load_panels()
    assert [p.metric for p in panels] == ["test accuracy"] * 3 + ["test MSE"]
    text = markdown(panels)
    assert text.count("| configuration |") == 4
    assert "TINY, validation stop (val/loss)" in text and "GroMo TINY" in text
