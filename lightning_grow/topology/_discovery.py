"""Which network inside a LightningModule grows, and which of its layer pairs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

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


def _find_network(pl_module: nn.Module, network_name: str | None) -> tuple[nn.Module, str]:
    if network_name is not None:
        network = pl_module.get_submodule(network_name)
        return network, network_name
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
    return child, name


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
