"""The compute budget's estimators: image and position subsampling are unbiased.

Exactness first (drawing every position must reproduce the brute-force moments to round-off),
then unbiasedness: the average over many independent draws on one fixed batch converges to the
brute-force moments of that batch, while a single draw does not equal them.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_grow.statistics.accumulator import PairStatistics
from lightning_grow.topology.pairs import find_growable_pairs
from tests.test_statistics import (
    F64,
    FIELDS,
    SIGNAL_FIELDS,
    assert_moments,
    brute_force,
    reference_batch,
    train_step,
)


def conv_model(s1: int, p1: int, s2: int, p2: int, biases: tuple[bool, bool]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=s1, padding=p1, bias=biases[0]),
        nn.Tanh(),
        nn.Conv2d(3, 2, (3, 2), stride=s2, padding=p2, bias=biases[1]),
        nn.Flatten(),
        nn.LazyLinear(3),
    ).to(F64)


@pytest.mark.parametrize(
    ("s1", "p1", "s2", "p2", "biases"),
    [(1, 1, 1, 1, (True, True)), (2, 0, 1, 1, (False, True)), (1, 1, 2, 0, (True, False))],
)
def test_drawing_every_position_is_exact(s1, p1, s2, p2, biases) -> None:
    torch.manual_seed(0)
    model = conv_model(s1, p1, s2, p2, biases)
    x, y = torch.randn(5, 2, 9, 8, dtype=F64), torch.randint(0, 3, (5,))
    model(x)
    pair = find_growable_pairs(model)[0]
    stats = PairStatistics(pair, dtype=F64, positions=10_000)
    with stats:
        train_step(model, x, y)
    assert_moments(stats, brute_force(pair, [reference_batch(model, pair, x, y)]))


@pytest.mark.parametrize(
    ("positions", "images"), [(3, None), (None, 2), (2, 3)], ids=["positions", "images", "both"]
)
def test_subsampled_moments_are_unbiased(positions: int | None, images: int | None) -> None:
    torch.manual_seed(1)
    model = conv_model(1, 1, 1, 1, (True, True))
    x, y = torch.randn(4, 2, 6, 5, dtype=F64), torch.randint(0, 3, (4,))
    model(x)
    pair = find_growable_pairs(model)[0]
    expected = brute_force(pair, [reference_batch(model, pair, x, y)])
    # Drawing images re-assigns the ±1 signs of the noise moments: only their spread matters.
    fields = SIGNAL_FIELDS if images else FIELDS
    stats = PairStatistics(pair, dtype=F64, positions=positions, images_per_batch=images, seed=3)
    draws: dict[str, list[torch.Tensor]] = {name: [] for name in fields}
    with stats:
        for _ in range(2000):
            stats.reset()
            train_step(model, x, y)
            moments = stats.moments()
            for name in fields:
                draws[name].append(getattr(moments, name))
    spread = 0.0
    for name in fields:
        samples = torch.stack(draws[name])
        mean, error = samples.mean(0), samples.std(0) / len(samples) ** 0.5
        bias = (mean - expected[name]).abs()
        random = error > 1e-12
        # Entries that do not depend on the draw (e.g. bias rows) must be exact.
        assert torch.all(bias[~random] < 1e-9), name
        if random.any():
            z = bias[random] / error[random]
            assert float(z.max()) < 5.0, (name, float(z.max()))
        spread = max(spread, float(samples.std(0).max()))
    assert spread > 1e-3  # the draws do differ: the test is not comparing exact sums


def test_counts_follow_the_draw() -> None:
    model = conv_model(1, 1, 1, 1, (True, True))
    x, y = torch.randn(8, 2, 6, 5, dtype=F64), torch.randint(0, 3, (8,))
    model(x)
    pair = find_growable_pairs(model)[0]
    stats = PairStatistics(pair, dtype=F64, positions=2, images_per_batch=3)
    with stats:
        for _ in range(4):
            train_step(model, x, y)
    assert stats.num_samples == 12
