"""The layer-handler registry, the op kinds kept from discovery, and the vocabularies."""

from __future__ import annotations

from collections import OrderedDict
from typing import get_args

import torch
from torch import nn

from lightning_grow.decision.amplitude import inject
from lightning_grow.layers import (
    BATCH_NORM_TYPES,
    OpKind,
    is_norm,
    layer_handler,
    norm_handler,
    norm_types,
    weight_layer_types,
)
from lightning_grow.layers.conv import Conv1dHandler, Conv2dHandler
from lightning_grow.layers.linear import LinearHandler
from lightning_grow.reporting.events import Reason, TimingPhase, zero_timings
from lightning_grow.solver.method import Method, MethodName
from lightning_grow.surgery.widen import NewNeurons, grow_pair
from lightning_grow.topology.pairs import GrowablePair, find_growable_pairs


def test_each_layer_type_has_one_handler() -> None:
    assert set(weight_layer_types()) == {nn.Linear, nn.Conv1d, nn.Conv2d}
    assert norm_types() == BATCH_NORM_TYPES
    assert isinstance(layer_handler(nn.Linear(2, 3)), LinearHandler)
    assert type(layer_handler(nn.Conv2d(2, 3, 3))) is Conv2dHandler
    assert isinstance(layer_handler(nn.Conv1d(2, 3, 3)), Conv1dHandler)

    class MyLinear(nn.Linear):  # subclasses are handled by their base type's handler
        pass

    assert isinstance(layer_handler(MyLinear(2, 3)), LinearHandler)
    assert layer_handler(nn.BatchNorm1d(3)) is None and layer_handler(nn.ReLU()) is None
    assert is_norm(nn.SyncBatchNorm(3)) and norm_handler(nn.Linear(2, 3)) is None


def test_handlers_give_widths_inputs_and_kernels() -> None:
    conv = nn.Conv2d(3, 5, (3, 1), groups=1)
    handler = layer_handler(conv)
    assert handler is not None and handler.spatial
    assert (handler.out_width(conv), handler.in_width(conv)) == (5, 3)
    assert handler.input_size(conv) == 9 and handler.input_kernel(conv) == (3, 3, 1)
    assert handler.kernel_size(conv) == (3, 1)
    grouped = nn.Conv2d(4, 4, 3, groups=2)
    assert "groups=2" in (handler.problem(grouped) or "")
    linear = nn.Linear(4, 2)
    assert layer_handler(linear).input_kernel(linear) is None  # type: ignore[union-attr]
    # A Conv1d is a Conv2d of height 1 for the statistics (kernel (1, k), maps (B, C, 1, L)).
    conv1d = nn.Conv1d(3, 5, 4, padding=1)
    handler = layer_handler(conv1d)
    assert handler is not None and handler.spatial and handler.unbatched_dims == 2
    assert handler.input_size(conv1d) == 12 and handler.input_kernel(conv1d) == (3, 1, 4)
    assert handler.kernel_size(conv1d) == (1, 4)
    assert handler.to_map(torch.zeros(2, 3, 7)).shape == (2, 3, 1, 7)
    assert "Conv1d with dilation=(2,)" in (handler.problem(nn.Conv1d(3, 5, 3, dilation=2)) or "")


class _NamedToConfuse(nn.Module):
    """A parent named like a dropout and an activation named like a flatten: neither is one."""

    def __init__(self) -> None:
        super().__init__()
        self.mc_dropout_mlp = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(4, 3),
                act_before_flatten=nn.Tanh(),
                drop=nn.Dropout(0.5),
                fc2=nn.Linear(3, 2),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mc_dropout_mlp(x)


def test_the_replay_follows_the_kind_discovery_found_not_the_names() -> None:
    torch.manual_seed(0)
    model = _NamedToConfuse().eval()
    (pair,) = find_growable_pairs(model)
    assert [(op.name, op.kind) for op in pair.between] == [
        ("mc_dropout_mlp.act_before_flatten", OpKind.ACTIVATION),
        ("mc_dropout_mlp.drop", OpKind.DROPOUT),
    ]
    neurons = NewNeurons(torch.randn(2, 4), torch.randn(2), torch.randn(2, 2))
    x = torch.randn(5, 4)
    with torch.no_grad(), inject(pair, neurons, scale=1.0):
        tried = model(x)
    # The candidates tried through hooks must be exactly the network after surgery (a guess
    # from the names would skip the tanh, or flatten, and the two would differ).
    grow_pair(pair, neurons)
    with torch.no_grad():
        grown = model(x)
    torch.testing.assert_close(tried, grown)


def test_hand_built_pairs_get_their_kinds_from_the_ops_types() -> None:
    first, second = nn.Conv2d(1, 2, 3), nn.Linear(2, 3)
    norm, flatten = nn.BatchNorm2d(2), nn.Flatten()
    pair = GrowablePair(
        "a", "b", first, second, norm, "bn", between=(("bn", norm), ("flatten_view", flatten))
    )
    assert [op.kind for op in pair.between] == [OpKind.BATCH_NORM, OpKind.FLATTEN]
    name, op = pair.between[0]
    assert (name, op) == ("bn", norm) and pair.between[1][1] is flatten


def test_vocabularies_are_their_values_where_they_are_logged() -> None:
    assert get_args(MethodName) == Method.values()
    assert Method("gradmax") is Method.GRADMAX and Method.GRADMAX == "gradmax"
    assert f"{Reason.NO_SAMPLES}" == str(Reason.NO_SAMPLES) == "no samples"
    assert zero_timings() == {"statistics": 0.0, "solve": 0.0, "search": 0.0, "surgery": 0.0}
    assert TimingPhase.values() == tuple(zero_timings())
    assert {reason.value for reason in Reason} >= {"grown", "no samples", "solve failed"}
