"""Growth is all-or-nothing: a failure at any step of the commit rolls model and optimizer back."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest
import torch
from test_surgery import assert_unchanged, build_pair, random_neurons, snapshot
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from lightning_grow.surgery.optim import OptimizerReplacement
from lightning_grow.surgery.widen import ModuleEdit, all_or_nothing, grow_pair
from lightning_grow.topology.pairs import GrowablePair


def trained(kind: str, seed: int = 0):
    """A pair with BatchNorm, trained two Adam steps (amsgrad: three state tensors per param)."""
    torch.manual_seed(seed)
    model, pair, input_shape = build_pair(kind, batch_norm=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, amsgrad=True)
    inputs = torch.randn(4, *input_shape)
    for _ in range(2):
        optimizer.zero_grad()
        model(inputs).square().mean().backward()
        optimizer.step()
    return model, pair, optimizer, inputs


class InjectedFailure(RuntimeError):
    pass


def fail_after_step(monkeypatch: pytest.MonkeyPatch, fail_at: int) -> list[int]:
    """Raise right after the commit's step number ``fail_at`` (0-based) has run.

    Every assignment of a commit is a step of :meth:`ModuleEdit.assignments` or
    :meth:`OptimizerReplacement.assignments`; returns the list of steps run so far.
    """
    counter = itertools.count()
    ran: list[int] = []

    def failing(original: Callable) -> Callable:
        def assignments(self) -> Iterator[Callable[[], None]]:
            for step in original(self):

                def checked(step: Callable[[], None] = step) -> None:
                    step()
                    index = next(counter)
                    ran.append(index)
                    if index == fail_at:
                        raise InjectedFailure(f"injected after step {index}")

                yield checked

        return assignments

    monkeypatch.setattr(ModuleEdit, "assignments", failing(ModuleEdit.assignments))
    monkeypatch.setattr(
        OptimizerReplacement, "assignments", failing(OptimizerReplacement.assignments)
    )
    return ran


@pytest.mark.parametrize("kind", ["linear", "conv", "conv_linear"])
def test_a_failure_after_any_step_of_the_commit_rolls_everything_back(kind, monkeypatch) -> None:
    with monkeypatch.context() as counting:
        model, pair, optimizer, _ = trained(kind)
        steps = fail_after_step(counting, fail_at=-1)
        grow_pair(pair, random_neurons(pair, 2, zero_omega=False), optimizer)
    total = len(steps)
    # first: weight, bias, out_*; BN: 4 tensors, num_features; second: weight, in_*; and per
    # parameter in the optimizer: re-point, drop the old state, add the padded one.
    assert total == 3 + 5 + 2 + 3 * 5

    for fail_at in range(total):
        model, pair, optimizer, inputs = trained(kind)
        before = snapshot(model, optimizer)
        model.eval()
        with torch.no_grad():
            output = model(inputs)
        with monkeypatch.context() as failing:
            ran = fail_after_step(failing, fail_at)
            with pytest.raises(InjectedFailure):
                grow_pair(pair, random_neurons(pair, 2, zero_omega=False), optimizer)
        assert len(ran) == fail_at + 1
        assert_unchanged(before, model, optimizer)
        with torch.no_grad():
            assert torch.equal(model(inputs), output), fail_at
        # The rolled-back pair still grows and trains.
        grow_pair(pair, random_neurons(pair, 2, zero_omega=False), optimizer)
        model.train()
        model(inputs).square().mean().backward()
        optimizer.step()


def chain() -> tuple[nn.Sequential, GrowablePair, GrowablePair, torch.optim.Optimizer]:
    """``Linear → ReLU → Linear → ReLU → Linear``: two pairs sharing the middle layer."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(6, 3)).square().mean().backward()
    optimizer.step()
    first = GrowablePair("0", "2", model[0], model[2])
    second = GrowablePair("2", "4", model[2], model[4])
    return model, first, second, optimizer


def test_a_failing_pair_undoes_the_pairs_grown_before_it_at_the_same_decision(
    monkeypatch,
) -> None:
    model, first, second, optimizer = chain()
    before = snapshot(model, optimizer)
    with pytest.raises(InjectedFailure), all_or_nothing() as journal:
        grow_pair(first, random_neurons(first, 2, zero_omega=True), optimizer, journal=journal)
        assert model[0].out_features == 6 and len(journal) == 1
        fail_after_step(monkeypatch, fail_at=4)
        grow_pair(second, random_neurons(second, 3, zero_omega=True), optimizer, journal=journal)
    assert_unchanged(before, model, optimizer)


def test_failures_outside_the_commit_undo_the_decision_too() -> None:
    model, first, second, optimizer = chain()
    before = snapshot(model, optimizer)
    with pytest.raises(KeyboardInterrupt), all_or_nothing() as journal:
        grow_pair(first, random_neurons(first, 2, zero_omega=True), optimizer, journal=journal)
        grow_pair(second, random_neurons(second, 3, zero_omega=True), optimizer, journal=journal)
        raise KeyboardInterrupt
    assert_unchanged(before, model, optimizer)


class LockedWidthLinear(nn.Linear):
    """A Linear that refuses a new ``in_features`` once built: the commit fails part-way."""

    locked = False

    def __setattr__(self, name: str, value) -> None:
        if self.locked and name == "in_features":
            raise AttributeError("in_features of this layer is read-only")
        super().__setattr__(name, value)


def test_a_module_refusing_an_assignment_leaves_a_whole_network() -> None:
    model, pair, _ = build_pair("linear", batch_norm=True)
    locked = LockedWidthLinear(pair.second.in_features, pair.second.out_features)
    locked.locked = True
    model[3] = pair.second = locked
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    inputs = torch.randn(4, 3)
    model(inputs).square().mean().backward()
    optimizer.step()
    before = snapshot(model, optimizer)
    with pytest.raises(AttributeError, match="read-only"):
        grow_pair(pair, random_neurons(pair, 2, zero_omega=True), optimizer)
    assert_unchanged(before, model, optimizer)
    model(inputs)  # every layer still agrees on the width


@pytest.mark.parametrize("which", ["first", "second"])
def test_weight_norm_is_refused_before_anything_changes(which: str) -> None:
    model, pair, optimizer, inputs = trained("linear")
    index = 0 if which == "first" else 3
    model[index] = weight_norm(model[index])
    pair = GrowablePair("0", "3", model[0], model[3], model[1], "1")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(inputs).square().mean().backward()
    optimizer.step()
    before = snapshot(model, optimizer)
    with pytest.raises(TypeError, match=rf"'{index}'.*weight is not a plain parameter"):
        grow_pair(pair, random_neurons(pair, 2, zero_omega=True), optimizer)
    assert_unchanged(before, model, optimizer)
