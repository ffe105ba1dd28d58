"""The measured overhead account: what growth adds to a fit, and the pauses that keep the budget."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_grow import GrowthCallback
from lightning_grow.callback import _overhead
from lightning_grow.callback._budget_keeper import AUTO_COMPUTE_BUDGET, BudgetKeeper
from lightning_grow.callback._overhead import OverheadAccount
from lightning_grow.models import ClassifierModule
from tests.helpers import permissive_callback, quiet_trainer


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(_overhead.time, "perf_counter", fake)
    return fake


def _run(account: OverheadAccount, clock: FakeClock, kinds: str, decisions: dict[int, float]):
    """Batches by kind (``p`` plain 1.0 s, ``c`` collecting 1.5 s), decisions inside some."""
    for index, kind in enumerate(kinds):
        account.batch_started(collecting=kind == "c")
        clock.now += 1.5 if kind == "c" else 1.0
        if index in decisions:
            clock.now += decisions[index]
            account.decided(decisions[index])
    account.batch_started(collecting=False)  # closes the last interval


def test_account_charges_statistics_extra_and_decisions(clock: FakeClock) -> None:
    account = OverheadAccount(budget=0.1)
    kinds = "pp" + "cccc" + "pppp" + "cccc" + "pp"
    _run(account, clock, kinds, decisions={9: 3.0})
    assert account.plain_seconds == pytest.approx(1.0)
    assert account.statistics_seconds_per_batch == pytest.approx(0.5)
    assert account.collecting_batches == 8
    # 8 collecting batches × 0.5 s extra + one 3 s decision; warm-up batches are never samples.
    added = 8 * 0.5 + 3.0
    assert account.added_seconds == pytest.approx(added)
    fit = 8 * 1.0 + 8 * 1.5 + 3.0  # every interval, by hand
    training = fit - added
    assert account.pause_batches(fallback_batch_seconds=9.9) == math.ceil(added / 0.1 - training)


def test_account_within_budget_does_not_pause(clock: FakeClock) -> None:
    account = OverheadAccount(budget=0.5)
    _run(account, clock, "pp" + "c" + "p" * 20, decisions={})
    assert account.added_seconds == pytest.approx(0.5)
    assert account.pause_batches(fallback_batch_seconds=1.0) == 0


def test_account_falls_back_before_a_plain_batch_is_seen(clock: FakeClock) -> None:
    account = OverheadAccount(budget=0.1)
    _run(account, clock, "ccc", decisions={2: 2.0})
    # No plain interval: only the decision is charged, at the fallback batch time.
    assert account.added_seconds == pytest.approx(2.0)
    training = 3 * 1.5 + 2.0 - 2.0
    assert account.pause_batches(fallback_batch_seconds=2.0) == math.ceil((20.0 - training) / 2)


def test_account_survives_a_checkpoint(clock: FakeClock) -> None:
    account = OverheadAccount(budget=0.1)
    _run(account, clock, "pp" + "cc" + "pp", decisions={5: 1.0})
    restored = OverheadAccount(budget=0.1)
    restored.load_state_dict(account.state_dict())
    assert restored.added_seconds == pytest.approx(account.added_seconds)
    assert restored.pause_batches(1.0) == account.pause_batches(1.0)


@pytest.mark.parametrize("bad", ["fast", -0.1, 0.0, math.nan, math.inf])
def test_compute_budget_is_validated(bad: object) -> None:
    with pytest.raises((ValueError, TypeError), match="compute_budget"):
        GrowthCallback(compute_budget=bad)  # type: ignore[arg-type]


def _fit_small(callback: GrowthCallback) -> GrowthCallback:
    torch.manual_seed(0)
    network = nn.Sequential(nn.Linear(8, 2), nn.Tanh(), nn.Linear(2, 3))
    x = torch.randn(512, 8)
    y = (x[:, :3] * x[:, 3:6]).argmax(dim=1)
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    trainer = quiet_trainer(max_epochs=6, callbacks=[callback])
    trainer.fit(ClassifierModule(network, num_classes=3), loader)
    return callback


def test_explicit_budget_paces_a_small_network_and_auto_does_not() -> None:
    # 1 % of a ~ms step is ~10 µs: a decision (milliseconds of solves and searches) puts
    # growth hundreds of steps in debt, past the fit's 96 steps. The statistics of this MLP
    # fit the budget whole, so the FLOP plan alone would never slow it down; the account does.
    # "auto" leaves a small network unpaced.
    options = dict(statistics_samples=32, held_samples=32)
    starved = _fit_small(permissive_callback(**{**options, "compute_budget": 0.01}))
    auto = _fit_small(permissive_callback(**{**options, "compute_budget": "auto"}))
    decisions = {event.step for event in starved.history}
    assert 1 <= len(decisions) <= 2, sorted(decisions)
    assert len({event.step for event in auto.history}) > 3
    # The account measured what growth added, on the explicit budget's run.
    assert starved.budget.account is not None and starved.budget.account.added_seconds > 0


def test_auto_budget_paces_only_subsampled_networks(clock: FakeClock) -> None:
    keeper = BudgetKeeper("auto", None)
    assert keeper.compute_budget == AUTO_COMPUTE_BUDGET and keeper.account is not None
    keeper.step_seconds = 1.0
    for _ in range(4):
        keeper.batch_started(collecting=False)
        clock.now += 1.0
    clock.now += 5.0  # a 5 s decision inside the 4th batch, against 4 s of training
    keeper.decided(5.0)
    assert keeper.pacing_wait(accumulate=1, subsampled=False) == 0
    assert keeper.pacing_wait(accumulate=1, subsampled=True) == math.ceil(5.0 / 0.1 - 4.0)
    explicit = BudgetKeeper(0.1, None)
    assert explicit.pace_every_network and not keeper.pace_every_network


def test_a_pause_past_the_growth_period_is_announced_once() -> None:
    keeper = BudgetKeeper(0.1, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        keeper.warn_if_paced_out(step=10, wait=39, stop=50)  # ends before step 50
        keeper.warn_if_paced_out(step=10, wait=5, stop=None)
    with pytest.warns(UserWarning, match=r"pauses it for 40 steps, past .*\(step 50\)"):
        keeper.warn_if_paced_out(step=10, wait=40, stop=50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        keeper.warn_if_paced_out(step=20, wait=400, stop=50)  # said once


def test_no_pause_is_not_announced_at_the_last_decision() -> None:
    keeper = BudgetKeeper(0.1, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        keeper.warn_if_paced_out(step=50, wait=0, stop=50)
