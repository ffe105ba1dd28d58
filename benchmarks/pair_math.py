"""One Linear → activation → Linear pair seen sample by sample: x, h, v and their exact moments.

The moments are built here from the stacked per-sample vectors (float64, autograd on a summed
loss), independently of the library's hooks, so that the λ comparison with GroMo and the
first-order fidelity check test ``lightning_grow.solver.tiny`` alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_grow.solver.moments import PairGeometry, PairMoments

__all__ = ["PairSamples", "linear_geometry", "moments_from_samples", "pair_loss", "pair_samples"]


@dataclass(frozen=True)
class PairSamples:
    """Per-sample vectors of a pair (float64), with the trailing 1 for biased layers.

    Attributes
    ----------
    x
        ``(n, d_x)`` inputs of ``first``.
    h
        ``(n, d_h)`` inputs of ``second``.
    v
        ``(n, d_v)`` desired updates ``-∂ℓ_i/∂z2_i`` of the per-sample losses ``ℓ_i``.
    """

    x: Tensor
    h: Tensor
    v: Tensor


def pair_loss(outputs: Tensor, targets: Tensor, loss: str, reduction: str = "mean") -> Tensor:
    """Cross-entropy (class targets) or squared error summed over outputs, per-sample mean/sum.

    For ``"mse"`` the per-sample loss is ``||y - t||²`` (``F.mse_loss`` with ``reduction="sum"``
    divided by ``n`` for the mean), so ``v`` is ``2 (t - y)``.
    """
    if loss == "cross_entropy":
        return F.cross_entropy(outputs, targets, reduction=reduction)
    total = F.mse_loss(outputs, targets.to(outputs.dtype), reduction="sum")
    return total if reduction == "sum" else total / outputs.shape[0]


def _with_one(values: Tensor, bias: bool) -> Tensor:
    return torch.cat([values, values.new_ones(values.shape[0], 1)], dim=1) if bias else values


def pair_samples(
    first: nn.Linear,
    activation: nn.Module,
    second: nn.Linear,
    inputs: Tensor,
    targets: Tensor,
    loss: str = "cross_entropy",
) -> PairSamples:
    """Per-sample x, h, v of the pair ``second(activation(first(inputs)))`` in float64.

    ``v_i`` is the gradient of the summed loss w.r.t. ``second``'s output row ``i``, negated:
    with a summed loss each row only depends on its own sample, so it is ``-∂ℓ_i/∂z2_i``.
    """
    x = inputs.to(torch.float64)
    weight1, bias1 = first.weight.double(), first.bias.double()
    weight2, bias2 = second.weight.double(), second.bias.double()
    with torch.no_grad():
        h = activation(x @ weight1.T + bias1)
    z2 = (h @ weight2.T + bias2).requires_grad_(True)
    (grad,) = torch.autograd.grad(pair_loss(z2, targets, loss, reduction="sum"), z2)
    return PairSamples(
        x=_with_one(x, first.bias is not None),
        h=_with_one(h, second.bias is not None),
        v=-grad.detach(),
    )


def linear_geometry(first: nn.Linear, second: nn.Linear) -> PairGeometry:
    """The ``PairGeometry`` of a Linear → Linear pair."""
    return PairGeometry(
        kind="linear",
        in_features=first.in_features,
        hidden=first.out_features,
        out_features=second.out_features,
        first_bias=first.bias is not None,
        second_bias=second.bias is not None,
    )


def moments_from_samples(samples: PairSamples) -> PairMoments:
    """Exact moments (MATH.md §2) of stacked samples: plain averages of outer products.

    The noise moments use the sign ``+1`` for even and ``-1`` for odd sample positions, as the
    layout contract prescribes.
    """
    x, h, v = samples.x, samples.h, samples.v
    n = x.shape[0]
    signs = torch.ones(n, dtype=x.dtype)
    signs[1::2] = -1.0
    signed_x = x * signs[:, None]
    return PairMoments(
        S=h.T @ h / n,
        M=v.T @ h / n,
        Sx=x.T @ x / n,
        Mx=x.T @ v / n,
        P=(x.T @ h / n)[:, None, :],
        v_sq=(v * v).sum() / n,
        n=n,
        Mx_noise=signed_x.T @ v / n,
        P_noise=(signed_x.T @ h / n)[:, None, :],
    )
