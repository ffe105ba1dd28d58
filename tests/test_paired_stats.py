"""The paired statistics of the benchmark reports (benchmarks/paired_stats.py)."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.paired_stats import paired_summary, sign_flip_p


def _brute_force(differences: list[float]) -> float:
    observed = abs(sum(differences))
    patterns = list(itertools.product((1, -1), repeat=len(differences)))
    hits = sum(
        abs(sum(s * d for s, d in zip(signs, differences, strict=True))) >= observed - 1e-12
        for signs in patterns
    )
    return hits / len(patterns)


def test_sign_flip_matches_brute_force_across_the_block_boundary() -> None:
    for n in (3, 12, 14):
        differences = [((-1) ** i) * (i + 1) * 0.1 + 0.05 for i in range(n)]
        assert math.isclose(sign_flip_p(differences), _brute_force(differences))


def test_all_positive_differences_reach_the_smallest_p() -> None:
    assert sign_flip_p([1.0] * 10) == 2 / 2**10


def test_summary_effect_size_and_wins() -> None:
    a = [0.0, 0.0, 0.0, 0.0]
    b = [1.0, 2.0, 3.0, -1.0]
    summary = paired_summary(a, b)
    assert summary.n == 4 and summary.wins == 3
    assert math.isclose(summary.mean, 1.25)
    assert math.isclose(summary.cohen_dz, 1.25 / summary.sd)
    assert 0 < summary.p_sign_flip <= 1
