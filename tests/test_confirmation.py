"""Confirming a growth on held-out samples: a paired test over chunks, and the descent sign."""

from __future__ import annotations

import pytest
import torch
from scipy import stats
from torch import nn

from lightning_grow import GrowthCallback
from lightning_grow.callback._held import HeldOut
from lightning_grow.decision.amplitude import search_amplitude
from lightning_grow.decision.planner import GrowthConfig, _decide_pair, paired_t
from lightning_grow.reporting.events import Reason
from tests.helpers import tanh_unit_setup


def test_paired_t_is_scipys_one_sample_t_of_the_decreases() -> None:
    generator = torch.Generator().manual_seed(0)
    before = torch.rand(8, generator=generator, dtype=torch.float64).tolist()
    after = (torch.tensor(before) - 0.1 + 0.2 * torch.rand(8, generator=generator)).tolist()
    differences = [b - a for b, a in zip(before, after)]
    assert paired_t(before, after) == pytest.approx(stats.ttest_1samp(differences, 0.0).statistic)
    assert paired_t([1.0, 2.0], [0.5, 1.5]) == float("inf")  # the same decrease everywhere
    with pytest.raises(ValueError, match="two or more"):
        paired_t([1.0], [0.5])


def test_confirm_chunks_are_disjoint_and_cover_the_confirming_half() -> None:
    batches = [(torch.arange(32) + 32 * i, torch.zeros(32)) for i in range(8)]
    seen: list[list[int]] = []

    def loss_fn(module, batch):
        seen.append(batch[0].tolist())
        return torch.tensor(0.0)

    held = HeldOut(nn.Identity(), batches, loss_fn, split=True)
    losses = held.confirm_chunks(8)()
    assert len(losses) == 8 and len(seen) == 8
    flat = sorted(index for part in seen for index in part)
    assert flat == list(range(128, 256))  # the confirming half, each sample once
    # A batch of one sample cannot be cut: one part, used whole.
    one = [(torch.zeros(1, 3),)]
    whole = HeldOut(nn.Identity(), one, lambda module, batch: torch.tensor(1.0), split=True)
    assert whole.confirm_chunks(8)() == [1.0]


def test_search_tries_only_the_descent_sign_when_asked() -> None:
    tried: list[float] = []

    def loss_at(amplitude: float) -> float:
        tried.append(amplitude)
        return (amplitude + 2.0) ** 2  # only negative amplitudes lower the loss

    result = search_amplitude(loss_at, loss_before=4.0, signs=(1.0,))
    assert result.amplitude == 0.0 and all(amplitude > 0 for amplitude in tried)
    both = search_amplitude(loss_at, loss_before=4.0)
    assert both.amplitude < 0


def _pair_and_chunked_losses(consistent: bool):
    setup = tanh_unit_setup()
    net, inputs, base, feature = setup.net, setup.inputs, setup.base, setup.feature
    choose_targets = base + 0.5 * feature
    # Confirming samples, 8 chunks of 16: the unit helps every chunk a little (consistent), or
    # one chunk a lot and hurts the seven others (a mean decrease that one chunk carries).
    weights = torch.full((8,), 0.5) if consistent else torch.tensor([8.0] + [-0.3] * 7)
    confirm_targets = base[:128] + weights.repeat_interleave(16)[:, None] * feature[:128]

    def mean_loss(targets, rows):
        return float(nn.functional.mse_loss(net(inputs[rows]), targets[rows]))

    def chunks():
        return [mean_loss(confirm_targets, slice(16 * c, 16 * (c + 1))) for c in range(8)]

    choose = lambda: mean_loss(choose_targets, slice(None))  # noqa: E731
    return setup.pair, setup.candidate, setup.decision, choose, chunks


@pytest.mark.parametrize(("consistent", "grows"), [(True, True), (False, False)])
def test_a_decrease_one_chunk_carries_is_not_confirmed(consistent: bool, grows: bool) -> None:
    pair, candidate, decision, choose, chunks = _pair_and_chunked_losses(consistent)
    with torch.no_grad():
        mean_before = sum(chunks()) / 8
        tested = _decide_pair(
            pair, candidate, decision, choose, GrowthConfig(confirm_margin=1.0), chunks
        )
        untested = _decide_pair(
            pair, candidate, decision, choose, GrowthConfig(confirm_margin=None), chunks
        )
    assert untested.reason is Reason.GROWN  # the mean decrease alone passes in both cases
    assert untested.loss_after < mean_before
    assert (tested.reason is Reason.GROWN) is grows


@pytest.mark.parametrize(
    ("name", "value"),
    [("confirm_margin", -1.0), ("confirm_margin", float("nan")), ("negative_amplitudes", 1)],
)
def test_confirmation_arguments_are_validated(name: str, value: object) -> None:
    with pytest.raises((TypeError, ValueError), match=name):
        GrowthCallback(**{name: value})
