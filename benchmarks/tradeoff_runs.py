"""The few runs the trade-off picture (issue 16, item 4) needs beyond the stored JSONs.

Every run counts its training FLOPs like :mod:`benchmarks.target_and_monitor`:
``6 × batch × Σ in·out`` over the Linear layers in the network at each optimizer step (growth's
statistics, solves and amplitude search are not counted).

* ``teacher``: the teacher–student task of :mod:`benchmarks.teacher_student` (16-h-8, tanh, 200
  epochs), TINY grown from h=1 to a target width (``target=32.0`` / ``64.0``, a multiplier of the
  starting width) by half of training.
* ``digits2``: the section-1 protocol (64-h-h-10 from [2, 2], 60 epochs), TINY grown to the
  widths of the fixed h=32 and h=64 baselines (``target=16.0`` / ``32.0``) by half of training.
* ``digits1 full`` / ``digits1 val``: fixed widths of the one-hidden-layer protocol of
  :mod:`benchmarks.target_and_monitor` (64-h-10, trained on the whole training split / on its
  80 % with the 20 % validation loader), so that its target and monitor runs have a fixed-width
  curve to be compared with.
* ``teacher: fixed h=32 / 64 (train MSE)``: section 4's fixed students again (same seeds, same
  plain loop), only to record their training MSE next to the grown students'.

Run: ``python -m benchmarks.tradeoff_runs [--seeds 3] [--json benchmarks/tradeoff_runs.json]``
(one thread, a few minutes).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from benchmarks.common import evaluate_classifier, evaluate_regressor
from benchmarks.digits import DigitsProtocol, build_mlp, load_digits_split
from benchmarks.lightning_runs import classifier_module, run_lightning
from benchmarks.target_and_monitor import _fit, validation_split
from benchmarks.teacher_student import (
    STUDENT_BATCH,
    STUDENT_EPOCHS,
    RegressionModule,
    build_student,
    make_teacher_data,
    train_fixed_student,
)

__all__ = ["ModuleFlops", "main"]


class ModuleFlops(pl.Callback):
    """Training FLOPs of every optimizer step, from the Linear layers of the module then."""

    def __init__(self) -> None:
        self.flops = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        macs = sum(
            m.in_features * m.out_features for m in pl_module.modules() if isinstance(m, nn.Linear)
        )
        self.flops += 6.0 * batch[0].shape[0] * macs


def _record(result: Any, flops: float, metric: str) -> dict[str, Any]:
    return {
        "seed": result.seed,
        **result.metrics,
        "parameters": float(result.parameters),
        "flops": flops,
        "widths": result.widths,
        "seconds": result.fit_seconds,
        "width_trajectory": result.width_trajectory,
    }


def _teacher_metrics(net: nn.Module, data: Any) -> dict[str, float]:
    """Test MSE, training MSE (tells under-fitting from over-fitting) and near-constant units.

    A hidden unit whose input weights have norm < 0.15 is nearly constant on these N(0, I)
    inputs (tanh of a pre-activation with sd < 0.15): the measure of section 7's bisect note.
    """
    train = evaluate_regressor(net, data.train_inputs, data.train_targets)["mse"]
    first = next(m for m in net.modules() if isinstance(m, nn.Linear))
    near_constant = int((first.weight.detach().norm(dim=1) < 0.15).sum())
    return {
        **evaluate_regressor(net, data.test_inputs, data.test_targets),
        "train_mse": train,
        "near_constant_units": near_constant,
    }


def _teacher_fixed(seed: int, width: int) -> dict[str, Any]:
    """Section 4's fixed student (plain loop), re-run only to record its training MSE."""
    data = make_teacher_data()
    student, seconds = train_fixed_student(width, seed, data)
    flops = 6.0 * len(data.train_inputs) * STUDENT_EPOCHS * 24 * width
    return {"seed": seed, **_teacher_metrics(student, data), "flops": flops, "seconds": seconds}


