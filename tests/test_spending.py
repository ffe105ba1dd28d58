"""The callback's error rate: alpha spending over repeated tests, and the held-out confirmation."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy.stats import binomtest, norm
from torch import nn

from lightning_grow.callback._held import split_batches
from lightning_grow.decision.planner import GrowthConfig, _decide_pair
from lightning_grow.decision.spending import AlphaSpending, spent_level
from lightning_grow.reporting.events import Reason
from tests.helpers import tanh_unit_setup


def test_levels_sum_to_alpha_exactly() -> None:
    # Independent computation: exact rationals, partial sums against the closed form.
    alpha = Fraction(1, 20)
    total = Fraction(0)
    for k in range(1, 200):
        level = alpha / (k * (k + 1))
        assert spent_level(0.05, k) == pytest.approx(float(level), rel=1e-15)
        total += level
        assert total == alpha * k / (k + 1)
    assert total < alpha


@pytest.mark.parametrize("pairs", [1, 2, 7])
def test_margin_is_the_normal_quantile_of_the_shared_level(pairs: int) -> None:
    spending = AlphaSpending(0.05)
    for k in range(1, 30):
        expected = norm.isf(0.05 / (k * (k + 1)) / pairs)  # scipy's quantile, not ours
        assert spending.margin(pairs) == pytest.approx(expected, rel=1e-9)
        spending.record(grew=False)


def test_a_growth_restarts_the_account_and_the_state_round_trips() -> None:
    spending = AlphaSpending(0.05)
    first = spending.margin(2)
    for _ in range(5):
        spending.record(grew=False)
    assert spending.margin(2) > first
    restored = AlphaSpending(0.05)
    restored.load_state_dict(spending.state_dict())
    assert restored.margin(2) == spending.margin(2)
    spending.record(grew=True)
    assert spending.margin(2) == first
    with pytest.raises(ValueError, match="alpha"):
        AlphaSpending(0.0)


def _false_growth_rate(margins: np.ndarray, runs: int, windows: int, rng) -> float:
    """Share of simulated null runs where any test passes.

    Each decision tests the accumulated samples of up to ``windows`` windows (an extended
    window re-tests the previous ones' samples, so consecutive statistics are correlated, as in
    the callback): the k-th statistic is a sum of k unit normals over √k, a standard normal.
    """
    decisions = margins.shape[0]
    fresh = rng.standard_normal((runs, decisions))
    passed = np.zeros(runs, dtype=bool)
    total = np.zeros(runs)
    count = 0
    for k in range(decisions):
        if count == windows:
            total[:], count = 0.0, 0
        total += fresh[:, k]
        count += 1
        passed |= total / math.sqrt(count) > margins[k]
    return float(passed.mean())


def test_the_whole_run_meets_the_stated_rate_where_a_fixed_margin_does_not() -> None:
    rng = np.random.default_rng(0)
    runs, decisions, alpha = 40_000, 120, 0.05
    spending = AlphaSpending(alpha)
    margins = []
    for _ in range(decisions):
        margins.append(spending.margin(1))
        spending.record(grew=False)
    rate = _false_growth_rate(np.array(margins), runs, windows=16, rng=rng)
    # The union bound allows up to α; correlated re-tests make the real rate lower.
    assert binomtest(round(rate * runs), runs, alpha, alternative="greater").pvalue > 1e-3
    assert rate > 0.01  # and the spending is not so strict that it never passes
    # Independent tests reach the bound's exact complement 1 − Π(1 − α_k) (float64 product).
    independent = _false_growth_rate(np.array(margins), runs, windows=1, rng=rng)
    exact = 1.0 - math.prod(1.0 - alpha / (k * (k + 1)) for k in range(1, decisions + 1))
    assert binomtest(round(independent * runs), runs, exact).pvalue > 1e-3
    # The old fixed margin 1.0 over the same tests: far above α (why spending is needed).
    fixed = _false_growth_rate(np.full(decisions, 1.0), 4_000, windows=16, rng=rng)
    assert fixed > 0.5


def test_split_batches_gives_disjoint_halves_covering_every_sample() -> None:
    batches = [(torch.arange(4) + 4 * i, torch.zeros(4)) for i in range(4)]
    choose, confirm = split_batches(batches)
    assert choose[0][0].tolist() == list(range(8))
    assert confirm[0][0].tolist() == list(range(8, 16))
    (single_choose,), (single_confirm,) = split_batches([{"x": torch.arange(5)}])
    assert single_choose["x"].tolist() == [0, 1]
    assert single_confirm["x"].tolist() == [2, 3, 4]
    # Something that cannot be cut is used whole by both (the old behaviour).
    assert split_batches(["text"]) == (["text"], ["text"])


def _pair_and_losses(confirm_sign: float):
    setup = tanh_unit_setup()
    net, inputs, base, feature = setup.net, setup.inputs, setup.base, setup.feature
    # A unit tanh(x₀) feeding output 0 helps on the choosing samples; on the confirming ones
    # the targets carry it with the opposite sign, so the chosen (positive) amplitude hurts.
    choose_targets = base + 0.5 * feature
    confirm_targets = base + confirm_sign * 0.5 * feature

    def loss(targets):
        return lambda: float(nn.functional.mse_loss(net(inputs), targets))

    return setup.pair, setup.candidate, setup.decision, loss(choose_targets), loss(confirm_targets)


@pytest.mark.parametrize(("confirm_sign", "grows"), [(1.0, True), (-1.0, False)])
def test_the_decrease_must_hold_on_samples_that_did_not_choose(confirm_sign, grows) -> None:
    pair, candidate, decision, choose, confirm = _pair_and_losses(confirm_sign)
    config = GrowthConfig(min_loss_decrease=1e-3)
    with torch.no_grad():
        outcome = _decide_pair(pair, candidate, decision, choose, config, confirm)
        unconfirmed = _decide_pair(pair, candidate, decision, choose, config)
    assert unconfirmed.reason is Reason.GROWN  # the choosing samples alone always accept
    assert (outcome.reason is Reason.GROWN) is grows
    assert (outcome.neurons is not None) is grows
    if not grows:
        assert outcome.loss_after > outcome.loss_before  # reported on the confirming samples


def test_the_callback_tests_each_decision_at_the_spent_level(monkeypatch) -> None:
    """Plumbing: the margin the solver sees follows the account, and growth restarts it."""
    import lightning_grow.decision.planner as planner
    from lightning_grow import GrowthCallback
    from tests.test_callback import _Regression, _regression_loader, _trainer

    margins: list[float] = []
    solve = planner.compute_candidates

    def recording(*args, **kwargs):
        margins.append(kwargs["significance_margin"])
        return solve(*args, **kwargs)

    monkeypatch.setattr(planner, "compute_candidates", recording)
    torch.manual_seed(0)
    callback = GrowthCallback(
        false_growth_rate=0.05,
        significance_margin=None,
        statistics_samples=64,
        held_samples=64,
        patience=None,
        stop_fraction=None,
        compute_budget=None,
        max_window_extensions=3,
        verbose=False,
    )
    _trainer([callback], max_steps=120).fit(_Regression(), _regression_loader())
    decisions: dict[int, list] = {}
    for event in callback.history:
        decisions.setdefault(event.step, []).append(event)
    expected, k = [], 0
    for step in sorted(decisions):
        events = decisions[step]
        k += 1
        expected += [norm.isf(0.05 / (k * (k + 1)) / len(events))] * len(events)
        if any(event.accepted for event in events):
            k = 0
    assert len(decisions) >= 4
    assert margins == pytest.approx(expected, rel=1e-9)
    restored = GrowthCallback(false_growth_rate=0.05, significance_margin=None, verbose=False)
    restored.load_state_dict(callback.state_dict())
    assert restored.spending.decisions == callback.spending.decisions
    assert GrowthCallback(significance_margin=2.0).spending is None
    assert GrowthCallback().spending is None  # opt-in: the defaults decide as before
