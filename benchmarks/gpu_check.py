"""One-command GPU check (``make gpu-check``): moments, bf16, decisions and cost on the device.

Prints, on the first CUDA device (the CPU with ``--tiny``, which the test suite runs so this
script cannot rot):

1. the relative error of the device's float32 moments against a float64 CPU reference on the
   same batch (a conv→conv pair shaped like the 1/64 ResNet-18's layer 2);
2. ``bf16-mixed`` training steps with statistics kept in float32 (finite, float32 sums);
3. the CIFAR-shaped ResNet-18 (1/64) with ``GrowthCallback`` forced to decide twice: time per
   step with and without the callback and the peak device memory.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from benchmarks.scale import StepTimer, synthetic_cifar
from lightning_grow import GrowthCallback
from lightning_grow.models import ClassifierModule
from lightning_grow.models.builders import CifarResNet18
from lightning_grow.statistics.accumulator import PairStatistics
from lightning_grow.topology.pairs import find_growable_pairs


def moment_errors(device: torch.device, channels: int, size: int) -> dict[str, float]:
    """Relative Frobenius error of float32 moments on ``device`` vs float64 on the CPU."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(channels, 2, 3, padding=1, bias=False),
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.Conv2d(2, channels, 3, padding=1, bias=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, 10),
    )
    x, y = torch.randn(16, channels, size, size), torch.randint(0, 10, (16,))
    results = {}
    reference = copy.deepcopy(model).double()
    fast = copy.deepcopy(model).to(device)
    runs = []
    for net, dtype, dev in ((reference, torch.float64, "cpu"), (fast, torch.float32, device)):
        pair = find_growable_pairs(net)[0]
        stats = PairStatistics(pair, dtype=dtype)
        with stats:
            loss = nn.functional.cross_entropy(net(x.to(dev, dtype)), y.to(dev))
            loss.backward()
        runs.append(stats.moments())
    exact, approx = runs
    for name in ("S", "M", "Sx", "Mx", "P", "v_sq"):
        want = getattr(exact, name)
        got = getattr(approx, name).to("cpu", torch.float64)
        results[name] = float((got - want).norm() / want.norm().clamp_min(1e-300))
    return results


def bf16_steps(device: torch.device, steps: int, batch: int, size: int) -> dict[str, Any]:
    """A few ``bf16-mixed`` steps with the callback collecting: sums stay float32 and finite."""
    data = synthetic_cifar(batch * steps, size=size)
    module = ClassifierModule(CifarResNet18(1 / 64), num_classes=10)
    callback = GrowthCallback(verbose=False, compute_budget=None, stop_fraction=None)
    seen: dict[str, Any] = {}

    class Inspect(pl.Callback):
        def on_train_end(self, trainer, pl_module) -> None:
            for name, stats in callback._statistics.items():
                sums = stats.flat_sums()
                seen[name] = (str(sums.dtype), bool(torch.isfinite(sums).all()), stats.num_samples)

    trainer = _trainer(device, steps, [callback, Inspect()], precision="bf16-mixed")
    trainer.fit(module, DataLoader(data, batch_size=batch))
    return {
        "pairs": len(seen),
        "float32": all(dtype == "torch.float32" for dtype, _, _ in seen.values()),
        "finite": all(finite for _, finite, _ in seen.values()),
        "samples": sum(n for _, _, n in seen.values()),
    }


def _trainer(device: torch.device, steps: int, callbacks: list, **options: Any) -> pl.Trainer:
    return pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        **options,
    )


def resnet_decisions(
    device: torch.device, steps: int, batch: int, size: int, only_layer1: bool
) -> dict[str, Any]:
    """Time per step with/without GrowthCallback forced to decide twice; peak device memory.

    ``only_layer1`` grows the layer-1 pairs alone, without the compute budget (the CPU
    version: a 4608² eigendecomposition of layer 4 takes half a minute on one CPU thread, and
    the budget's pacing would rightly make a second decision wait for minutes of training).
    """
    data = synthetic_cifar(batch * steps, size=size)
    results: dict[str, Any] = {}
    for grow in (False, True):
        pl.seed_everything(0, verbose=False)
        module = ClassifierModule(CifarResNet18(1 / 64), num_classes=10)
        timer = StepTimer()
        callbacks: list = [timer]
        callback = None
        if grow:
            # Short windows so that two decisions fit in a short run.
            callback = GrowthCallback(
                pairs=(lambda pair: "layer1" in pair.name) if only_layer1 else "auto",
                verbose=False,
                statistics_samples=batch * 2,
                held_samples=batch * 2,
                stop_fraction=None,
                patience=None,
                compute_budget=None if only_layer1 else 0.1,
            )
            callbacks.append(callback)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        trainer = _trainer(device, steps, callbacks)
        started = time.perf_counter()
        trainer.fit(module, DataLoader(data, batch_size=batch, shuffle=True))
        key = "grown" if grow else "plain"
        results[f"{key}_fit_s"] = time.perf_counter() - started
        results[f"{key}_median_step_s"] = statistics.median(timer.intervals[1:])
        if device.type == "cuda":
            results[f"{key}_peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        if callback is not None:
            results["decisions"] = callback.schedule.decisions if callback.schedule else 0
            results["accepted"] = sum(event.accepted for event in callback.history)
            results["widths"] = list(callback.widths.values())
            results["timings"] = dict(callback.timings)
    results["step_ratio"] = results["grown_median_step_s"] / results["plain_median_step_s"]
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a seconds-long CPU version")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if args.tiny:
        torch.set_num_threads(1)
    report: dict[str, Any] = {"device": str(device)}
    if device.type == "cuda":
        report["device_name"] = torch.cuda.get_device_name(device)
    channels, size = (8, 8) if args.tiny else (128, 16)
    report["moment_relative_error"] = moment_errors(device, channels, size)
    steps, batch, image = (28, 4, 16) if args.tiny else (200, 128, 32)
    report["bf16"] = bf16_steps(device, 3 if args.tiny else 20, batch, image)
    report["resnet18_1_64"] = resnet_decisions(device, steps, batch, image, args.tiny)
    print(json.dumps(report, indent=1, default=str), flush=True)
    return report


if __name__ == "__main__":
    main()
