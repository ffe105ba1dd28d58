"""Issue 16, item 4: test metric vs parameters and vs training FLOPs, every method on one picture.

Reads only stored results (no training):

* ``results.json`` (sections 1, 2 and 4: digits 64-h-h-10 and the teacher task, 10 seeds),
* ``tiny_vs_random.json`` (section 7: the same digits protocol, 20 seeds),
* ``target_and_monitor_results.json`` (digits 64-h-10: growth to a target; growth stopped by
  validation on an 80 / 20 split; 4 seeds),
* ``tradeoff_runs.json`` (:mod:`benchmarks.tradeoff_runs`: TINY to-target on the teacher and on
  64-h-h-10, fixed-width curves of both 64-h-10 protocols, 4 seeds).

One row of panels per protocol, each with its own fixed-width curve: curves of different
protocols (depth, training split) are never drawn on one axis.

Training FLOPs are ``6 × batch × Σ in·out`` over the Linear layers in the network at every
optimizer step (forward 2, backward 4 per multiply-add; biases, activations and growth's own
statistics, solves and searches left out). ``target_and_monitor`` and ``tradeoff_runs`` counted
them during training; for the runs of ``results.json`` and ``tiny_vs_random.json`` they are
recomputed from the recorded width trajectory, which reproduces the counted value exactly (checked
on the to-target runs). Random replay runs follow the TINY run of the same seed.

*On / above / below the fixed curve*: the fixed curve's mean and sd are interpolated linearly in
log-parameters (or log-FLOPs) at the variant's mean; the difference counts as real when it exceeds
two standard errors (``sqrt(sd²/n + sd_fixed²/n_fixed)``). Teacher MSE is compared as
``log10(MSE)`` (it spans two decades); the tables show its plain mean ± sd.

Run: ``python -m benchmarks.tradeoff_plot`` (writes ``benchmarks/tradeoff.png``, prints the
markdown tables).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Panel", "Series", "load_panels", "main", "verdict"]

HERE = Path(__file__).resolve().parent
DIGITS_TRAIN, TEACHER_TRAIN, BATCH = 1397, 4000, 64


@dataclass
class Series:
    """One configuration: per-seed test metric, parameters and training FLOPs (or ``None``)."""

    label: str
    metric: list[float]
    parameters: list[float]
    flops: list[float] | None
    source: str
    style: str = "o"


@dataclass
class Panel:
    """One protocol: its fixed-width curve and the grown variants measured on it."""

    title: str
    metric: str
    fixed: list[Series]
    points: list[Series]

    @property
    def log_metric(self) -> bool:
        """MSE is compared in log10 (lower is better), accuracy as is (higher is better)."""
        return self.metric == "test MSE"

    def score(self, values: list[float]) -> np.ndarray:
        """Higher-is-better score of each seed: accuracy, or −log10(MSE)."""
        values = np.asarray(values, dtype=float)
        return -np.log10(values) if self.log_metric else values


def trajectory_flops(trajectory: list, samples: int, epochs: int, macs: Any) -> float:
    """Training FLOPs from ``(step, widths)`` records: widths of step s hold from step s on."""
    per_epoch = math.ceil(samples / BATCH)
    last_batch = samples - (per_epoch - 1) * BATCH
    total, index = 0.0, 0
    for step in range(per_epoch * epochs):
        while index + 1 < len(trajectory) and trajectory[index + 1][0] <= step:
            index += 1
        batch = last_batch if step % per_epoch == per_epoch - 1 else BATCH
        total += 6.0 * batch * macs(trajectory[index][1])
    return total


def _mlp2(widths: list[int]) -> int:
    return 64 * widths[0] + widths[0] * widths[1] + widths[1] * 10


def _student(widths: list[int]) -> int:
    return 16 * widths[0] + widths[0] * 8


def load_panels(folder: Path = HERE) -> list[Panel]:
    """The four protocols' panels from the stored JSONs."""
    runs = json.loads((folder / "results.json").read_text())["runs"]
    section7 = json.loads((folder / "tiny_vs_random.json").read_text())["grown"]
    target_monitor = json.loads((folder / "target_and_monitor_results.json").read_text())
    extra = json.loads((folder / "tradeoff_runs.json").read_text())
    by_name: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_name.setdefault(run["name"], []).append(run)
    tiny_trajectory = {run["seed"]: run["width_trajectory"] for run in by_name["grown tiny"]}

    def stored(name, label, metric, macs, samples, epochs, style="o", trajectory_of=None):
        rows = by_name[name]
        flops = [
            trajectory_flops(
                trajectory_of[r["seed"]] if trajectory_of else r["width_trajectory"],
                samples,
                epochs,
                macs,
            )
            for r in rows
        ]
        return Series(
            label,
            [r["metrics"][metric] for r in rows],
            [r["parameters"] for r in rows],
            flops,
            "results.json",
            style,
        )

    def counted(rows, label, metric, source, style="o"):
        return Series(
            label,
            [r[metric] for r in rows],
            [r["parameters"] for r in rows],
            [r["flops"] for r in rows],
            source,
            style,
        )

    def digits2(name, label, style="o", trajectory_of=None):
        return stored(name, label, "accuracy", _mlp2, DIGITS_TRAIN, 60, style, trajectory_of)

    seven = [section7[seed] for seed in sorted(section7, key=int)]

    def s7(key, label, style):
        """Section 7's runs; the replay grows at TINY's steps, so it has TINY's trajectory."""
        trajectory = "tiny" if key == "random replay" else key
        return Series(
            label,
            [s[key]["metrics"]["accuracy"] for s in seven],
            [s[key]["parameters"] for s in seven],
            [
                trajectory_flops(s[trajectory]["width_trajectory"], DIGITS_TRAIN, 60, _mlp2)
                for s in seven
            ],
            "tiny_vs_random.json",
            style,
        )

    def new(key, label, metric="accuracy", style="o"):
        return counted(extra[key], label, metric, "tradeoff_runs.json", style)

    def tm(part, key, label, style="o"):
        rows = target_monitor[part][key]
        return counted(rows, label, "accuracy", "target_and_monitor_results.json", style)

    def teacher(name, label, style="o"):
        return stored(name, label, "mse", _student, TEACHER_TRAIN, 200, style)

    digits_val_fixed = [new(f"digits1 val: fixed h={h}", f"fixed h={h}") for h in (8, 16, 64)]
    digits_val_fixed += [tm("monitor", f"fixed h={h}", f"fixed h={h}") for h in (40, 128)]
    digits_val_fixed += [new(f"digits1 val: fixed h={h}", f"fixed h={h}") for h in (512, 2048)]
    digits_val_fixed.sort(key=lambda series: series.parameters[0])
    panels = [
        Panel(
            "digits 64-h-h-10 (sections 1, 2, 7)",
            "test accuracy",
            [digits2(f"fixed h={h}", f"fixed h={h}") for h in (8, 16, 32, 64, 128)],
            [
                digits2("grown tiny", "TINY right-sized (§1)"),
                s7("tiny", "TINY right-sized (§7)", "o"),
                new("digits2: TINY to h=32 by 0.5", "TINY to h=32 by 0.5", style="^"),
                new("digits2: TINY to h=64 by 0.5", "TINY to h=64 by 0.5", style="^"),
                digits2(
                    "random, tiny's schedule", "random, TINY's schedule (§1)", "s", tiny_trajectory
                ),
                s7("random replay", "random, TINY's schedule (§7)", "s"),
                digits2("tiny's final widths, fixed", "TINY's widths, fixed (§1)", "x"),
                s7("final fixed", "TINY's widths, fixed (§7)", "x"),
                digits2("grown gradmax", "GradMax, own schedule", "v"),
                digits2("grown random", "random, own schedule", "D"),
                digits2("gromo tiny", "GroMo TINY", "P"),
            ],
        ),
        Panel(
            "digits 64-h-10, whole training split (target runs)",
            "test accuracy",
            [new(f"digits1 full: fixed h={h}", f"fixed h={h}") for h in (8, 16, 32, 64)]
            + [tm("target", "h=128 from scratch", "fixed h=128")],
            [
                tm("target", f"TINY 4 -> 128 by {by}", f"TINY 4→128 by {by}", style)
                for by, style in (("0.5", "^"), ("0.8", "<"), ("0.9", ">"))
            ],
        ),
        Panel(
            "digits 64-h-10, 80 % train / 20 % validation (monitor runs)",
            "test accuracy",
            digits_val_fixed,
            [
                tm("monitor", "GrowthCallback() defaults", "TINY right-sized"),
                tm("monitor", "monitor val/loss", "TINY, validation stop (val/loss)", "*"),
                tm("monitor", "monitor val/acc (max)", "TINY, validation stop (val/acc)", "h"),
            ],
        ),
        Panel(
            "teacher 16-h-8, tanh (section 4)",
            "test MSE",
            [teacher(f"student fixed h={h}", f"fixed h={h}") for h in (8, 16, 24, 32, 64)],
            [
                teacher("student grown tiny", "TINY right-sized (§4)"),
                new("teacher: TINY right-sized (defaults)", "TINY right-sized (now)", "mse", "o"),
                new("teacher: TINY to h=32 by 0.5", "TINY to h=32 by 0.5", "mse", "^"),
                new("teacher: TINY to h=64 by 0.5", "TINY to h=64 by 0.5", "mse", "^"),
            ],
        ),
    ]
    return panels


