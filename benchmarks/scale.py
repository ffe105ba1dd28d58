"""Growth at scale: the CIFAR ResNet-18 (1/64 interiors) and the full-width torchvision ResNet-18.

``python -m benchmarks.scale [--models resnet18_1_64,resnet18_full] [--steps N] [--batch B]``
trains each network on a learnable synthetic CIFAR-shaped task twice, without and with
``GrowthCallback()`` (defaults), each run in its own process (so peak RSS is its own), and
prints side by side: median and mean time per step and their ratios, the callback's own
phases, the statistics plan, peak RSS, and the widths reached. Results accumulate in
``benchmarks/scale_results.json``.

The task: smooth random images (low-frequency noise, so convolutions have structure to find)
labelled by a fixed random teacher CNN (argmax of its logits): learnable, offline, and wide
enough that a 1/64 network is an expressivity bottleneck.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
import torchvision
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from lightning_grow import GrowthCallback
from lightning_grow.decision.budget import statistics_flops
from lightning_grow.models import ClassifierModule
from lightning_grow.models.builders import CifarResNet18

RESULTS = Path(__file__).with_name("scale_results.json")


def synthetic_cifar(
    samples: int, seed: int = 0, classes: int = 10, size: int = 32
) -> TensorDataset:
    """Smooth random ``size``×``size`` images labelled by a fixed random teacher CNN."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(samples, 3, size // 4, size // 4, generator=generator)
    images = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    images = images + 0.1 * torch.randn(samples, 3, size, size, generator=generator)
    teacher = nn.Sequential(
        nn.Conv2d(3, 32, 5, padding=2),
        nn.Tanh(),
        nn.AvgPool2d(4),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(128, classes),
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed + 1)
        for module in teacher.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(module.weight, std=1.5 / module.weight[0].numel() ** 0.5)
        with torch.no_grad():
            logits = torch.cat([teacher(chunk) for chunk in images.split(1024)])
    return TensorDataset(images, logits.argmax(dim=1))


class StepTimer(Callback):
    """Wall time of every training batch (from its start to the next batch's start)."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        self.starts.append(time.perf_counter())

    @property
    def intervals(self) -> list[float]:
        return [b - a for a, b in zip(self.starts, self.starts[1:])]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def training_step_flops(network: nn.Module, images: torch.Tensor) -> float:
    """FLOPs of one forward and backward pass of the initial network (torch's flop counter)."""
    counter = FlopCounterMode(display=False)
    with counter:
        network(images).sum().backward()
    network.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def run(network: nn.Module, data: TensorDataset, steps: int, batch: int, grow: bool) -> dict:
    pl.seed_everything(0, verbose=False)
    model = ClassifierModule(
        network,
        num_classes=10,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    )
    timer = StepTimer()
    callbacks: list[Callback] = [timer]
    growth = GrowthCallback(verbose=True) if grow else None
    if growth is not None:
        callbacks.append(growth)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
    )
    loader = DataLoader(data, batch_size=batch, shuffle=True, drop_last=True)
    training_flops = training_step_flops(network, data.tensors[0][:batch])
    started = time.perf_counter()
    trainer.fit(model, loader)
    elapsed = time.perf_counter() - started
    intervals = timer.intervals[1:]  # the first step carries one-off warm-up
    result: dict[str, Any] = {
        "median_step_s": statistics.median(intervals),
        "mean_step_s": statistics.fmean(intervals),
        # Quartiles of the step time: the spread the shared machine's load puts on the medians.
        "step_quartiles_s": statistics.quantiles(intervals, n=4) if len(intervals) > 1 else [],
        "fit_s": elapsed,
        "peak_rss_mb": peak_rss_mb(),
        "training_gflop_per_step": training_flops / 1e9,
    }
    if growth is not None:
        result["timings"] = dict(growth.timings)
        result["widths"] = growth.widths
        result["decisions"] = growth.schedule.decisions if growth.schedule else 0
        result["accepted"] = sum(event.accepted for event in growth.history)
        # Why each pair did or did not grow: the first thing to read when nothing grew.
        result["events"] = [
            {
                "step": event.step,
                "pair": event.pair,
                "reason": event.reason,
                "significant": event.num_significant,
                "gain": round(event.expressivity_gain, 5),
                "amplitude": event.amplitude,
            }
            for event in growth.history
        ]
        result["plan"] = growth.budget.describe(growth.plan) if growth.plan else ""
        if growth.plan is not None:
            full, planned = statistics_flops(growth.budget.costs, growth.plan, batch)
            result["statistics_gflop_per_step"] = {
                "every_sample": full / 1e9,
                "planned": planned / 1e9,
            }
    return result


