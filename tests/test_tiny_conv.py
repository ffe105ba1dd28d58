"""Convolutional layouts: candidates applied as real conv/linear weights match the flat formulas."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from test_tiny_reference import DTYPE, ConvSetup, random_conv_pair

from lightning_grow.solver.tiny import bottleneck_correlation, compute_candidates

SETUPS = [
    ConvSetup(),  # stride 1, padding 1 on both layers
    ConvSetup(pad=0, second_pad=0, size=6),  # stride 1, padding 0
    ConvSetup(stride=2, pad=1, second_stride=2, second_pad=1, size=7),  # stride 2, padding 1
    ConvSetup(stride=2, pad=0, size=9, second_kernel=(2, 2), second_stride=2, second_pad=0),
    ConvSetup(kernel=(2, 3), second_kernel=(2, 1), second_pad=0, first_bias=False),
]


def _random_candidates(moments, geometry, seed: int):
    """TINY candidates with α/ω replaced by unstructured random values (layout only)."""
    candidates = compute_candidates(moments, geometry, max_neurons=3)
    g = torch.Generator().manual_seed(seed)
    return dataclasses.replace(
        candidates,
        alpha=torch.randn(candidates.alpha.shape, generator=g, dtype=DTYPE),
        omega=torch.randn(candidates.omega.shape, generator=g, dtype=DTYPE),
    )


def _looped_contribution(candidates, X, k: int):
    """``Σ_k Σ_j ω[(c, j), k] α_kᵀ x_(q,j)`` for every image ``i``, position ``q``, output ``c``."""
    n, positions, slots, _ = X.shape
    d_v = candidates.geometry.d_v
    out = torch.zeros(n, positions, d_v, dtype=DTYPE)
    for i in range(n):
        for q in range(positions):
            for c in range(d_v):
                for j in range(slots):
                    for neuron in range(k):
                        activity = candidates.alpha[neuron] @ X[i, q, j]
                        out[i, q, c] += candidates.omega[c * slots + j, neuron] * activity
    return out


def _new_first_output(candidates, setup: ConvSetup, images, k: int):
    weight, bias = candidates.first_weight(k), candidates.first_bias(k)
    assert weight.shape == (k, setup.in_channels, *setup.kernel)
    assert (bias is None) == (not setup.first_bias)
    return F.conv2d(images, weight, bias, stride=setup.stride, padding=setup.pad)


@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("k", [1, 3])
def test_conv_conv_weights_reproduce_flat_contribution(setup: ConvSetup, k: int) -> None:
    moments, geometry, (X, _, _), images, _ = random_conv_pair(setup, "conv", n=2, seed=k)
    candidates = _random_candidates(moments, geometry, seed=10 + k)
    new_hidden = _new_first_output(candidates, setup, images, k)  # identity activation
    second = candidates.second_weight(k)
    assert second.shape == (setup.out, k, *setup.second_kernel)
    real = F.conv2d(new_hidden, second, None, stride=setup.second_stride, padding=setup.second_pad)
    expected = _looped_contribution(candidates, X, k)
    torch.testing.assert_close(real.flatten(2).transpose(1, 2), expected)


@pytest.mark.parametrize("setup", [SETUPS[0], SETUPS[3], SETUPS[4]])
def test_conv_linear_weights_reproduce_flat_contribution(setup: ConvSetup) -> None:
    setup = dataclasses.replace(setup, out=3)
    moments, geometry, (X, _, _), images, _ = random_conv_pair(setup, "conv_linear", n=2, seed=7)
    candidates = _random_candidates(moments, geometry, seed=8)
    k = 2
    new_hidden = _new_first_output(candidates, setup, images, k)
    second = candidates.second_weight(k)
    assert second.shape == (setup.out, k * geometry.num_slots)
    # flatten of the widened map appends the new channels' positions, channel-major.
    real = F.linear(new_hidden.flatten(1), second)
    expected = _looped_contribution(candidates, X, k)[:, 0]
    torch.testing.assert_close(real, expected)


@pytest.mark.parametrize("kind", ["conv", "conv_linear"])
@pytest.mark.parametrize("method", ["tiny", "gradmax", "random"])
def test_first_order_decrease_matches_real_layers(kind: str, method: str) -> None:
    """``σ'(0) Σ α_kᵀ Mx ω_k`` equals ``E Σ_q v_qᵀ Δz2_q`` of the real layers."""
    setup = ConvSetup(stride=2, second_stride=2, size=6) if kind == "conv" else ConvSetup(out=3)
    moments, geometry, (_, _, V), images, _ = random_conv_pair(setup, kind, n=3, seed=11)
    slope = 0.5
    candidates = compute_candidates(
        moments, geometry, method=method, max_neurons=3, activation_slope=slope, seed=4
    )
    for k in (1, 2, 3):
        new_hidden = _new_first_output(candidates, setup, images, k)
        if kind == "conv":
            stride, pad = setup.second_stride, setup.second_pad
            delta = F.conv2d(new_hidden, candidates.second_weight(k), None, stride, pad)
            delta = delta.flatten(2).transpose(1, 2)
        else:
            delta = F.linear(new_hidden.flatten(1), candidates.second_weight(k))[:, None]
        measured = slope * (V * delta).sum() / V.shape[0]
        torch.testing.assert_close(
            candidates.first_order_decrease[k - 1], measured, rtol=1e-9, atol=1e-12
        )
    if method == "tiny":
        assert candidates.first_order_decrease[-1] > 0


