"""TINY's neurons against random ones at equal size and schedule (issue 16, item 5), on digits.

For each seed (the protocol of section 1: MLP 64-h-h-10 ReLU from [2, 2], Adam 1e-3, batch 64,
60 epochs):

* ``tiny``: ``GrowthCallback()`` with its defaults;
* ``random replay``: random function-preserving neurons (Kaiming fan-in, zero fan-out) added at
  exactly the optimizer steps and counts of that seed's TINY run (:class:`ReplayGrowth`), so both
  networks have the same widths at every step;
* ``final fixed``: TINY's final widths trained from scratch by the same Trainer.

Every run records the test accuracy and cross-entropy after every epoch (:class:`EpochEval`,
evaluation only: it draws no random numbers and touches no weights), so the advantage of TINY's
neurons can be followed from the growth phase to the end of training. Optional fixed-width
baselines (plain loop) give the accuracy-vs-parameters curve of :mod:`benchmarks.tradeoff_plot`.

Usage::

    PYTHONPATH=. python -m benchmarks.tiny_vs_random --seeds 0-19 \
        --out benchmarks/tiny_vs_random.json
    PYTHONPATH=. python -m benchmarks.tiny_vs_random --seeds 0-9 --fixed 4,8,12,16,24,32,64,128 \
        --skip-grown --out benchmarks/fixed_widths.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from benchmarks.common import evaluate_classifier
from benchmarks.digits import DigitsProtocol, DigitsSplit, build_mlp, load_digits_split, train_fixed
from benchmarks.lightning_runs import classifier_module, run_lightning
from benchmarks.paired_stats import paired_summary
from benchmarks.replay import ReplayGrowth

__all__ = ["EpochEval", "main", "parse_seeds", "run_seed"]


class EpochEval(pl.Callback):
    """Test accuracy, cross-entropy and parameter count after every training epoch."""

    def __init__(self, split: DigitsSplit, attribute: str = "backbone") -> None:
        self.split = split
        self.attribute = attribute
        self.curve: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = getattr(pl_module, self.attribute)
        metrics = evaluate_classifier(net, self.split.test_inputs, self.split.test_labels)
        metrics["parameters"] = sum(p.numel() for p in net.parameters())
        self.curve.append(metrics)


def _digits_run(
    name: str,
    seed: int,
    split: DigitsSplit,
    protocol: DigitsProtocol,
    widths: tuple[int, ...],
    callback_options: dict[str, Any] | None,
    extra: list[pl.Callback],
) -> dict[str, Any]:
    curve = EpochEval(split)
    result = run_lightning(
        name=name,
        seed=seed,
        build_backbone=lambda: build_mlp(widths),
        build_module=classifier_module(protocol.learning_rate),
        train=(split.train_inputs, split.train_labels),
        evaluate=lambda net: evaluate_classifier(net, split.test_inputs, split.test_labels),
        epochs=protocol.epochs,
        batch_size=protocol.batch_size,
        callback_options=callback_options,
        extra_callbacks=[*extra, curve],
    )
    record = result.to_dict()
    record["curve"] = curve.curve
    record["events"] = result.events
    return record


def run_seed(
    seed: int, split: DigitsSplit, protocol: DigitsProtocol, options: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """The three paired runs of one seed (module docstring)."""
    start = (2, 2)
    tiny = _digits_run("tiny", seed, split, protocol, start, {"method": "tiny", **options}, [])
    replay = _digits_run(
        "random replay", seed, split, protocol, start, None, [ReplayGrowth(tiny["events"], seed)]
    )
    fixed = _digits_run("final fixed", seed, split, protocol, tuple(tiny["widths"]), None, [])
    assert replay["widths"] == tiny["widths"], (replay["widths"], tiny["widths"])
    for record in (tiny, replay, fixed):
        record.pop("events", None)
    return {"tiny": tiny, "random replay": replay, "final fixed": fixed}


def parse_seeds(text: str) -> list[int]:
    """``"0-19"`` or ``"0,3,5"`` → list of seeds."""
    if "-" in text:
        low, high = text.split("-")
        return list(range(int(low), int(high) + 1))
    return [int(s) for s in text.split(",")]


def _report(runs: dict[int, dict[str, dict[str, Any]]]) -> None:
    seeds = sorted(runs)
    for metric in ("accuracy", "cross_entropy"):
        tiny = [runs[s]["tiny"]["metrics"][metric] for s in seeds]
        for other in ("random replay", "final fixed"):
            values = [runs[s][other]["metrics"][metric] for s in seeds]
            # Positive = TINY better (higher accuracy, lower cross-entropy).
            a, b = (values, tiny) if metric == "accuracy" else (tiny, values)
            print(f"{metric}: TINY vs {other}: {paired_summary(a, b).text()}")


def main(argv: list[str] | None = None) -> None:
    """Run the seeds, print paired summaries and write every record to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-19")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--fixed", default="", help="fixed widths h (64-h-h-10), comma-separated")
    parser.add_argument("--skip-grown", action="store_true")
    parser.add_argument("--option", action="append", default=[], help="callback arg=value")
    parser.add_argument("--out", default="benchmarks/tiny_vs_random.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    import ast

    options = {k: ast.literal_eval(v) for k, v in (o.split("=", 1) for o in args.option)}
    split = load_digits_split()
    protocol = DigitsProtocol(epochs=args.epochs)
    out = Path(args.out)
    record: dict[str, Any] = {"options": options, "epochs": args.epochs, "grown": {}, "fixed": {}}
    if out.exists():
        record = json.loads(out.read_text())
        record["grown"] = {int(k): v for k, v in record.get("grown", {}).items()}
    for seed in parse_seeds(args.seeds):
        if not args.skip_grown and seed not in record["grown"]:
            started = time.perf_counter()
            record["grown"][seed] = run_seed(seed, split, protocol, options)
            runs = record["grown"][seed]
            print(
                f"seed {seed} [{time.perf_counter() - started:.0f}s] widths "
                f"{runs['tiny']['widths']} acc tiny/replay/fixed "
                + " / ".join(f"{runs[k]['metrics']['accuracy']:.4f}" for k in runs)
                + " CE "
                + " / ".join(f"{runs[k]['metrics']['cross_entropy']:.4f}" for k in runs),
                flush=True,
            )
            out.write_text(json.dumps(record))
        for width in (int(w) for w in args.fixed.split(",") if w):
            key = f"{width}:{seed}"
            if key not in record["fixed"]:
                result = train_fixed((width, width), seed, split, protocol)
                record["fixed"][key] = result.to_dict()
                print(f"fixed h={width} seed {seed}: {result.metrics}", flush=True)
                out.write_text(json.dumps(record))
    if record["grown"]:
        _report(record["grown"])


if __name__ == "__main__":
    main(sys.argv[1:])
