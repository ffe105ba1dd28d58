"""The compute and memory budget: plans that keep the budget, admission, solves that never raise."""

from __future__ import annotations

import math
import warnings

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_grow import GrowthCallback
from lightning_grow.decision.budget import (
    PairCost,
    PairSampling,
    StatisticsPlan,
    pair_cost,
    pair_memory,
    plan_statistics,
    statistics_flops,
)
from lightning_grow.models import ClassifierModule
from lightning_grow.solver.moments import PairGeometry
from tests.helpers import permissive_callback, quiet_trainer


def conv_geometry(c_in: int, hidden: int, c_out: int) -> PairGeometry:
    return PairGeometry(
        kind="conv",
        in_features=c_in * 9,
        hidden=hidden,
        out_features=c_out,
        first_bias=False,
        second_bias=False,
        first_kernel=(c_in, 3, 3),
        second_kernel=(3, 3),
    )


def test_pair_cost_counts_the_flops_of_the_sums() -> None:
    geometry = conv_geometry(64, 1, 64)
    cost = pair_cost("p", geometry, rows_per_image=1, output_positions=1024, window_samples=10)
    d_x, d_h, d_v, slots = 576, 9, 64, 9
    brute = 2 * (d_x * slots * (d_v + d_h) + (d_v + d_h) * d_h + d_x * d_x)
    assert cost.flops_per_sample == brute
    assert cost.samples_per_image == 1024 and cost.sampled
    statistics_bytes, decision_bytes = pair_memory(geometry)
    sums = (d_v + d_h) * d_h + d_x * d_x + 2 * d_x * slots * (d_v + d_h) + 3
    assert statistics_bytes == 4 * sums
    assert decision_bytes > statistics_bytes


def resnet_like_costs() -> list[PairCost]:
    costs = []
    for index, (c_in, hidden, positions) in enumerate([(64, 1, 1024), (128, 2, 256), (512, 8, 16)]):
        geometry = conv_geometry(c_in, hidden, c_in)
        samples = max(512, 2 * max(geometry.d_x, geometry.d_v * geometry.num_slots))
        costs.append(
            pair_cost(
                f"p{index}",
                geometry,
                rows_per_image=1,
                output_positions=positions,
                window_samples=samples,
            )
        )
    return costs


@pytest.mark.parametrize("budget", [0.01, 0.05, 0.2])
def test_plan_keeps_the_budget_and_still_gathers_a_window(budget: float) -> None:
    costs = resnet_like_costs()
    step, throughput, batch = 1.5, 5e10, 64
    plan = plan_statistics(
        costs,
        batch_size=batch,
        world_size=1,
        step_seconds=step,
        flops_per_second=throughput,
        budget=budget,
    )
    by_name = {c.name: c for c in costs}
    for group, steps in zip(plan.groups, plan.window_steps):
        per_step = 0.0
        for name in group:
            cost, sampling = by_name[name], plan.sampling[name]
            images = sampling.images_per_batch or batch
            positions = sampling.positions or cost.samples_per_image
            per_step += images * positions * cost.flops_per_sample
            # Enough images for the window (the samples of the significance test).
            assert images * steps >= cost.window_samples
        # One step's statistics within the budget (up to the rounding to whole images).
        rounding = sum(by_name[n].flops_per_sample for n in group)
        assert per_step <= budget * step * throughput + rounding * 2


def test_plan_uses_every_sample_when_it_fits_and_without_a_budget() -> None:
    costs = resnet_like_costs()
    common = dict(batch_size=64, world_size=2, step_seconds=1.0, flops_per_second=1e18)
    for budget in (None, 0.05):
        plan = plan_statistics(costs, budget=budget, **common)
        assert plan.groups == [["p0", "p1", "p2"]]
        assert all(
            s.images_per_batch is None and s.positions is None for s in plan.sampling.values()
        )
        assert plan.window_steps == [math.ceil(max(c.window_samples for c in costs) / 128)]


def test_pairs_are_served_in_turn_when_one_window_would_be_too_long() -> None:
    costs = resnet_like_costs()
    common = dict(batch_size=64, world_size=1, step_seconds=1.0, flops_per_second=5e10)
    together = plan_statistics(costs, budget=0.05, **common)
    assert len(together.groups) == 1
    cap = together.window_steps[0] // 2
    in_turn = plan_statistics(costs, budget=0.05, max_window_steps=cap, **common)
    assert len(in_turn.groups) > 1
    assert [name for group in in_turn.groups for name in group] == ["p0", "p1", "p2"]
    # A group of several pairs stays under the cap; a single pair may need more on its own.
    for group, steps in zip(in_turn.groups, in_turn.window_steps):
        assert steps <= cap or len(group) == 1


# ---------------------------------------------------------------- end to end
class _Regression(pl.LightningModule):
    def __init__(self, hidden: int = 2) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, hidden), nn.Tanh(), nn.Linear(hidden, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _loader(samples: int = 512) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 6, generator=generator)
    y = torch.stack([torch.sin(2 * x[:, 0]) * x[:, 1], x[:, 2] * x[:, 3]], dim=1)
    return DataLoader(TensorDataset(x, y), batch_size=32)


def _fit(
    callback: GrowthCallback, module: pl.LightningModule, loader, steps: int, *others: pl.Callback
) -> None:
    trainer = quiet_trainer(
        max_steps=steps,
        callbacks=[callback, *others],
    )
    trainer.fit(module, loader)


