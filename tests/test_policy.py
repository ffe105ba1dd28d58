"""The growth schedule, the selection rule and the amplitude line search."""

from types import SimpleNamespace

import pytest
import torch

from lightning_grow.decision.amplitude import search_amplitude
from lightning_grow.decision.policy import GrowthSchedule, Phase, select_growth


def _candidates(gains: list[float], significant: int) -> SimpleNamespace:
    cumulative = torch.tensor(gains).cumsum(0)
    return SimpleNamespace(gain=cumulative, num_significant=significant)


def _select(candidates, widths=None, **overrides):
    widths = widths or dict.fromkeys(candidates, 4)
    options = {
        "gain_threshold": 0.01,
        "max_neurons": dict.fromkeys(candidates, 8),
        "max_width": dict.fromkeys(candidates),
        "total_parameters": 1000,
        "max_parameters": None,
    }
    options.update(overrides)
    per_neuron = dict.fromkeys(candidates, 10)
    return select_growth(candidates, widths, per_neuron, **options)


def test_schedule_cycles_through_phases_in_optimizer_steps() -> None:
    schedule = GrowthSchedule(warmup_steps=2, window_steps=3, hold_steps=1, cooldown_steps=2)
    phases = [schedule.advance(step).value for step in range(0, 6)]
    assert phases == ["warmup", "warmup", "collect", "collect", "collect", "hold"]
    assert not schedule.ready_to_decide(5)
    assert schedule.ready_to_decide(6)
    schedule.decided(6, any_significant=True)
    assert schedule.advance(6) is Phase.COOLDOWN
    assert schedule.advance(7) is Phase.COOLDOWN
    assert schedule.advance(8) is Phase.COLLECT


def test_schedule_pauses_after_patience_and_stops_at_stop_step() -> None:
    schedule = GrowthSchedule(warmup_steps=0, window_steps=1, hold_steps=1, patience=2)
    schedule.advance(0)
    schedule.decided(2, any_significant=True)
    schedule.decided(4, any_significant=False)
    assert schedule.phase is Phase.COLLECT
    schedule.decided(6, any_significant=False)
    # Idle since step 2: pause for those 4 steps, then look again.
    assert schedule.paused
    assert [schedule.advance(step).value for step in (7, 9, 10)] == [
        "cooldown",
        "cooldown",
        "collect",
    ]
    # Nothing again: the pause covers everything since step 2 (it grows geometrically).
    schedule.decided(12, any_significant=False)
    schedule.decided(14, any_significant=False)
    assert schedule.advance(25) is Phase.COOLDOWN
    assert schedule.advance(26) is Phase.COLLECT
    # A significant decision ends the idle stretch: the next pause is short again.
    schedule.decided(28, any_significant=True)
    schedule.decided(30, any_significant=False)
    schedule.decided(32, any_significant=False)
    assert schedule.advance(35) is Phase.COOLDOWN
    assert schedule.advance(36) is Phase.COLLECT

    stopping = GrowthSchedule(warmup_steps=0, window_steps=10, hold_steps=1, stop_step=4)
    assert stopping.advance(3) is Phase.COLLECT
    assert stopping.advance(4) is Phase.STOPPED


def test_statistics_collect_at_most_half_the_steps_once_nothing_is_found() -> None:
    schedule = GrowthSchedule(warmup_steps=0, window_steps=3, hold_steps=1, patience=2)
    collecting = 0
    for step in range(10_000):
        collecting += schedule.advance(step) is Phase.COLLECT
        if schedule.ready_to_decide(step + 1):
            schedule.decided(step + 1, any_significant=False)
    assert schedule.decisions > 10  # it keeps looking ...
    assert collecting < 0.5 * 10_000 * 3 / 4  # ... at a falling rate


def test_schedule_state_round_trip() -> None:
    schedule = GrowthSchedule(warmup_steps=0, window_steps=2, hold_steps=1)
    schedule.advance(0)
    schedule.advance(2)
    clone = GrowthSchedule(warmup_steps=0, window_steps=2, hold_steps=1)
    clone.load_state_dict(schedule.state_dict())
    assert (clone.phase, clone.phase_start) == (Phase.HOLD, 2)


@pytest.mark.parametrize(
    ("gains", "significant", "expected", "reason"),
    [
        ([0.3, 0.2, 0.05, 0.001], 4, 3, "grown"),  # gain threshold stops at the 4th
        ([0.3, 0.2, 0.05, 0.001], 2, 2, "grown"),  # significance stops at the 3rd
        ([0.3, 0.2], 0, 0, "not significant"),
        ([0.001, 0.0005], 2, 0, "below gain threshold"),
    ],
)
def test_selection_takes_the_tightest_limit(gains, significant, expected, reason) -> None:
    decision = _select({"a": _candidates(gains, significant)})["a"]
    assert (decision.neurons, decision.reason) == (expected, reason)


