"""Spreading a decision's solves over DDP ranks (as distributed K-FAC spreads its inverses).

After the statistics are all-reduced every rank holds the same global moments, so rank ``r``
solves the pairs ``r, r + world, r + 2·world, …`` and the candidates travel to every rank by one
broadcast per rank. The solves are the same computations on the same inputs as on one rank, so
the growth is bitwise that of one rank solving everything (on identical devices), while the
decision's solve time falls with the number of ranks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from lightning_grow.decision.planner import GrowthConfig, Solved, solve_pairs
from lightning_grow.solver.moments import PairMoments
from lightning_grow.solver.tiny import GrowthCandidates
from lightning_grow.topology.pairs import GrowablePair

__all__ = ["solve_spread"]


def _to_cpu(candidates: GrowthCandidates) -> GrowthCandidates:
    moved = {
        field.name: getattr(candidates, field.name).cpu()
        for field in dataclasses.fields(candidates)
        if isinstance(getattr(candidates, field.name), Tensor)
    }
    return dataclasses.replace(candidates, **moved)


def solve_spread(
    pairs: list[GrowablePair],
    moments: Mapping[str, PairMoments],
    config: GrowthConfig,
    *,
    decision_index: int,
    rank: int,
    world_size: int,
    broadcast: Callable[[Any, int], Any],
) -> Solved:
    """Solve this rank's share of the pairs and gather every rank's candidates.

    Parameters
    ----------
    broadcast
        ``broadcast(obj, src)``: the object of rank ``src`` on every rank (called by every rank,
        in the same order).
    """
    candidates, failed, seconds = solve_pairs(
        pairs,
        moments,
        config,
        decision_index=decision_index,
        mine=lambda index: index % world_size == rank,
    )
    local = ({name: _to_cpu(c) for name, c in candidates.items()}, failed, seconds)
    gathered: dict[str, GrowthCandidates] = {}
    all_failed: dict[str, str] = {}
    slowest = 0.0
    for source in range(world_size):
        part = broadcast(local if rank == source else None, source)
        gathered.update(part[0])
        all_failed.update(part[1])
        slowest = max(slowest, part[2])
    # Keep the pairs' order (the selection and the events follow it).
    ordered = {pair.name: gathered[pair.name] for pair in pairs if pair.name in gathered}
    return ordered, all_failed, slowest