def test_a_pair_over_the_memory_budget_is_skipped_and_the_others_grow() -> None:
    class TwoPairs(_Regression):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(6, 2), nn.Tanh(), nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 2)
            )

    module = TwoPairs()
    pl.seed_everything(0, verbose=False)
    from lightning_grow.topology._discovery import discover_pairs

    _, pairs = discover_pairs(module, None, "auto")
    sizes = {pair.name: pair_memory(pair.geometry())[1] for pair in pairs}
    big, small = sorted(sizes, key=sizes.get, reverse=True)
    assert sizes[big] > sizes[small]
    budget = (sizes[big] + sizes[small]) // 2
    callback = permissive_callback(memory_budget=budget)
    with pytest.warns(UserWarning, match=rf"pair {big} is left out.*memory budget"):
        _fit(callback, module, _loader(), 60)
    decided = {event.pair for event in callback.history}
    assert decided == {small}
    assert callback.widths[small] > 2 and callback.widths[big] == 2


def test_a_failing_solve_skips_the_pair_with_a_warning_and_training_goes_on(monkeypatch) -> None:
    import lightning_grow.decision.planner as planner

    real = planner.compute_candidates
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
        return real(*args, **kwargs)

    monkeypatch.setattr(planner, "compute_candidates", flaky)
    callback = permissive_callback()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(callback, _Regression(), _loader(), 40)
    assert any("solve of pair" in str(w.message) and "failed" in str(w.message) for w in caught)
    reasons = [event.reason for event in callback.history]
    assert reasons[0] == "solve failed"
    assert any(event.accepted for event in callback.history[1:])


def test_the_budget_is_honoured_on_a_conv_network() -> None:
    """Samples and positions gathered in a run match the plan, not every sample."""

    class Convs(ClassifierModule):
        pass

    network = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 2, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(2, 16, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )
    module = Convs(network, num_classes=4)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, 16, 16, generator=generator)
    loader = DataLoader(TensorDataset(x, torch.randint(0, 4, (256,))), batch_size=32)
    callback = GrowthCallback(verbose=False, compute_budget=1e-4, stop_fraction=None)
    seen: dict[str, tuple] = {}

    class Inspect(pl.Callback):
        def on_train_end(self, trainer, pl_module) -> None:
            for name, statistics in callback._statistics.items():
                seen[name] = (
                    statistics.images_per_batch,
                    statistics.positions,
                    statistics.num_samples,
                )

    _fit(callback, module, loader, 16, Inspect())
    plan = callback.plan
    assert plan is not None and seen
    for name, (images, positions, collected) in seen.items():
        sampling = plan.sampling[name]
        # A tiny budget forces a random subset: fewer images a batch, few positions an image.
        assert sampling.images_per_batch is not None and sampling.images_per_batch < 32
        assert (images, positions) == (sampling.images_per_batch, sampling.positions)
        # Every batch of the 16 (the first, timed, is drawn from once the plan is known).
        assert 0 < collected <= sampling.images_per_batch * 16
    conv_pairs = [name for name in seen if plan.sampling[name].positions is not None]
    assert conv_pairs, plan.sampling


def test_pairs_that_cannot_be_decided_in_time_are_named() -> None:
    callback = GrowthCallback(verbose=False, statistics_samples=4096, stop_fraction=0.5)
    with pytest.warns(UserWarning, match=r"1 of 1 pairs cannot be decided before growth stops"):
        _fit(callback, _Regression(), _loader(), 24)
    assert callback.history == []


def test_events_count_the_parameters_between_neighbours_that_grow_together() -> None:
    class TwoPairs(_Regression):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(6, 2), nn.Tanh(), nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 2)
            )

    counts: dict[int, int] = {}

    class Count(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            counts[trainer.global_step] = sum(p.numel() for p in pl_module.net.parameters())

    pl.seed_everything(0, verbose=False)
    module = TwoPairs()
    callback = permissive_callback()
    _fit(callback, module, _loader(), 40, Count())
    together = [
        step
        for step in {event.step for event in callback.history}
        if sum(e.accepted for e in callback.history if e.step == step) == 2
    ]
    assert together, "both pairs never grew at the same decision"
    for event in callback.history:
        assert event.total_parameters == counts[event.step], event


def test_statistics_flops_counts_what_each_group_gathers_over_its_turn() -> None:
    costs = [
        PairCost("a", 100.0, 16, 512, True),
        PairCost("b", 10.0, 1, 512, False),
        PairCost("c", 1000.0, 4, 512, True),
    ]
    sampling = {
        "a": PairSampling(images_per_batch=8, positions=2),
        "b": PairSampling(None, None),
        "c": PairSampling(images_per_batch=None, positions=1),
    }
    plan = StatisticsPlan([["a", "b"], ["c"]], [10, 30], sampling, [0.0, 0.0])
    full, planned = statistics_flops(costs, plan, batch_size=32)
    assert full == 32 * 16 * 100 + 32 * 10 + 32 * 4 * 1000
    first_turn = 8 * 2 * 100 + 32 * 1 * 10  # per step, for 10 steps
    second_turn = 32 * 1 * 1000  # per step, for 30 steps
    assert planned == pytest.approx((10 * first_turn + 30 * second_turn) / 40)