def test_selection_respects_width_caps_and_per_event_caps() -> None:
    candidates = {"a": _candidates([0.2] * 6, 6), "b": _candidates([0.2] * 6, 6)}
    decisions = _select(
        candidates,
        widths={"a": 4, "b": 4},
        max_width={"a": 6, "b": 4},
        max_neurons={"a": 8, "b": 8},
    )
    assert decisions["a"].neurons == 2
    assert (decisions["b"].neurons, decisions["b"].reason) == (0, "width cap")
    capped = _select(candidates, max_neurons={"a": 1, "b": 3})
    assert (capped["a"].neurons, capped["b"].neurons) == (1, 3)


def test_budget_serves_best_gain_per_parameter_first() -> None:
    candidates = {"weak": _candidates([0.02] * 4, 4), "strong": _candidates([0.3] * 4, 4)}
    # 10 parameters per neuron, 50 left: the strong pair takes 4, the weak one the last 1.
    decisions = _select(candidates, total_parameters=950, max_parameters=1000)
    assert decisions["strong"].neurons == 4
    assert decisions["weak"].neurons == 1
    exhausted = _select(candidates, total_parameters=1000, max_parameters=1000)
    assert all(d.neurons == 0 and d.reason == "budget" for d in exhausted.values())


def test_line_search_finds_the_minimum_of_a_quadratic_on_the_grid() -> None:
    target = -0.37  # the best amplitude is negative: the search must try both signs

    def loss(amplitude: float) -> float:
        return (amplitude - target) ** 2 + 1.0

    result = search_amplitude(loss, loss(0.0), gamma_min=2.0**-10, gamma_max=8.0)
    grid = [sign * 2.0**k for k in range(-10, 4) for sign in (1, -1)]
    best_on_grid = min(grid, key=loss)
    assert result.amplitude == best_on_grid
    assert result.loss_after == pytest.approx(loss(best_on_grid))
    assert result.loss_before == pytest.approx(loss(0.0))


def test_line_search_returns_zero_when_nothing_improves() -> None:
    result = search_amplitude(lambda a: 1.0 + abs(a), 1.0)
    assert result.amplitude == 0.0
    assert result.loss_after == 1.0


def test_line_search_ignores_non_finite_losses() -> None:
    def loss(amplitude: float) -> float:
        return float("nan") if amplitude > 1 else 1.0 - 0.1 * amplitude

    result = search_amplitude(loss, 1.0)
    assert result.amplitude == 1.0


def test_line_search_starts_at_the_first_order_scale_and_needs_few_evaluations() -> None:
    calls: list[float] = []

    def loss(amplitude: float) -> float:
        calls.append(amplitude)
        return (amplitude - 3.0) ** 2

    result = search_amplitude(loss, loss(0.0))
    calls.pop(0)  # the baseline evaluation above
    assert result.amplitude in (2.0, 4.0)
    assert calls[0] == 1.0
    assert result.evaluations == len(calls) <= 4
    assert all(amplitude > 0 for amplitude in calls)  # the descent sign succeeded: no + / - sweep


def test_line_search_pruning_never_changes_whether_the_required_loss_is_reached() -> None:
    """Convex losses: pruned walks accept exactly when some grid amplitude reaches the bar."""
    generator = torch.Generator().manual_seed(0)
    grid = [sign * 2.0**k for k in range(-12, 7) for sign in (1, -1)]
    saved = 0
    for _ in range(500):
        slope, curvature = (torch.randn(2, generator=generator, dtype=torch.float64)).tolist()
        curvature = abs(curvature) * 10.0 ** float(torch.randint(-3, 3, (1,), generator=generator))

        def loss(amplitude: float, a: float = slope, b: float = curvature) -> float:
            return 1.0 + a * amplitude + b * amplitude**2

        required = 1.0 - 1e-3
        pruned = search_amplitude(loss, 1.0, required_loss=required)
        full = search_amplitude(loss, 1.0)
        reachable = min(loss(gamma) for gamma in grid) <= required
        assert (pruned.loss_after <= required) == reachable
        if pruned.loss_after <= required:
            assert pruned.amplitude == full.amplitude or full.loss_after > required
        saved += full.evaluations - pruned.evaluations
    assert saved > 0


def test_line_search_stops_walking_down_when_the_bar_is_out_of_reach() -> None:
    calls: list[float] = []

    def loss(amplitude: float) -> float:  # no descent on either side: a pure bowl at 0
        calls.append(amplitude)
        return 1.0 + 0.5 * amplitude**2

    result = search_amplitude(loss, 1.0, required_loss=1.0 - 1e-3)
    assert result.amplitude == 0.0
    # without the bar the walk visits 2^-12 on both signs (28 evaluations)
    assert len(calls) <= 16
    assert min(abs(amplitude) for amplitude in calls) >= 2.0**-6


def test_patience_counts_only_exhausted_windows() -> None:
    schedule = GrowthSchedule(warmup_steps=0, window_steps=1, hold_steps=1, patience=2)
    schedule.advance(0)
    for step in range(2, 20, 2):  # extended windows: insignificant, but not yet exhausted
        schedule.decided(step, any_significant=False, count_idle=False)
    assert schedule.phase is Phase.COLLECT
    schedule.decided(20, any_significant=False)
    schedule.decided(22, any_significant=False)
    assert schedule.paused
