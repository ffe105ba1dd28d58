"""Random growth that replays a recorded schedule: the equal-size baseline for TINY.

``GrowthCallback(method="random")`` decides where and how much from TINY's analysis online, but
random neurons never remove the bottleneck that analysis measures, so it keeps growing and ends
several times larger than TINY. To compare the *neurons* at the same schedule, this callback adds
random neurons (Kaiming-normal fan-in, zero bias, zero fan-out: function-preserving, like
``method="random"``) at exactly the optimizer steps and counts that a TINY run recorded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_grow import NewNeurons, find_growable_pairs, grow_pair


class ReplayGrowth(Callback):
    """Add random neurons at the steps and counts of recorded growth events.

    Parameters
    ----------
    events
        ``GrowthEvent.to_dict()`` records of the run to replay (pair names as that run saw them,
        relative to the LightningModule).
    seed
        Seed of the random fan-in weights.
    """

    def __init__(self, events: Sequence[dict[str, Any]], seed: int = 0) -> None:
        self.schedule: dict[int, list[tuple[str, int]]] = {}
        for event in events:
            if event["accepted"]:
                self.schedule.setdefault(event["step"], []).append(
                    (event["pair"], event["neurons_added"])
                )
        self.generator = torch.Generator().manual_seed(seed)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any):
        if trainer.fit_loop._should_accumulate():
            return
        growth = self.schedule.get(trainer.global_step)
        if not growth:
            return
        pairs = {pair.name: pair for pair in find_growable_pairs(pl_module)}
        for name, count in growth:
            pair = pairs[name]
            first = pair.first
            fan_in = first.weight[0].numel()
            weight = torch.randn(
                (count, *first.weight.shape[1:]), generator=self.generator, dtype=torch.float64
            ) * math.sqrt(2.0 / fan_in)
            second = pair.second.weight
            columns = count * (second.shape[1] // pair.width)
            neurons = NewNeurons(
                first_weight=weight.to(first.weight.dtype),
                first_bias=None if first.bias is None else first.bias.new_zeros(count),
                second_weight=second.new_zeros((second.shape[0], columns)),
            )
            grow_pair(pair, neurons, trainer.optimizers)
