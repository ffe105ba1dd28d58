"""Reference moments for the TINY tests, built from stacked per-sample data with explicit loops.

Nothing here comes from ``lightning_grow.statistics.accumulator``: every pair is described by
per-sample slot data ``X[i, q, j]`` (the ``x`` feeding slot ``j`` of output position ``q``, zero on
padding), ``H[i, q]`` (the input of ``second`` at ``q``) and ``V[i, q]`` (the desired update
at ``q``), and the moments are the plain sums of MATH.md §2/§5. The tests in this file check
the builders themselves against real ``F.conv2d`` / ``F.linear`` calls, so that the other test
files can trust them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_grow.solver.moments import PairGeometry, PairMoments

DTYPE = torch.float64


def alternating_signs(n: int) -> Tensor:
    """``ε_i``: +1 for even, -1 for odd sample positions (the statistics' convention)."""
    signs = torch.ones(n, dtype=DTYPE)
    signs[1::2] = -1.0
    return signs


def slot_moments(X: Tensor, H: Tensor, V: Tensor) -> PairMoments:
    """Moments from slot data ``X (n, Q, J, d_x)``, ``H (n, Q, d_h)``, ``V (n, Q, d_v)``."""
    n, d_x = X.shape[0], X.shape[-1]
    eps = alternating_signs(n)

    def cross(weights: Tensor) -> tuple[Tensor, Tensor]:
        Mx = torch.einsum("i,iqjx,iqc->xcj", weights, X, V).reshape(d_x, -1) / n
        P = torch.einsum("i,iqjx,iqh->xjh", weights, X, H) / n
        return Mx, P

    ones = torch.ones(n, dtype=DTYPE)
    Mx, P = cross(ones)
    Mx_noise, P_noise = cross(eps)
    return PairMoments(
        S=torch.einsum("iqa,iqb->ab", H, H) / n,
        M=torch.einsum("iqc,iqh->ch", V, H) / n,
        Sx=torch.einsum("iqjx,iqjy->xy", X, X) / n,
        Mx=Mx,
        P=P,
        v_sq=(V**2).sum() / n,
        n=n,
        Mx_noise=Mx_noise,
        P_noise=P_noise,
    )


def linear_moments(X: Tensor, H: Tensor, V: Tensor) -> PairMoments:
    """Moments of a linear pair from ``X (n, d_x)``, ``H (n, d_h)``, ``V (n, d_v)``."""
    return slot_moments(X[:, None, None, :], H[:, None, :], V[:, None, :])


def with_bias(features: Tensor) -> Tensor:
    """Append the constant-1 entry on the last axis."""
    return torch.cat([features, torch.ones_like(features[..., :1])], dim=-1)


def patch(image: Tensor, row: int, col: int, kernel: tuple[int, int], stride: int, pad: int):
    """The ``(C, kh, kw)`` receptive field of output ``(row, col)``, zeros outside the image."""
    channels, height, width = image.shape
    out = torch.zeros(channels, *kernel, dtype=image.dtype)
    for a in range(kernel[0]):
        for b in range(kernel[1]):
            y, x = row * stride + a - pad, col * stride + b - pad
            if 0 <= y < height and 0 <= x < width:
                out[:, a, b] = image[:, y, x]
    return out


@dataclass
class ConvSetup:
    """A Conv2d ``first`` (and, for conv→conv, a Conv2d ``second``) with explicit hyper-params."""

    in_channels: int = 2
    hidden: int = 3
    out: int = 2
    size: int = 5
    kernel: tuple[int, int] = (3, 3)
    stride: int = 1
    pad: int = 1
    second_kernel: tuple[int, int] = (3, 3)
    second_stride: int = 1
    second_pad: int = 1
    first_bias: bool = True
    second_bias: bool = True

    def hidden_size(self) -> tuple[int, int]:
        return tuple(  # type: ignore[return-value]
            (self.size + 2 * self.pad - k) // self.stride + 1 for k in self.kernel
        )

    def output_size(self) -> tuple[int, int]:
        hh, hw = self.hidden_size()
        kh, kw = self.second_kernel
        s, p = self.second_stride, self.second_pad
        return (hh + 2 * p - kh) // s + 1, (hw + 2 * p - kw) // s + 1


def first_input(setup: ConvSetup, image: Tensor, row: int, col: int) -> Tensor:
    """``x`` of hidden position ``(row, col)``: the unfolded input patch, then the bias entry."""
    x = patch(image, row, col, setup.kernel, setup.stride, setup.pad).reshape(-1)
    return with_bias(x) if setup.first_bias else x


def conv_conv_slots(setup: ConvSetup, images: Tensor, hidden_maps: Tensor, grads: Tensor):
    """Slot data of conv→conv: loops over images, output positions ``q`` and offsets ``j``."""
    n = images.shape[0]
    hh, hw = setup.hidden_size()
    out_h, out_w = setup.output_size()
    kh2, kw2 = setup.second_kernel
    s2, p2 = setup.second_stride, setup.second_pad
    d_x = setup.in_channels * setup.kernel[0] * setup.kernel[1] + int(setup.first_bias)
    X = torch.zeros(n, out_h * out_w, kh2 * kw2, d_x, dtype=DTYPE)
    H, V = [], []
    for i in range(n):
        h_rows, v_rows = [], []
        for qy in range(out_h):
            for qx in range(out_w):
                q = qy * out_w + qx
                for a in range(kh2):
                    for b in range(kw2):
                        py, px = qy * s2 + a - p2, qx * s2 + b - p2
                        if 0 <= py < hh and 0 <= px < hw:
                            X[i, q, a * kw2 + b] = first_input(setup, images[i], py, px)
                h = patch(hidden_maps[i], qy, qx, (kh2, kw2), s2, p2).reshape(-1)
                h_rows.append(with_bias(h) if setup.second_bias else h)
                v_rows.append(grads[i, :, qy, qx])
        H.append(torch.stack(h_rows))
        V.append(torch.stack(v_rows))
    return X, torch.stack(H), torch.stack(V)


def conv_linear_slots(setup: ConvSetup, images: Tensor, hidden_maps: Tensor, grads: Tensor):
    """Slot data of conv→flatten→linear: slot ``j`` is hidden position ``j`` (row-major)."""
    n = images.shape[0]
    hh, hw = setup.hidden_size()
    X = torch.stack(
        [
            torch.stack(
                [first_input(setup, images[i], py, px) for py in range(hh) for px in range(hw)]
            )
            for i in range(n)
        ]
    )[:, None]
    H = hidden_maps.reshape(n, -1)
    H = (with_bias(H) if setup.second_bias else H)[:, None]
    return X, H, grads[:, None]


def conv_geometry(setup: ConvSetup, kind: str) -> PairGeometry:
    hh, hw = setup.hidden_size()
    kh, kw = setup.kernel
    return PairGeometry(
        kind=kind,  # type: ignore[arg-type]
        in_features=setup.in_channels * kh * kw,
        hidden=setup.hidden,
        out_features=setup.out,
        first_bias=setup.first_bias,
        second_bias=setup.second_bias,
        first_kernel=(setup.in_channels, kh, kw),
        second_kernel=setup.second_kernel if kind == "conv" else None,
        hidden_positions=hh * hw if kind == "conv_linear" else None,
    )


def random_conv_pair(setup: ConvSetup, kind: str, n: int, seed: int, activation=F.relu):
    """Random images, a random ``first``, hidden maps and random desired updates.

    Returns ``(moments, geometry, (X, H, V), images, hidden_maps)``.
    """
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, setup.in_channels, setup.size, setup.size, generator=g, dtype=DTYPE)
    w1 = torch.randn(setup.hidden, setup.in_channels, *setup.kernel, generator=g, dtype=DTYPE)
    b1 = torch.randn(setup.hidden, generator=g, dtype=DTYPE) if setup.first_bias else None
    hidden_maps = activation(F.conv2d(images, w1, b1, stride=setup.stride, padding=setup.pad))
    if kind == "conv":
        grads = torch.randn(n, setup.out, *setup.output_size(), generator=g, dtype=DTYPE)
        slots = conv_conv_slots(setup, images, hidden_maps, grads)
    else:
        grads = torch.randn(n, setup.out, generator=g, dtype=DTYPE)
        slots = conv_linear_slots(setup, images, hidden_maps, grads)
    geometry = conv_geometry(setup, kind)
    moments = slot_moments(*slots)
    moments.check(geometry)
    return moments, geometry, slots, images, hidden_maps


