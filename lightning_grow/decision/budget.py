"""The compute and memory budget of growth: what statistics cost, and how to gather them cheaply.

Pure planning, no Lightning: the callback measures the training step and the device's matrix
throughput once, and this module turns them into a statistics plan that every rank follows.

Cost model
----------
A pair's statistics are a few GEMMs per *position sample* (an output position of a conv→conv
pair, or one image/token row otherwise): ``2·d_x·J·(d_v + d_h)`` FLOPs for ``XR``,
``2·(d_v + d_h)·d_h`` for ``RH`` and ``2·d_x²`` for ``Sx`` (one hidden position per sampled
output position). They run at the device's GEMM throughput ``G`` (measured). A window needs
``N_p`` images of pair ``p`` (positions of one image are correlated: images are the samples of
the significance test). The budget says statistics may add at most ``β`` times the training
step time ``T``; one position of each of ``N_p`` images costs ``N_p c_p`` FLOPs, so a window is
spread over ``W ≥ Σ N_p c_p / (β T G)`` steps (see :func:`plan_statistics`). Pairs whose
windows together would outlast ``max_window_steps`` are served in turn, in network order (the
paper grows one depth at a time).

Memory model
------------
A pair holds its float32 sums while its window is open, and at its decision a float64 copy of
its moments plus the eigendecomposition and SVD work space. :func:`pair_memory` gives both; a
pair over the memory budget is left out of growth (with a warning naming it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lightning_grow.solver.moments import PairGeometry

__all__ = [
    "PairCost",
    "PairSampling",
    "StatisticsPlan",
    "gemm_throughput",
    "pair_cost",
    "pair_memory",
    "plan_statistics",
    "statistics_flops",
]


@dataclass(frozen=True)
class PairCost:
    """What one pair's statistics cost.

    Attributes
    ----------
    name
        The pair.
    flops_per_sample
        FLOPs of one position sample (see module docstring).
    samples_per_image
        Positions one image offers (``L`` for conv→conv, 1 otherwise: a whole image, or a whole
        sequence, is one sample there).
    window_samples
        Images one statistics window needs.
    sampled
        Whether positions can be drawn (conv→conv); otherwise only whole images are drawn.
    """

    name: str
    flops_per_sample: float
    samples_per_image: int
    window_samples: int
    sampled: bool


@dataclass(frozen=True)
class PairSampling:
    """How one pair samples each batch: ``None`` means all images / all positions."""

    images_per_batch: int | None
    positions: int | None


@dataclass
class StatisticsPlan:
    """Which pairs collect together, for how many steps, and how they sample.

    Attributes
    ----------
    groups
        Pair names collecting in the same window, served in this order, round robin.
    window_steps
        Optimizer steps of each group's window.
    sampling
        Per pair name.
    seconds_per_step
        Predicted statistics time per step of each group's window.
    """

    groups: list[list[str]]
    window_steps: list[int]
    sampling: dict[str, PairSampling]
    seconds_per_step: list[float]

    def to_dict(self) -> dict:
        """Plain types, for checkpoints."""
        return {
            "groups": [list(group) for group in self.groups],
            "window_steps": list(self.window_steps),
            "sampling": {
                name: [s.images_per_batch, s.positions] for name, s in self.sampling.items()
            },
            "seconds_per_step": list(self.seconds_per_step),
        }

    @classmethod
    def from_dict(cls, state: dict) -> StatisticsPlan:
        """Inverse of :meth:`to_dict`."""
        sampling = {name: PairSampling(*value) for name, value in state["sampling"].items()}
        return cls(
            [list(group) for group in state["groups"]],
            list(state["window_steps"]),
            sampling,
            list(state["seconds_per_step"]),
        )

    def subsampled(self, names: Sequence[str]) -> bool:
        """Whether any of these pairs gathers a random subset of images or positions."""
        return any(
            self.sampling[name].images_per_batch is not None
            or self.sampling[name].positions is not None
            for name in names
        )


def pair_cost(
    name: str,
    geometry: PairGeometry,
    *,
    rows_per_image: int,
    output_positions: int,
    window_samples: int,
) -> PairCost:
    """The cost model of one pair.

    Parameters
    ----------
    rows_per_image
        Rows one image contributes to a linear pair (tokens of a sequence; 1 for plain vectors).
    output_positions
        ``L``: output positions of ``second`` per image (conv→conv), else ignored.
    window_samples
        Position samples per window.
    """
    d_x, d_h, d_v, slots = geometry.d_x, geometry.d_h, geometry.d_v, geometry.num_slots
    columns = d_v + d_h
    per_row = 2.0 * (d_x * slots * columns + columns * d_h + d_x * d_x)
    if geometry.kind == "conv":
        return PairCost(name, per_row, max(output_positions, 1), window_samples, True)
    if geometry.kind == "conv_linear":
        # One image: Sx over its J hidden positions, XR over the J·d_x rows, RH once.
        per_image = 2.0 * (d_x * d_x * slots + d_x * slots * columns + columns * d_h)
        return PairCost(name, per_image, 1, window_samples, False)
    return PairCost(name, per_row * max(rows_per_image, 1), 1, window_samples, False)


def pair_memory(geometry: PairGeometry) -> tuple[int, int]:
    """``(statistics bytes, decision bytes)`` of a pair: its float32 sums while collecting, and
    the peak of its solve (the sums, their float64 moments, eigendecomposition and SVD space)."""
    d_x, d_h, d_v, slots = geometry.d_x, geometry.d_h, geometry.d_v, geometry.num_slots
    columns = d_v + d_h
    sums = columns * d_h + d_x * d_x + 2 * d_x * slots * columns + 3
    statistics_bytes = 4 * sums
    moments_f64 = 8 * (columns * d_h + d_x * d_x + 2 * d_x * slots * columns)
    # Two eigendecompositions (Sx, S) and their inverse roots; the whitened N and its SVD.
    work_f64 = 8 * (4 * d_x * d_x + 4 * d_h * d_h + 3 * d_x * d_v * slots)
    return statistics_bytes, statistics_bytes + moments_f64 + work_f64


def gemm_throughput(device: torch.device | str, size: int = 768, repeats: int = 3) -> float:
    """Measured float32 matrix-product FLOP/s on ``device`` (the best of a few products)."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    best = math.inf
    for _ in range(repeats + 1):  # the first product warms the kernels up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2.0 * size**3 / max(best, 1e-9)