def _teacher(seed: int, multiplier: float | None) -> dict[str, Any]:
    """A student grown from h=1: to ``multiplier`` × its start by half of training, or
    right-sized by ``GrowthCallback()``'s defaults (``None``)."""
    data = make_teacher_data()
    counter = ModuleFlops()
    options = {} if multiplier is None else {"target": multiplier, "target_by": 0.5}
    result = run_lightning(
        name="teacher right-sized" if multiplier is None else f"teacher to {multiplier:g}",
        seed=seed,
        build_backbone=lambda: build_student(1),
        build_module=RegressionModule,
        train=(data.train_inputs, data.train_targets),
        evaluate=lambda net: _teacher_metrics(net, data),
        epochs=STUDENT_EPOCHS,
        batch_size=STUDENT_BATCH,
        callback_options=options,
        extra_callbacks=[counter],
    )
    return _record(result, counter.flops, "mse")


def _digits2(seed: int, multiplier: float) -> dict[str, Any]:
    protocol, split = DigitsProtocol(), load_digits_split()
    counter = ModuleFlops()
    result = run_lightning(
        name=f"digits to {multiplier:g}",
        seed=seed,
        build_backbone=lambda: build_mlp((2, 2)),
        build_module=classifier_module(protocol.learning_rate),
        train=(split.train_inputs, split.train_labels),
        evaluate=lambda net: {
            **evaluate_classifier(net, split.test_inputs, split.test_labels),
            **{
                f"train_{k}": v
                for k, v in evaluate_classifier(net, split.train_inputs, split.train_labels).items()
            },
        },
        epochs=protocol.epochs,
        batch_size=protocol.batch_size,
        callback_options={"target": multiplier, "target_by": 0.5},
        extra_callbacks=[counter],
    )
    return _record(result, counter.flops, "accuracy")


def _digits1(seed: int, hidden: int, validation: bool) -> dict[str, Any]:
    split = load_digits_split()
    train = split.train_inputs, split.train_labels
    val = None
    if validation:  # the 80 / 20 split of target_and_monitor's monitor part
        train, val = validation_split(split, seed)
    run = _fit(seed, hidden, train, val, (split.test_inputs, split.test_labels), None)
    return {"seed": seed, **run}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", default="benchmarks/tradeoff_runs.json")
    parser.add_argument("--only", nargs="*", default=None, help="configuration names to run")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    configs = {
        "teacher: TINY right-sized (defaults)": lambda s: _teacher(s, None),
        "teacher: TINY to h=32 by 0.5": lambda s: _teacher(s, 32.0),
        "teacher: TINY to h=64 by 0.5": lambda s: _teacher(s, 64.0),
        "teacher: fixed h=32 (train MSE)": lambda s: _teacher_fixed(s, 32),
        "teacher: fixed h=64 (train MSE)": lambda s: _teacher_fixed(s, 64),
        "digits2: TINY to h=32 by 0.5": lambda s: _digits2(s, 16.0),
        "digits2: TINY to h=64 by 0.5": lambda s: _digits2(s, 32.0),
        **{
            f"digits1 full: fixed h={h}": (lambda s, h=h: _digits1(s, h, False))
            for h in (8, 16, 32, 64)
        },
        **{
            f"digits1 val: fixed h={h}": (lambda s, h=h: _digits1(s, h, True))
            for h in (8, 16, 64, 512, 2048)
        },
    }
    try:
        with open(args.json) as handle:
            results: dict[str, Any] = json.load(handle)
    except FileNotFoundError:
        results = {}
    for name, run in configs.items():
        if args.only is not None and name not in args.only:
            continue
        results[name] = []
        for seed in range(args.seeds):
            started = time.perf_counter()
            results[name].append(run(seed))
            print(f"{name} seed {seed}: {time.perf_counter() - started:.1f} s", flush=True)
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    return results


if __name__ == "__main__":
    main()
