"""What a new user hits: bad arguments, silent skips, partial growth, side effects, late saves."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_grow.callback._transport as callback_module  # where apply_growth widens
from lightning_grow import GrowthCallback
from lightning_grow.surgery.checkpoint import ResizeOnLoadMixin
from lightning_grow.surgery.widen import grow_pair
from lightning_grow.topology.pairs import GrowthConfigurationError
from tests.helpers import permissive_callback
from tests.test_callback import _Regression, _regression_loader, _trainer

# ---------------------------------------------------------------------------------------------
# 2. Arguments are checked at construction (or at setup, when they need the model)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"significance_margin": -1}, ValueError, "significance_margin"),
        ({"significance_margin": math.inf}, ValueError, "significance_margin"),
        ({"false_growth_rate": 0.0}, ValueError, "false_growth_rate"),
        ({"false_growth_rate": 1.0}, ValueError, "false_growth_rate"),
        ({"false_growth_rate": "5%"}, TypeError, "false_growth_rate"),
        ({"gain_threshold": math.nan}, ValueError, "gain_threshold"),
        ({"gain_threshold": 2.0}, ValueError, "gain_threshold"),
        ({"min_loss_decrease": math.nan}, ValueError, "min_loss_decrease"),
        ({"statistics_samples": 2.5}, TypeError, "statistics_samples"),
        ({"warmup_steps": 1.5}, TypeError, "warmup_steps"),
        ({"patience": True}, TypeError, "patience"),
        ({"max_width": {"net.0 -> net.2": -1}}, ValueError, r"max_width\['net.0 -> net.2'\]"),
        ({"max_width": {"net.0 -> net.2": 2.5}}, TypeError, "max_width"),
        ({"max_width": 0}, ValueError, "max_width"),
        ({"pairs": 42}, TypeError, "pairs"),
        ({"pairs": []}, ValueError, "pairs"),
        ({"network": 3}, TypeError, "network"),
        ({"amplitude_range": (math.nan, 1.0)}, ValueError, "amplitude_range"),
        ({"stop_fraction": math.nan}, ValueError, "stop_fraction"),
        ({"preactivation_rms": 0.0}, ValueError, "preactivation_rms"),
        ({"preactivation_rms": math.inf}, ValueError, "preactivation_rms"),
        ({"preactivation_rms": "1"}, TypeError, "preactivation_rms"),
    ],
)
def test_bad_arguments_fail_at_construction_naming_the_argument(arguments, error, message) -> None:
    with pytest.raises(error, match=message):
        GrowthCallback(**arguments)


def test_good_arguments_of_every_kind_are_accepted() -> None:
    GrowthCallback(
        significance_margin=0,
        gain_threshold=1,
        statistics_samples=64,
        max_width={"net.0 -> net.2": 3},
        pairs=("net.0 -> net.2",),
        network="net",
        amplitude_range=[0.5, 0.5],
        seed=-3,
        preactivation_rms=None,
    )


def _setup_error(**options) -> str:
    trainer = _trainer([permissive_callback(**options)], max_steps=1)
    with pytest.raises(GrowthConfigurationError) as caught:
        trainer.fit(_Regression(), _regression_loader())
    return str(caught.value)


def test_an_unknown_max_width_key_is_refused_at_setup_listing_the_pairs() -> None:
    message = _setup_error(max_width={"net.0 -> net.3": 4})  # a typo: the pair is net.0 -> net.2
    assert "'net.0 -> net.3'" in message and "'net.0 -> net.2'" in message


def test_an_unknown_network_is_refused_at_setup_listing_the_children() -> None:
    message = _setup_error(network="nope")
    assert "network='nope'" in message and "['net']" in message


# ---------------------------------------------------------------------------------------------
# 1. A failure while installing the neurons of one pair undoes the whole decision


class _TwoPairs(_Regression):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 2), nn.Tanh(), nn.Linear(2, 2), nn.Tanh())
        self.net.append(nn.Linear(2, 3))


def test_a_failing_pair_leaves_the_other_pairs_of_the_decision_ungrown(monkeypatch) -> None:
    grown: list[str] = []

    def second_one_fails(pair, neurons, optimizers, **options):
        if grown:
            raise RuntimeError("injected: the second pair fails")
        grow_pair(pair, neurons, optimizers, **options)
        grown.append(pair.name)

    monkeypatch.setattr(callback_module, "grow_pair", second_one_fails)
    pl.seed_everything(0, verbose=False)
    model = _TwoPairs()
    trainer = _trainer([permissive_callback()], max_steps=8)
    with pytest.raises(RuntimeError, match="injected"):
        trainer.fit(model, _regression_loader())
    assert grown  # the first pair had grown, then the second failed
    assert [layer.out_features for layer in model.net[::2]] == [2, 2, 3]
    assert [layer.in_features for layer in model.net[::2]] == [8, 2, 2]
    optimizer = trainer.optimizers[0]
    in_optimizer = [p for group in optimizer.param_groups for p in group["params"]]
    assert all(a is b for a, b in zip(in_optimizer, model.parameters(), strict=True))


# ---------------------------------------------------------------------------------------------
# 3. Say what happened


def _nan_loader() -> DataLoader:
    x, y = next(iter(DataLoader(_regression_loader().dataset, batch_size=320)))
    return DataLoader(TensorDataset(torch.full_like(x, math.nan), y), batch_size=32)


def test_windows_whose_batches_were_all_skipped_are_reported_once() -> None:
    callback = permissive_callback()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer([callback], max_steps=12).fit(_Regression(), _nan_loader())
    decisions = {event.step for event in callback.history}
    assert len(decisions) >= 2 and {e.reason for e in callback.history} == {"no samples"}
    notes = [str(w.message) for w in caught if "without any usable sample" in str(w.message)]
    assert len(notes) == 1, notes
    assert "net.0 -> net.2" in notes[0] and "NaN" in notes[0]


class _ResizableRegression(ResizeOnLoadMixin, _Regression):
    pass


def _grow_and_save(module_class: type, path: Path) -> list[str]:
    pl.seed_everything(0, verbose=False)
    callback = permissive_callback()
    trainer = _trainer([callback], max_steps=6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module_class(), _regression_loader())
    assert any(event.accepted for event in callback.history)
    trainer.save_checkpoint(path)
    return [str(w.message) for w in caught if "ResizeOnLoadMixin" in str(w.message)]


def test_a_grown_module_without_the_resize_mixin_is_told_how_to_reload(tmp_path) -> None:
    notes = _grow_and_save(_Regression, tmp_path / "plain.ckpt")
    assert len(notes) == 1 and "_Regression.load_from_checkpoint" in notes[0]
    with pytest.raises(RuntimeError, match="size mismatch"):  # what the note predicts
        _Regression.load_from_checkpoint(tmp_path / "plain.ckpt")
    assert _grow_and_save(_ResizableRegression, tmp_path / "mixin.ckpt") == []
    restored = _ResizableRegression.load_from_checkpoint(tmp_path / "mixin.ckpt")
    assert restored.net[0].out_features > 1


def test_the_readme_documents_the_synthetic_cifar_smoke_test() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "--data.synthetic true" in readme


# ---------------------------------------------------------------------------------------------
# 4. GradMax behind ReLU: the documented change of the function


class _ReluRegression(_Regression):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 2), nn.ReLU(), nn.Linear(2, 3))


def test_gradmax_behind_relu_changes_the_output_by_exactly_the_documented_amount(
    monkeypatch,
) -> None:
    probe = torch.randn(16, 8, generator=torch.Generator().manual_seed(3))
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def recording(pair, neurons, optimizers, **options):
        with torch.no_grad():
            before = model.net(probe)
            grow_pair(pair, neurons, optimizers, **options)
            seen.append((before, model.net(probe), neurons.second_weight.clone()))

    monkeypatch.setattr(callback_module, "grow_pair", recording)
    pl.seed_everything(0, verbose=False)
    model = _ReluRegression()
    _trainer([permissive_callback(method="gradmax")], max_steps=3).fit(model, _regression_loader())
    assert seen
    for before, after, new_columns in seen:
        expected = 0.01 * new_columns.sum(dim=1)  # each unit outputs relu(0.01) = 0.01
        torch.testing.assert_close(after - before, expected.expand_as(after))
        assert new_columns.abs().sum() > 0  # really a change, documented in `method`
    assert "0.01 × its output weights" in " ".join(GrowthCallback.__doc__.split())


# ---------------------------------------------------------------------------------------------
# 5. training_step calls are counted in the events


class _CountingRegression(_Regression):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def training_step(self, batch, batch_idx):
        self.calls += 1  # the kind of side effect the amplitude search repeats
        return super().training_step(batch, batch_idx)


def test_every_training_step_call_of_the_amplitude_search_is_in_the_events() -> None:
    pl.seed_everything(0, verbose=False)
    model, callback = _CountingRegression(), permissive_callback()
    trainer = _trainer([callback], max_steps=12)
    trainer.fit(model, _regression_loader())
    per_decision = {event.step: event.training_step_calls for event in callback.history}
    assert sum(per_decision.values()) > 0
    assert model.calls == trainer.global_step + sum(per_decision.values())
    # Every event of one decision reports the decision's count.
    assert all(e.training_step_calls == per_decision[e.step] for e in callback.history)


# ---------------------------------------------------------------------------------------------
# 6. A checkpoint saved after fit resumes like an uninterrupted run


def _decisions(callback: GrowthCallback) -> list[tuple]:
    return [
        (e.step, e.pair, e.reason, e.neurons_added, e.amplitude, e.expressivity_gain)
        for e in callback.history
    ]


def _same_batch_loader() -> DataLoader:
    """Ten identical batches per epoch.

    Lightning resumes a checkpoint saved after fit by replaying batches (without a stateful
    dataloader it restarts the epoch's data; at an epoch's end it even feeds batch_idx 10 the
    next epoch's first batch): with identical batches that replay computes the same, so only
    the callback's own state can make the runs differ.
    """
    x, y = next(iter(_regression_loader()))
    return DataLoader(TensorDataset(x.repeat(10, 1), y.repeat(10, 1)), batch_size=32)


def _fit(max_steps: int, ckpt_path: Path | None = None):
    pl.seed_everything(0, verbose=False)
    # Two held batches per decision, so that one can be in flight when fit returns.
    model, callback = _Regression(), permissive_callback(held_samples=64)
    trainer = _trainer([callback], max_steps=max_steps)
    trainer.fit(model, _same_batch_loader(), ckpt_path=ckpt_path)
    return model, callback, trainer


def test_a_checkpoint_saved_after_fit_continues_like_an_uninterrupted_run(tmp_path) -> None:
    model_a, callback_a, _ = _fit(50)
    _, callback_b, trainer_b = _fit(23)
    state = callback_b.state_dict()
    assert state["statistics"] and state["held"]  # a window and a held batch were in flight
    path = tmp_path / "after_fit.ckpt"
    trainer_b.save_checkpoint(path)

    model_c, callback_c, _ = _fit(50, ckpt_path=path)
    assert _decisions(callback_c) == _decisions(callback_a)
    assert sum(e.step > 23 for e in callback_a.history) >= 5  # decisions after the save
    for (name, a), c in zip(model_a.state_dict().items(), model_c.state_dict().values()):
        assert a.shape == c.shape, name
        torch.testing.assert_close(c, a, rtol=0, atol=0, msg=name)