# ----------------------------------------------------------------------------- builder checks

CONV_SETUPS = [
    ConvSetup(),
    ConvSetup(stride=2, pad=0, size=9, second_kernel=(2, 2), second_stride=2, second_pad=0),
    ConvSetup(second_stride=2, second_pad=1, first_bias=False, second_bias=False),
    ConvSetup(kernel=(2, 3), second_kernel=(2, 1), second_pad=0),
]


@pytest.mark.parametrize("setup", CONV_SETUPS)
def test_conv_slots_reproduce_real_convolutions(setup: ConvSetup) -> None:
    """``W1 x_(q,j)`` is the hidden value feeding slot ``j`` and ``W2 h_q`` is conv2's output."""
    _, _, (X, H, _), images, hidden_maps = random_conv_pair(setup, "conv", n=2, seed=1)
    g = torch.Generator().manual_seed(2)
    w1 = torch.randn(setup.hidden, setup.in_channels, *setup.kernel, generator=g, dtype=DTYPE)
    b1 = torch.randn(setup.hidden, generator=g, dtype=DTYPE) if setup.first_bias else None
    w2 = torch.randn(setup.out, setup.hidden, *setup.second_kernel, generator=g, dtype=DTYPE)
    b2 = torch.randn(setup.out, generator=g, dtype=DTYPE) if setup.second_bias else None
    # Without activation, Σ_j W2[:, :, j] z1(x_(q,j)) must be conv2(z1): padded slots have
    # x = 0 (bias entry included), like the zeros conv2 pads z1 with.
    z1 = F.conv2d(images, w1, b1, stride=setup.stride, padding=setup.pad)
    real = F.conv2d(z1, w2, b2, stride=setup.second_stride, padding=setup.second_pad)
    flat_w1 = w1.reshape(setup.hidden, -1)
    if b1 is not None:
        flat_w1 = torch.cat([flat_w1, b1[:, None]], dim=1)
    padded = X.abs().sum(-1) == 0
    z1_slots = torch.einsum("kx,iqjx->iqjk", flat_w1, X)
    assert torch.all(z1_slots[padded] == 0)
    w2_slots = w2.reshape(setup.out, setup.hidden, -1)
    looped = torch.einsum("ckj,iqjk->iqc", w2_slots, z1_slots)
    if b2 is not None:
        looped = looped + b2
    torch.testing.assert_close(looped, real.flatten(2).transpose(1, 2))
    # second's flat weight acting on h_q gives conv2 of the ReLU hidden maps.
    flat_w2 = w2.reshape(setup.out, -1)
    if b2 is not None:
        flat_w2 = torch.cat([flat_w2, b2[:, None]], dim=1)
    real2 = F.conv2d(hidden_maps, w2, b2, stride=setup.second_stride, padding=setup.second_pad)
    torch.testing.assert_close(H @ flat_w2.T, real2.flatten(2).transpose(1, 2))