def _mean_sd(values: Any) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def verdict(panel: Panel, series: Series, axis: str) -> tuple[float, str]:
    """Score difference to the fixed curve at the series' size, and on / above / below.

    Parameters
    ----------
    panel
        The protocol, with its fixed-width curve.
    series
        The variant to place.
    axis
        ``"parameters"`` or ``"flops"``.

    Returns
    -------
    tuple
        (variant score − interpolated fixed score, verdict); the score is accuracy or
        −log10(MSE), so a positive difference is always better than the fixed curve.
    """
    fixed = sorted(panel.fixed, key=lambda f: _mean_sd(getattr(f, axis))[0])
    xs = np.log([_mean_sd(getattr(f, axis))[0] for f in fixed])
    means, sds = zip(*(_mean_sd(panel.score(f.metric)) for f in fixed))
    x = math.log(_mean_sd(getattr(series, axis))[0])
    fixed_mean, fixed_sd = np.interp(x, xs, means), np.interp(x, xs, sds)
    fixed_n = min(len(f.metric) for f in panel.fixed)
    mean, sd = _mean_sd(panel.score(series.metric))
    delta = mean - fixed_mean
    error = math.sqrt(sd**2 / len(series.metric) + fixed_sd**2 / fixed_n)
    word = "on" if abs(delta) <= 2 * error else ("above" if delta > 0 else "below")
    if not xs[0] <= x <= xs[-1]:
        word += " (beyond the curve: its end value)"
    return float(delta), word


