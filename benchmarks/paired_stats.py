"""Paired comparisons over seeds: effect size and two exact-or-standard tests.

For paired runs (same seed, same data order, same schedule) the unit of analysis is the per-seed
difference ``d_i = b_i - a_i``. :func:`paired_summary` reports

* the mean difference, its sample standard deviation and standard error;
* Cohen's ``d_z = mean(d) / sd(d)`` (the paired effect size);
* wins (``d_i > 0``) out of ``n``;
* two-sided p-values of the exact sign-flip permutation test of ``mean(d)`` (all ``2^n`` sign
  patterns for ``n <= 22``, else a seeded Monte-Carlo sample), of the Wilcoxon signed-rank test and
  of the paired t-test (the last two from SciPy when it imports).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["PairedSummary", "paired_summary", "sign_flip_p"]


def sign_flip_p(differences: Sequence[float], samples: int = 200_000, seed: int = 0) -> float:
    """Two-sided p-value of ``|mean(d)|`` under random sign flips (exact for ``n <= 22``).

    Under the null hypothesis that the two paired configurations are exchangeable, every
    difference is as likely to have either sign; the p-value is the share of the ``2^n`` sign
    patterns whose ``|Σ ± d_i|`` is at least the observed ``|Σ d_i|`` (ties count, so the
    smallest attainable p-value is ``2 / 2^n``).
    """
    d = np.abs(np.asarray(differences, dtype=np.float64))
    n = d.size
    if n == 0:
        return math.nan
    observed = abs(float(np.sum(differences)))
    tolerance = 1e-12 * max(1.0, float(d.sum()))
    if n <= 22:
        # Enumerate the sign patterns in blocks of 2^12 so memory stays small.
        low = min(n, 12)
        low_signs = np.array(list(itertools.product((1.0, -1.0), repeat=low)))
        low_sums = low_signs @ d[:low]
        hits = 0
        for high in itertools.product((1.0, -1.0), repeat=n - low):
            total = low_sums + float(np.dot(high, d[low:])) if n > low else low_sums
            hits += int(np.count_nonzero(np.abs(total) >= observed - tolerance))
        return hits / 2**n
    rng = np.random.default_rng(seed)
    signs = rng.choice((-1.0, 1.0), size=(samples, n))
    hits = int(np.count_nonzero(np.abs(signs @ d) >= observed - tolerance))
    return (hits + 1) / (samples + 1)


@dataclass(frozen=True)
class PairedSummary:
    """The paired comparison of ``b`` against ``a`` (differences ``b - a``)."""

    n: int
    mean: float
    sd: float
    se: float
    cohen_dz: float
    wins: int
    p_sign_flip: float
    p_wilcoxon: float
    p_t: float

    def text(self, digits: int = 4, scientific: bool = False) -> str:
        """``"0.0031 ± 0.0100 (s.e. 0.0022), d_z 0.31, 12 of 20 > 0, p = 0.19 / 0.21 / 0.18"``."""
        fmt = (lambda v: f"{v:.{digits - 1}e}") if scientific else (lambda v: f"{v:.{digits}f}")
        return (
            f"{fmt(self.mean)} ± {fmt(self.sd)} (s.e. {fmt(self.se)}), d_z {self.cohen_dz:.2f}, "
            f"{self.wins} of {self.n} > 0, p = {self.p_sign_flip:.2g} (sign-flip) / "
            f"{self.p_wilcoxon:.2g} (Wilcoxon) / {self.p_t:.2g} (paired t)"
        )


def paired_summary(a: Sequence[float], b: Sequence[float]) -> PairedSummary:
    """Effect size and two-sided tests of ``b - a`` over paired seeds (module docstring)."""
    differences = [float(y) - float(x) for x, y in zip(a, b, strict=True)]
    n = len(differences)
    mean = statistics.fmean(differences) if n else math.nan
    sd = statistics.stdev(differences) if n > 1 else math.nan
    se = sd / math.sqrt(n) if n > 1 else math.nan
    dz = mean / sd if n > 1 and sd > 0 else math.nan
    p_wilcoxon = p_t = math.nan
    try:
        from scipy import stats

        if n > 1 and any(differences):
            p_wilcoxon = float(stats.wilcoxon(differences).pvalue)
            p_t = float(stats.ttest_1samp(differences, 0.0).pvalue)
    except ImportError:  # SciPy is optional: the sign-flip test needs only NumPy
        pass
    return PairedSummary(
        n=n,
        mean=mean,
        sd=sd,
        se=se,
        cohen_dz=dz,
        wins=sum(d > 0 for d in differences),
        p_sign_flip=sign_flip_p(differences),
        p_wilcoxon=p_wilcoxon,
        p_t=p_t,
    )