def test_one_by_one_second_kernel_reduction_is_exact() -> None:
    """With a 1×1 ``second`` the Sx approximation is exact: the reduction is Σ λ_k²."""
    setup = ConvSetup(second_kernel=(1, 1), second_pad=0, size=4, out=4)
    moments, geometry, (_, H, V), images, _ = random_conv_pair(
        setup, "conv", n=4, seed=12, activation=lambda z: z
    )
    candidates = compute_candidates(moments, geometry, damping=0.0, eig_cutoff=1e-12)
    residual = V - H @ candidates.delta_w.T
    before = (residual**2).sum() / V.shape[0]
    torch.testing.assert_close(torch.tensor(candidates.bottleneck, dtype=DTYPE), before)
    for k in (1, 2, 3):
        new_hidden = _new_first_output(candidates, setup, images, k)
        delta = F.conv2d(new_hidden, candidates.second_weight(k)).flatten(2).transpose(1, 2)
        after = ((residual - delta) ** 2).sum() / V.shape[0]
        expected = (candidates.singular_values[:k] ** 2).sum()
        torch.testing.assert_close(before - after, expected, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("kind", ["conv", "conv_linear"])
def test_bottleneck_correlation_is_e_x_psi_in_slot_layout(kind: str) -> None:
    """``N[:, c·J + j] = E[Σ_q x_(q,j) Ψ_q[c]]`` with ``Ψ = v - ΔW* h``, by explicit loops."""
    setup = ConvSetup(second_stride=2, size=6) if kind == "conv" else ConvSetup(out=3)
    moments, geometry, (X, H, V), _, _ = random_conv_pair(setup, kind, n=3, seed=13)
    candidates = compute_candidates(moments, geometry)
    residual = V - H @ candidates.delta_w.T
    n, positions, slots, d_x = X.shape
    expected = torch.zeros(d_x, geometry.d_v * slots, dtype=DTYPE)
    for i in range(n):
        for q in range(positions):
            for c in range(geometry.d_v):
                for j in range(slots):
                    expected[:, c * slots + j] += X[i, q, j] * residual[i, q, c] / n
    actual = bottleneck_correlation(moments.Mx, moments.P, candidates.delta_w)
    torch.testing.assert_close(actual, expected)