MODELS = {
    "resnet18_1_64": lambda: CifarResNet18(1 / 64),
    "resnet18_full": lambda: torchvision.models.resnet18(num_classes=10),
}


def _one(model: str, grow: bool, args: argparse.Namespace) -> dict:
    """One run in its own process, so that its peak RSS is its own."""
    return _collect(model, grow, _launch(model, grow, args))


def _launch(model: str, grow: bool, args: argparse.Namespace) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "benchmarks.scale",
        "--one",
        f"{model}:{int(grow)}",
        *("--steps", str(args.steps), "--batch", str(args.batch)),
        *("--threads", str(args.threads), "--samples", str(args.samples)),
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _collect(model: str, grow: bool, process: subprocess.Popen) -> dict:
    stdout, stderr = process.communicate()
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"{model} grow={grow} failed:\n{stdout[-3000:]}{stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument(
        "--models", default="resnet18_1_64", help="comma-separated: " + ", ".join(MODELS)
    )
    parser.add_argument(
        "--together",
        action="store_true",
        help="run without and with the callback at the same time (one process each), so that "
        "both see the same load of a shared machine",
    )
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.one is not None:
        model, grow = args.one.split(":")
        data = synthetic_cifar(args.samples)
        result = run(MODELS[model](), data, args.steps, args.batch, grow == "1")
        print("RESULT " + json.dumps(result, default=str), flush=True)
        return result
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for model in args.models.split(","):
        entry: dict[str, Any] = {"args": vars(args)}
        if args.together:
            running = {grow: _launch(model, grow, args) for grow in (False, True)}
        for grow in (False, True):
            key = "grown" if grow else "plain"
            entry[key] = (
                _collect(model, grow, running[grow]) if args.together else _one(model, grow, args)
            )
            print(model, key, json.dumps({k: v for k, v in entry[key].items() if k != "plan"}))
        plain, grown = entry["plain"], entry["grown"]
        entry["median_step_ratio"] = grown["median_step_s"] / plain["median_step_s"]
        entry["mean_step_ratio"] = grown["mean_step_s"] / plain["mean_step_s"]
        entry["fit_ratio"] = grown["fit_s"] / plain["fit_s"]
        entry["rss_ratio"] = grown["peak_rss_mb"] / plain["peak_rss_mb"]
        entry["callback_share"] = sum(grown["timings"].values()) / grown["fit_s"]
        print(grown["plan"])
        print(
            f"{model}, batch {args.batch}, {args.steps} steps, {args.threads} thread(s): median "
            f"step {plain['median_step_s']:.3f} s without, {grown['median_step_s']:.3f} s with "
            f"GrowthCallback() (x{entry['median_step_ratio']:.3f}); mean x"
            f"{entry['mean_step_ratio']:.3f}; fit x{entry['fit_ratio']:.3f}; callback phases "
            f"{entry['callback_share']:.1%} of the fit ({grown['timings']}); peak RSS "
            f"{plain['peak_rss_mb']:.0f} -> {grown['peak_rss_mb']:.0f} MB "
            f"(x{entry['rss_ratio']:.2f}); {grown['decisions']} decisions, {grown['accepted']} "
            f"accepted; widths {list(grown['widths'].values())}",
        )
        flops = grown.get("statistics_gflop_per_step")
        if flops:
            training = plain["training_gflop_per_step"]
            print(
                f"statistics GFLOP per step: {flops['every_sample']:.1f} with every sample "
                f"({flops['every_sample'] / training:.1f}x training's {training:.2f}), "
                f"{flops['planned']:.2f} as planned ({flops['planned'] / training:.3f}x)",
                flush=True,
            )
        results[model] = entry
    RESULTS.write_text(json.dumps(results, indent=1, default=str))
    return results


if __name__ == "__main__":
    main()
