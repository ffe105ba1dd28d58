"""Which network inside a LightningModule grows, and which of its layer pairs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import nn

from lightning_grow.topology.pairs import (
    GrowablePair,
    GrowthConfigurationError,
    PairName,
    find_growable_pairs,
    pairs_from_names,
)

PairsArgument = str | Sequence[PairName] | Callable[[GrowablePair], bool]


def discover_pairs(
    pl_module: nn.Module, network_name: str | None, spec: PairsArgument
) -> tuple[nn.Module, list[GrowablePair]]:
    """The network to grow and its pairs, named relative to ``pl_module``.

    ``network_name`` selects a submodule; ``None`` traces ``pl_module`` itself and falls back to
    its largest child (a LightningModule's ``forward`` is often not the network's). ``spec`` is
    ``"auto"``, explicit pairs, or a predicate over the discovered pairs.
    """
    network, prefix = _find_network(pl_module, network_name)
    return network, _find_pairs(network, prefix, spec)


def _uncompiled(network: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module a ``torch.compile`` wrapper runs, and its name (``net._orig_mod``).

    An ``OptimizedModule`` has no ``forward`` torch.fx can trace; its ``_orig_mod`` is the user's
    module, whose layers the compiled code calls (hooks on them are seen by dynamo), so growth
    works on it and the compiled code is rebuilt when the shapes change.
    """
    compiled = getattr(torch, "_dynamo", None) and torch._dynamo.eval_frame.OptimizedModule
    while compiled and isinstance(network, compiled):
        network = network._orig_mod  # type: ignore[assignment]
        name = f"{name}._orig_mod" if name else "_orig_mod"
    return network, name


def _find_network(pl_module: nn.Module, network_name: str | None) -> tuple[nn.Module, str]:
    if network_name is not None:
        return _uncompiled(pl_module.get_submodule(network_name), network_name)
    try:
        if find_growable_pairs(pl_module):
            return pl_module, ""
    except Exception:  # any tracing failure means: look at the children
        pass
    children = [
        (name, child)
        for name, child in pl_module.named_children()
        if any(True for _ in child.parameters())
    ]
    if not children:
        raise GrowthConfigurationError(
            f"{type(pl_module).__name__} has no submodule with parameters to grow"
        )
    name, child = max(children, key=lambda item: sum(p.numel() for p in item[1].parameters()))
    return _uncompiled(child, name)


def _find_pairs(network: nn.Module, prefix: str, spec: PairsArgument) -> list[GrowablePair]:
    if spec == "auto":
        pairs = find_growable_pairs(network)
    elif callable(spec):
        pairs = find_growable_pairs(network, predicate=spec)
    else:
        pairs = pairs_from_names(network, list(spec))  # type: ignore[arg-type]
    if not pairs:
        raise GrowthConfigurationError(
            "GrowthCallback found no growable layer pair to grow (after filtering). "
            "Pass pairs=[('first', 'second')] to name them explicitly."
        )
    if prefix:
        pairs = [
            dataclasses.replace(
                pair,
                first_name=f"{prefix}.{pair.first_name}",
                second_name=f"{prefix}.{pair.second_name}",
                batch_norm_name=(
                    f"{prefix}.{pair.batch_norm_name}" if pair.batch_norm_name else None
                ),
            )
            for pair in pairs
        ]
    return pairs