def _window(costs: Sequence[PairCost], per_step_images: int, budget_flops_per_step: float) -> int:
    """Steps one window needs: enough images for every pair, one position each within budget."""
    total = sum(c.window_samples * c.flops_per_sample for c in costs)
    by_budget = math.ceil(total / max(budget_flops_per_step, 1.0))
    by_data = max(math.ceil(c.window_samples / per_step_images) for c in costs)
    return max(by_budget, by_data, 1)


def plan_statistics(
    costs: Sequence[PairCost],
    *,
    batch_size: int,
    world_size: int,
    step_seconds: float,
    flops_per_second: float,
    budget: float | None,
    max_window_steps: int | None = None,
) -> StatisticsPlan:
    """Plan the statistics windows so that they cost at most ``budget × step_seconds`` a step.

    Every pair needs ``window_samples`` images per window (as without a budget). Where every
    image and position of every step fits the budget, all are used. Otherwise the window is
    stretched until one position per image fits (``W ≥ Σ N_p c_p / allowance``), each step draws
    ``N_p / W`` images of pair ``p``, and the pair's share of the allowance (proportional to
    ``N_p c_p``) buys further positions of those images.

    Parameters
    ----------
    costs
        The pairs, in network order.
    batch_size, world_size
        Images per step on each rank, and ranks.
    step_seconds
        Measured training step time without statistics.
    flops_per_second
        Measured GEMM throughput of the device.
    budget
        Share of the step time statistics may add (``None``: no limit, every sample is used,
        all pairs collect together).
    max_window_steps
        Longest acceptable window; pairs are split into groups (served in turn) to stay below
        it where possible.
    """
    if not costs:
        return StatisticsPlan([], [], {}, [])
    per_step = batch_size * world_size
    if budget is None:
        steps = _window(costs, per_step, math.inf)
        sampling = {c.name: PairSampling(None, None) for c in costs}
        return StatisticsPlan([[c.name for c in costs]], [steps], sampling, [0.0])
    allowance = budget * step_seconds * flops_per_second

    groups: list[list[PairCost]] = [[]]
    for cost in costs:
        candidate = [*groups[-1], cost]
        # A pair joins the current group unless it would stretch the group's window beyond
        # both the cap and what the group needed already (pairs of one stage need about the
        # same window: they stay together; a wider stage does not hold a narrower one back).
        limit = None
        if max_window_steps is not None and len(candidate) > 1:
            limit = max(max_window_steps, _window(groups[-1], per_step, allowance))
        if limit is not None and _window(candidate, per_step, allowance) > limit:
            groups.append([cost])
        else:
            groups[-1] = candidate

    plan = StatisticsPlan([], [], {}, [])
    for group in groups:
        full = sum(batch_size * c.samples_per_image * c.flops_per_sample for c in group)
        if full <= allowance:  # every image and position fits the budget: use them all
            steps = _window(group, per_step, math.inf)
            plan.sampling.update({c.name: PairSampling(None, None) for c in group})
            seconds = full
        else:
            steps = _window(group, per_step, allowance)
            window_cost = sum(c.window_samples * c.flops_per_sample for c in group)
            seconds = 0.0
            for cost in group:
                images = min(batch_size, math.ceil(cost.window_samples / (steps * world_size)))
                share = allowance * cost.window_samples * cost.flops_per_sample / window_cost
                positions = int(share // (images * cost.flops_per_sample))
                positions = min(cost.samples_per_image, max(1, positions))
                exact = not cost.sampled or positions >= cost.samples_per_image
                plan.sampling[cost.name] = PairSampling(
                    images_per_batch=None if images >= batch_size else images,
                    positions=None if exact else positions,
                )
                used = cost.samples_per_image if exact else positions
                seconds += images * used * cost.flops_per_sample
        plan.groups.append([cost.name for cost in group])
        plan.window_steps.append(steps)
        plan.seconds_per_step.append(seconds / flops_per_second)
    return plan


def statistics_flops(
    costs: Sequence[PairCost], plan: StatisticsPlan, batch_size: int
) -> tuple[float, float]:
    """``(every sample, as planned)``: statistics FLOPs per training step on one rank.

    *Every sample* is all pairs collecting every image and position at once (no budget); *as
    planned* averages the groups' per-step cost over their turns (weighted by window length),
    from the plan's sampling.
    """
    by_name = {cost.name: cost for cost in costs}
    full = sum(batch_size * c.samples_per_image * c.flops_per_sample for c in costs)
    total, steps = 0.0, 0
    for group, window in zip(plan.groups, plan.window_steps):
        per_step = 0.0
        for name in group:
            cost, sampling = by_name[name], plan.sampling[name]
            images = sampling.images_per_batch or batch_size
            positions = sampling.positions or cost.samples_per_image
            per_step += images * positions * cost.flops_per_sample
        total += per_step * window
        steps += window
    return full, total / max(steps, 1)