def test_conv_linear_slots_reproduce_flatten_linear() -> None:
    setup = ConvSetup(out=4)
    _, _, (X, H, _), images, hidden_maps = random_conv_pair(setup, "conv_linear", n=3, seed=3)
    g = torch.Generator().manual_seed(4)
    w1 = torch.randn(setup.hidden, setup.in_channels, *setup.kernel, generator=g, dtype=DTYPE)
    b1 = torch.randn(setup.hidden, generator=g, dtype=DTYPE)
    z1 = F.conv2d(images, w1, b1, stride=setup.stride, padding=setup.pad)
    flat_w1 = torch.cat([w1.reshape(setup.hidden, -1), b1[:, None]], dim=1)
    looped = torch.einsum("kx,ijx->ikj", flat_w1, X[:, 0])
    torch.testing.assert_close(looped, z1.flatten(2))
    torch.testing.assert_close(H[:, 0, :-1], hidden_maps.flatten(1))
    assert torch.all(H[:, 0, -1] == 1)


def test_conv_sx_is_position_weighted_by_reach() -> None:
    """``Sx = Σ_p c_p x_p x_pᵀ`` with ``c_p`` the output positions hidden position ``p`` reaches."""
    setup = ConvSetup(size=4, second_stride=2, second_pad=1)
    moments, _, _, images, _ = random_conv_pair(setup, "conv", n=2, seed=5)
    hh, hw = setup.hidden_size()
    out_h, out_w = setup.output_size()
    reach = torch.zeros(hh, hw, dtype=DTYPE)
    for qy in range(out_h):
        for qx in range(out_w):
            for a in range(setup.second_kernel[0]):
                for b in range(setup.second_kernel[1]):
                    py = qy * setup.second_stride + a - setup.second_pad
                    px = qx * setup.second_stride + b - setup.second_pad
                    if 0 <= py < hh and 0 <= px < hw:
                        reach[py, px] += 1
    expected = torch.zeros_like(moments.Sx)
    for i in range(images.shape[0]):
        for py in range(hh):
            for px in range(hw):
                x = first_input(setup, images[i], py, px)
                expected += reach[py, px] * torch.outer(x, x)
    torch.testing.assert_close(moments.Sx, expected / images.shape[0])
