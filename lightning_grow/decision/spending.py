"""One error rate for the whole callback: how strict each significance test is (alpha spending).

The callback tests its pairs at every decision and keeps testing: extended windows, pauses, the
whole of training. With a fixed level per test, the chance that *some* test passes on pure noise
grows with the number of tests (with margin 1.0 and 16 windows, a third of noise runs grew). So
the callback states one error rate ``α``, the probability that a network with no expressivity
bottleneck grows at all before its next real growth, and spends it over the tests:

* the ``k``-th decision since the last growth (``k = 1, 2, …``) may spend
  ``α_k = α / (k (k + 1))``, so ``Σ_k α_k = α`` (the first decision gets ``α/2``, the first
  ``K`` together ``α K / (K + 1)``);
* the ``m`` pairs tested at that decision share it: each pair's test runs at level
  ``α_k / m``, i.e. with margin ``z = Φ⁻¹(1 − α_k / m)`` (docs/math.md §6: under the worst-case
  null a singular value passes with probability about ``1 − Φ(z)``).

A union bound over all tests then gives ``P(any growth | no bottleneck) ≤ α``, whatever the
dependence between tests (an extended window re-tests the samples of the previous one). The
account restarts after every growth: under the null the first growth is the false one, so the
bound holds for "grows at all", and the network after a real growth gets the same guarantee
against growing past its right size.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

__all__ = ["AlphaSpending", "spent_level"]


def spent_level(alpha: float, decision: int) -> float:
    """``α_k = α / (k (k + 1))``: what the ``k``-th decision since the last growth may spend."""
    if decision < 1:
        raise ValueError(f"decisions count from 1, got {decision}")
    return alpha / (decision * (decision + 1))


@dataclass
class AlphaSpending:
    """The account of one callback: decisions since the last growth, and each test's margin.

    Parameters
    ----------
    alpha
        The false-growth rate to meet, in ``(0, 1)``.
    decisions
        Decisions taken since the last growth (restored from a checkpoint).
    """

    alpha: float
    decisions: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")

    def level(self, pairs: int) -> float:
        """Level of each of the ``pairs`` tests at the next decision."""
        return spent_level(self.alpha, self.decisions + 1) / max(pairs, 1)

    def margin(self, pairs: int) -> float:
        """``z = Φ⁻¹(1 − level)``: the significance margin of the next decision's tests."""
        return NormalDist().inv_cdf(1.0 - self.level(pairs))

    def record(self, grew: bool) -> None:
        """Count a decision; a growth starts a new account."""
        self.decisions = 0 if grew else self.decisions + 1

    def state_dict(self) -> dict[str, int]:
        return {"decisions": self.decisions}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.decisions = int(state.get("decisions", 0))
