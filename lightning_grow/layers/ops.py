"""The kinds of op that may sit between the two layers of a pair, and how each is replayed.

Discovery (:mod:`lightning_grow.topology._hidden_ops`) classifies every op once; the kind is
kept on the pair, so that replaying new units through the ops (the amplitude search) branches
on what the op is, never on what it is called.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from lightning_grow.layers.depthwise import replay_depthwise
from lightning_grow.solver.method import Vocabulary

__all__ = ["OpKind", "replay_op"]


class OpKind(Vocabulary):
    """What an op between the layers does to one hidden unit."""

    BATCH_NORM = "batch_norm"  # normalises each unit (grows with ``first``)
    ACTIVATION = "activation"  # pointwise
    DROPOUT = "dropout"  # identity in eval mode
    IDENTITY = "identity"
    FLATTEN = "flatten"  # Conv2d → Linear only: every dimension but the batch into one
    DEPTHWISE = "depthwise"  # a depthwise conv: grows with ``first``, identity for new units


def replay_op(kind: OpKind, op: Callable[[Tensor], Tensor], z: Tensor) -> Tensor:
    """``op`` applied to new units' values ``z`` in eval semantics (not for norms, which need
    the new units' own entries: see :meth:`~lightning_grow.layers.registry.NormHandler.replay`).
    """
    if kind in (OpKind.DROPOUT, OpKind.IDENTITY):
        return z
    if kind is OpKind.FLATTEN:
        return z.flatten(1)
    if kind is OpKind.DEPTHWISE:
        # A new channel's filter is a centred delta (layers/depthwise.py): replayed for real.
        assert isinstance(op, nn.Module)
        return replay_depthwise(op, z)
    if kind is OpKind.BATCH_NORM:
        raise ValueError("a norm is replayed by its NormHandler, with the new units' entries")
    return op(z)
