"""Why a grown teacher–student student can end worse than a fixed one of the same width.

For each seed: grow a student with ``GrowthCallback`` (the suite's protocol, defaults unless
``--option`` overrides), then measure what the grown network is like, and what the same
network does when trained on:

* ``test_mse``: the grown student after its 200 epochs;
* ``fixed_mse``: a fixed student of the grown final width, from scratch, 200 epochs;
* ``continued_mse``: the grown network trained 200 more epochs with a fresh Adam (a slow but
  healthy network catches up; one stuck in a poor basin does not);
* ``last_growth_epoch``: when growth ended; ``saturated``: share of (sample, unit) tanh
  pre-activations with ``|z| > 2`` on the test inputs, for the first (initial and early) and the
  last-added half of the units.

Usage::

    PYTHONPATH=. python -m benchmarks.grown_vs_fixed --seeds 0,1,2,7 [--option stop_fraction=0.3]
"""

from __future__ import annotations

import argparse
import ast
import copy
import logging
import sys

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import seed_everything
from benchmarks.digits import train_plain
from benchmarks.lightning_runs import fit_with_trainer, make_loader
from benchmarks.teacher_student import (
    STUDENT_BATCH,
    STUDENT_EPOCHS,
    STUDENT_LR,
    RegressionModule,
    build_student,
    make_teacher_data,
)

__all__ = ["main"]


def _mse(net: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.mse_loss(net(inputs), targets))


def _saturation(net: nn.Module, inputs: torch.Tensor, initial: int) -> tuple[float, float]:
    first = next(m for m in net.modules() if isinstance(m, nn.Linear))
    with torch.no_grad():
        saturated = (first(inputs).abs() > 2.0).float().mean(0)
    return float(saturated[:initial].mean()), float(saturated[initial:].mean())


def grown_report(seed: int, options: dict, data) -> dict[str, float]:
    """One grown student and its diagnostics (module docstring)."""
    from lightning_grow import GrowthCallback

    seed_everything(seed)
    student = build_student(1)
    module = RegressionModule(student)
    loader = make_loader(data.train_inputs, data.train_targets, STUDENT_BATCH, seed)
    callback = GrowthCallback(verbose=False, wandb_tables=False, seed=seed, **options)
    fit_with_trainer(module, loader, STUDENT_EPOCHS, [callback])
    width = next(iter(callback.widths.values()))
    steps_per_epoch = len(loader)
    grown = [event for event in callback.history if event.accepted]
    last = max((event.step for event in grown), default=0) / steps_per_epoch
    half = max(width // 2, 1)
    early_sat, late_sat = _saturation(student, data.test_inputs, half)
    continued = copy.deepcopy(student)
    train_plain(
        continued,
        data.train_inputs,
        data.train_targets,
        seed=seed,
        epochs=STUDENT_EPOCHS,
        batch_size=STUDENT_BATCH,
        learning_rate=STUDENT_LR,
        loss_fn=F.mse_loss,
    )
    seed_everything(seed)
    fixed = build_student(width)
    train_plain(
        fixed,
        data.train_inputs,
        data.train_targets,
        seed=seed,
        epochs=STUDENT_EPOCHS,
        batch_size=STUDENT_BATCH,
        learning_rate=STUDENT_LR,
        loss_fn=F.mse_loss,
    )
    return {
        "width": width,
        "events": len(grown),
        "last_growth_epoch": last,
        "test_mse": _mse(student, data.test_inputs, data.test_targets),
        "train_mse": _mse(student, data.train_inputs, data.train_targets),
        "fixed_mse": _mse(fixed, data.test_inputs, data.test_targets),
        "continued_mse": _mse(continued, data.test_inputs, data.test_targets),
        "saturated_first_half": early_sat,
        "saturated_last_half": late_sat,
    }


def _pad_second_moments_with_their_mean() -> None:
    """Experiment: new entries of ``exp_avg_sq`` start at the old entries' mean, not 0.

    With 0 and the shared step count, Adam's first steps on a new entry are ``lr · (1 − β₁) /
    √(1 − β₂) ≈ 3.2 lr`` and stay above ``lr`` for hundreds of steps (up to 6.5 lr at 10).
    """
    import lightning_grow.surgery.optim as optim

    original = optim._padded_state

    def padded(location, growth):
        state = original(location, growth)
        old = location.optimizer.state.get(growth.old, {})
        if state and "exp_avg_sq" in state and "exp_avg_sq" in old:
            value = state["exp_avg_sq"]
            index = [slice(None)] * value.dim()
            index[growth.dim] = slice(growth.old.shape[growth.dim], None)
            value[tuple(index)] = old["exp_avg_sq"].mean()
        return state

    optim._padded_state = padded


def main(argv: list[str] | None = None) -> None:
    """Print one line of diagnostics per seed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,7")
    parser.add_argument("--option", action="append", default=[], help="callback arg=value")
    parser.add_argument("--label", default="")
    parser.add_argument(
        "--adam-fill",
        choices=("zero", "mean"),
        default="zero",
        help="pad new entries of Adam's exp_avg_sq with 0 (the library) or the tensor's mean",
    )
    args = parser.parse_args(argv)
    if args.adam_fill == "mean":
        _pad_second_moments_with_their_mean()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    pairs = (item.split("=", 1) for item in args.option)
    options = {key: ast.literal_eval(value) for key, value in pairs}
    data = make_teacher_data()
    for seed in (int(s) for s in args.seeds.split(",")):
        report = grown_report(seed, options, data)
        numbers = " ".join(
            f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
            for key, value in report.items()
        )
        print(f"{args.label} seed={seed} {numbers}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