def _metric_text(panel: Panel, values: list[float]) -> str:
    mean, sd = _mean_sd(values)
    return f"{mean:.2e} ± {sd:.1e}" if panel.log_metric else f"{mean:.4f} ± {sd:.4f}"


def _delta_text(panel: Panel, delta: float) -> str:
    """Accuracy points, or the variant's MSE as a multiple of the curve's (geometric means)."""
    return f"MSE × {10 ** (-delta):.2f}" if panel.log_metric else f"{100 * delta:+.2f} pt"


def markdown(panels: list[Panel]) -> str:
    """One table per panel: every fixed width and variant, with its place against the curve."""
    lines = []
    for panel in panels:
        lines += [
            f"**{panel.title}**",
            "",
            f"| configuration | seeds | {panel.metric} | parameters | training GFLOP | "
            "vs fixed curve at equal parameters | at equal FLOPs | data |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for series in panel.fixed + panel.points:
            p_mean, p_sd = _mean_sd(series.parameters)
            f_mean, f_sd = _mean_sd(series.flops)
            cells = ["—", "—"]
            if series in panel.points:
                cells = [
                    f"{_delta_text(panel, d)}: {w}"
                    for d, w in (verdict(panel, series, a) for a in ("parameters", "flops"))
                ]
            lines.append(
                f"| {series.label} | {len(series.metric)} | {_metric_text(panel, series.metric)} "
                f"| {p_mean:.0f} ± {p_sd:.0f} | {f_mean / 1e9:.2f} ± {f_sd / 1e9:.2f} | "
                f"{cells[0]} | {cells[1]} | {series.source} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(panels: list[Panel], path: Path) -> None:
    """Metric vs parameters (left) and vs training FLOPs (right), one row per protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(panels), 2, figsize=(13, 4.2 * len(panels)))
    colours = plt.cm.tab20.colors[::2] + plt.cm.tab20.colors[1::2]
    for row, panel in zip(axes, panels):
        for ax, axis in zip(row, ("parameters", "flops")):
            xs = [_mean_sd(getattr(f, axis))[0] for f in panel.fixed]
            ys, dys = zip(*(_mean_sd(f.metric) for f in panel.fixed))
            ax.errorbar(xs, ys, yerr=dys, fmt="-o", color="black", capsize=3, label="fixed widths")
            for x, y, fixed in zip(xs, ys, panel.fixed):
                ax.annotate(
                    fixed.label.removeprefix("fixed "),
                    (x, y),
                    textcoords="offset points",
                    xytext=(4, -10),
                    fontsize=7,
                )
            for index, series in enumerate(panel.points):
                (xm, xs), (ym, ys) = _mean_sd(getattr(series, axis)), _mean_sd(series.metric)
                ax.errorbar(
                    xm, ym, xerr=xs, yerr=ys, fmt=series.style, color=colours[index % 20],
                    capsize=3, markersize=7, label=series.label,
                )  # fmt: skip
            ax.set_xscale("log")
            if panel.log_metric:
                ax.set_yscale("log")
            ax.set_xlabel("parameters" if axis == "parameters" else "training FLOPs")
            ax.set_ylabel(panel.metric + ("  (lower is better)" if panel.log_metric else ""))
            ax.set_title(panel.title, fontsize=10)
            ax.grid(alpha=0.3, which="both")
        row[1].legend(fontsize=7, loc="best")
    figure.suptitle("Trade-off: mean ± sd over seeds (error bars in both directions)")
    figure.tight_layout(rect=(0, 0, 1, 0.985))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> str:
    """Write ``benchmarks/tradeoff.png`` and print (and return) the markdown tables."""
    panels = load_panels()
    plot(panels, HERE / "tradeoff.png")
    text = markdown(panels)
    print(text)
    return text


if __name__ == "__main__":
    main()
