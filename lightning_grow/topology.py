"""Where a plain ``torch.nn`` model can grow: growable (first, second) layer pairs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from lightning_grow.moments import PairGeometry, PairKind

__all__ = ["GrowablePair", "find_growable_pairs"]


@dataclass(eq=False)
class GrowablePair:
    """Two layers with a hidden representation between them that nothing else reads.

    ``x --first--> z1 --[ops ...]--> h --second--> z2`` where ``ops`` are, in order, the modules or
    functions applied to the hidden tensor (BatchNorm, activation, dropout, identity, flatten).

    Attributes
    ----------
    first_name, second_name
        Qualified module names inside the network (as in ``named_modules()``).
    first, second
        The ``nn.Linear`` / ``nn.Conv2d`` modules themselves.
    batch_norm, batch_norm_name
        The BatchNorm on the hidden tensor, if any (it grows with ``first``).
    between
        ``(name, op)`` for every op between ``first`` and ``second`` in execution order, BatchNorm
        included; ``op`` is the module or the function the graph calls (``name`` is the module
        name, or the function's name for a functional call).
    activation_slope
        One-sided derivative of the activation at 0 (1 for ReLU, 0.5 for GELU/SiLU, 1 for tanh,
        1 when there is no activation): the ``σ'(0)`` of the first-order predictions.
    dead_at_zero
        ``True`` when PyTorch's derivative of the activation at exactly 0 is 0 (ReLU family): a
        unit whose pre-activation is identically 0 never receives a gradient.
    flatten
        ``True`` for Conv2d → flatten → Linear.
    """

    first_name: str
    second_name: str
    first: nn.Linear | nn.Conv2d
    second: nn.Linear | nn.Conv2d
    batch_norm: nn.BatchNorm1d | nn.BatchNorm2d | None = None
    batch_norm_name: str | None = None
    between: tuple[tuple[str, Callable[[Tensor], Tensor]], ...] = ()
    activation_slope: float = 1.0
    dead_at_zero: bool = False
    flatten: bool = False

    @property
    def name(self) -> str:
        """``"<first> -> <second>"``: the key used in logs, histories and arguments."""
        return f"{self.first_name} -> {self.second_name}"

    @property
    def kind(self) -> PairKind:
        if isinstance(self.first, nn.Conv2d):
            return "conv" if isinstance(self.second, nn.Conv2d) else "conv_linear"
        return "linear"

    @property
    def width(self) -> int:
        """Current hidden width (``first``'s output features / channels)."""
        if isinstance(self.first, nn.Conv2d):
            return self.first.out_channels
        return self.first.out_features

    def geometry(self) -> PairGeometry:
        """The :class:`~lightning_grow.moments.PairGeometry` of the pair as it is now."""
        first, second, hidden = self.first, self.second, self.width
        if isinstance(first, nn.Conv2d):
            kh, kw = first.kernel_size
            in_features = first.in_channels * kh * kw
            first_kernel: tuple[int, int, int] | None = (first.in_channels, kh, kw)
        else:
            in_features, first_kernel = first.in_features, None
        out_features = second.out_channels if isinstance(second, nn.Conv2d) else second.out_features
        kind = self.kind
        second_kernel = tuple(second.kernel_size) if isinstance(second, nn.Conv2d) else None
        hidden_positions = second.in_features // hidden if kind == "conv_linear" else None
        return PairGeometry(
            kind=kind,
            in_features=in_features,
            hidden=hidden,
            out_features=out_features,
            first_bias=first.bias is not None,
            second_bias=second.bias is not None,
            first_kernel=first_kernel,
            second_kernel=second_kernel,  # type: ignore[arg-type]
            hidden_positions=hidden_positions,
        )


def find_growable_pairs(model: nn.Module) -> list[GrowablePair]:
    """Placeholder: implemented by the topology work (issue 4)."""
    raise NotImplementedError
