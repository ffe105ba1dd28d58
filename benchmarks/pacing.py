"""What pacing a small network to a compute budget costs in growth (digits MLP, one thread).

For each ``compute_budget`` and seed: the digits MLP grown from [2, 2] through the suite's
Trainer, then its final architecture trained from scratch without the callback by the same
Trainer; the overhead is their difference in CPU time (``time.process_time``, one thread:
robust to other processes on a shared machine) over the grown run's. Prints one row per budget
with the per-seed overheads, widths and test accuracies, and their means.

Usage::

    PYTHONPATH=. python -m benchmarks.pacing --seeds 3 --budgets auto,0.05,0.1,0.2
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from benchmarks.runs import Suite, SuiteConfig

__all__ = ["main", "overhead_row"]


def _budget(text: str) -> float | str | None:
    if text in ("auto", "None"):
        return None if text == "None" else text
    return float(text)


def overhead_row(budget: float | str | None, seeds: range, epochs: int = 60) -> dict[str, Any]:
    """Overheads (% of the grown fit's CPU time), widths and accuracies of one budget."""
    options = {"compute_budget": budget}
    config = SuiteConfig(seeds=len(seeds), epochs=epochs, callback_options=options)
    suite = Suite(config, log=lambda line: None)
    overheads, widths, accuracies = [], [], []
    for seed in seeds:
        started = time.process_time()
        grown = suite.digits_grown("tiny", seed)
        middle = time.process_time()
        suite.digits_final_fixed(seed)
        fixed_seconds = time.process_time() - middle
        grown_seconds = middle - started
        overheads.append(100 * (grown_seconds - fixed_seconds) / grown_seconds)
        widths.append(grown.widths)
        accuracies.append(grown.metrics["accuracy"])
    return {
        "budget": budget,
        "overhead_percent": overheads,
        "widths": widths,
        "accuracy": accuracies,
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budgets", default="auto,0.05,0.1,0.2")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    print("| compute_budget | overhead % (per seed) | mean | widths | accuracy (mean) |")
    print("|---|---|---|---|---|")
    for text in args.budgets.split(","):
        row = overhead_row(_budget(text), range(args.seeds))
        rows.append(row)
        overheads = ", ".join(f"{value:.1f}" for value in row["overhead_percent"])
        accuracy = ", ".join(f"{value:.3f}" for value in row["accuracy"])
        print(
            f"| {text} | {overheads} | {statistics.mean(row['overhead_percent']):.1f} | "
            f"{row['widths']} | {accuracy} ({statistics.mean(row['accuracy']):.3f}) |",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    main()
