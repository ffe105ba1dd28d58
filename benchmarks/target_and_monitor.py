"""Issue 16 items 2 and 3 on digits: growth to a target, and growth that follows validation.

Digits protocol (:mod:`benchmarks.digits`): ``X / 16``, stratified 400-image test split, Adam
lr 1e-3, batch 64, 60 epochs, one hidden layer ``64-h-10`` (ReLU), side by side in one run over
several seeds.

* Item 2: TINY grown from h=4 to ``target={pair: 128}`` by ``target_by`` vs the same h=128
  trained from scratch for the same epochs. Training FLOPs are counted analytically from the
  widths actually in the network at every optimizer step: ``6 × batch × (64·h + h·10)`` (forward
  2 MACs, backward 4; biases and ReLU left out). Growth's own statistics and solves are not in
  that count; they are in the wall time, reported next to it.
* Item 3: 20 % of the training images become a validation split (stratified, per seed); the test
  split is untouched. ``GrowthCallback()`` at defaults, with ``monitor="val/loss"`` and with
  ``monitor="val/acc", monitor_mode="max"``, and fixed widths for reference, all trained on the
  same 80 %.

Run: ``python -m benchmarks.target_and_monitor [--seeds 4] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

from benchmarks.common import (
    count_parameters,
    evaluate_classifier,
    format_mean_std,
    seed_everything,
)
from benchmarks.digits import DigitsProtocol, build_mlp, load_digits_split
from benchmarks.lightning_runs import classifier_module, make_loader

__all__ = ["main", "validation_split"]

PROTOCOL = DigitsProtocol()


class StepFlops(pl.Callback):
    """Training FLOPs of every optimizer step, from the Linear widths in the network then."""

    def __init__(self, network: nn.Module) -> None:
        self.network = network
        self.flops = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        macs = sum(
            m.in_features * m.out_features
            for m in self.network.modules()
            if isinstance(m, nn.Linear)
        )
        self.flops += 6.0 * batch[0].shape[0] * macs


def _fit(
    seed: int,
    hidden: int,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor] | None,
    test: tuple[Tensor, Tensor],
    options: dict[str, Any] | None,
) -> dict[str, float]:
    from lightning_grow import GrowthCallback

    seed_everything(seed)
    backbone = build_mlp([hidden])
    module = classifier_module(PROTOCOL.learning_rate)(backbone)
    flops = StepFlops(backbone)
    callbacks: list[pl.Callback] = [flops]
    if options is not None:
        callbacks.append(
            GrowthCallback(**{"verbose": False, "wandb_tables": False, "seed": seed, **options})
        )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=PROTOCOL.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0 if val is None else 1.0,
        callbacks=callbacks,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        started = time.perf_counter()
        trainer.fit(
            module,
            make_loader(*train, batch_size=PROTOCOL.batch_size, seed=seed),
            None
            if val is None
            else torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*val), batch_size=512),
        )
        seconds = time.perf_counter() - started
    metrics = evaluate_classifier(backbone, *test)
    width = next(m for m in backbone.modules() if isinstance(m, nn.Linear)).out_features
    return {
        "accuracy": metrics["accuracy"],
        "parameters": float(count_parameters(backbone)),
        "flops": flops.flops,
        "seconds": seconds,
        "width": float(width),
    }


def _summarise(
    name: str, runs: list[dict[str, float]], reference: list[dict[str, float]] | None
) -> str:
    columns = [
        name,
        format_mean_std([r["accuracy"] for r in runs]),
        format_mean_std([r["width"] for r in runs], 1),
        format_mean_std([r["parameters"] for r in runs], 0),
    ]
    if reference is not None:
        columns.append(
            format_mean_std([r["flops"] / ref["flops"] for r, ref in zip(runs, reference)])
        )
        columns.append(
            format_mean_std([r["seconds"] / ref["seconds"] for r, ref in zip(runs, reference)])
        )
    return "| " + " | ".join(columns) + " |"


def validation_split(split: Any, seed: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """The monitor part's 80 % train / 20 % validation split of the digits training set."""
    x_train, x_val, y_train, y_val = train_test_split(
        split.train_inputs.numpy(),
        split.train_labels.numpy(),
        test_size=0.2,
        random_state=seed,
        stratify=split.train_labels.numpy(),
    )
    return (torch.from_numpy(x_train), torch.from_numpy(y_train)), (
        torch.from_numpy(x_val),
        torch.from_numpy(y_val),
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--part", choices=("target", "monitor", "both"), default="both")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    split = load_digits_split()
    test = (split.test_inputs, split.test_labels)
    seeds = list(range(args.seeds))
    results: dict[str, Any] = {}
    pair = "backbone.fc1 -> backbone.head"

    def runs(hidden: int, train, val, options) -> list[dict[str, float]]:
        return [_fit(seed, hidden, train(seed), val(seed), test, options) for seed in seeds]

    if args.part in ("target", "both"):

        def full(seed: int) -> tuple[Tensor, Tensor]:
            return split.train_inputs, split.train_labels

        none = lambda seed: None  # noqa: E731
        configs = {
            "h=128 from scratch": (128, None),
            "TINY 4 -> 128 by 0.5": (4, {"target": {pair: 128}, "target_by": 0.5}),
            "TINY 4 -> 128 by 0.8": (4, {"target": {pair: 128}, "target_by": 0.8}),
            "TINY 4 -> 128 by 0.9": (4, {"target": {pair: 128}, "target_by": 0.9}),
        }
        table = {name: runs(h, full, none, options) for name, (h, options) in configs.items()}
        results["target"] = table
        reference = table["h=128 from scratch"]
        print("\n| run | test accuracy | width | parameters | FLOPs / scratch | time / scratch |")
        print("|---|---|---|---|---|---|")
        for name, rows in table.items():
            print(_summarise(name, rows, reference))

    if args.part in ("monitor", "both"):
        train80 = lambda seed: validation_split(split, seed)[0]  # noqa: E731
        val20 = lambda seed: validation_split(split, seed)[1]  # noqa: E731
        configs = {
            "fixed h=128": (128, None),
            "fixed h=40": (40, None),
            "GrowthCallback() defaults": (2, {}),
            "monitor val/loss": (2, {"monitor": "val/loss"}),
            "monitor val/acc (max)": (2, {"monitor": "val/acc", "monitor_mode": "max"}),
        }
        table = {name: runs(h, train80, val20, options) for name, (h, options) in configs.items()}
        results["monitor"] = table
        print("\n| run (train 80 %, val 20 %) | test accuracy | width | parameters |")
        print("|---|---|---|---|")
        for name, rows in table.items():
            print(_summarise(name, rows, None))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    return results


if __name__ == "__main__":
    main()
