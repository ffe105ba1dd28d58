"""grow_pair: function preservation, wiring of the new neurons, atomicity and error messages."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

import lightning_grow.surgery.optim as optim_module
import lightning_grow.surgery.widen as surgery_module
from lightning_grow.surgery.widen import NewNeurons, count_parameters, grow_pair
from lightning_grow.topology.pairs import GrowablePair

PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def build_pair(
    kind: str,
    *,
    in_features: int = 3,
    hidden: int = 4,
    out_features: int = 2,
    first_bias: bool = True,
    second_bias: bool = True,
    batch_norm: bool = False,
    kernel1: int = 3,
    kernel2: int = 3,
    stride1: int = 1,
    stride2: int = 1,
    padding1: int = 1,
    padding2: int = 1,
    image: int = 5,
    dtype: torch.dtype = torch.float32,
) -> tuple[nn.Sequential, GrowablePair, tuple[int, ...]]:
    """``first -> [BN] -> ReLU -> [Flatten] -> second`` as a Sequential, its pair, input shape."""
    if kind == "linear":
        first = nn.Linear(in_features, hidden, bias=first_bias)
        norm = nn.BatchNorm1d(hidden) if batch_norm else None
        input_shape: tuple[int, ...] = (in_features,)
    else:
        first = nn.Conv2d(in_features, hidden, kernel1, stride1, padding1, bias=first_bias)
        norm = nn.BatchNorm2d(hidden) if batch_norm else None
        input_shape = (in_features, image, image)
    if kind == "linear":
        second: nn.Module = nn.Linear(hidden, out_features, bias=second_bias)
    elif kind == "conv":
        second = nn.Conv2d(hidden, out_features, kernel2, stride2, padding2, bias=second_bias)
    else:
        side = (image + 2 * padding1 - kernel1) // stride1 + 1
        second = nn.Linear(hidden * side * side, out_features, bias=second_bias)
    layers = [first, *([norm] if norm is not None else []), nn.ReLU()]
    layers += [nn.Flatten()] if kind == "conv_linear" else []
    layers.append(second)
    model = nn.Sequential(*layers).to(dtype)
    if norm is not None:
        # Non-trivial running statistics, so that BatchNorm really acts in eval mode.
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
        nn.init.uniform_(norm.weight, 0.5, 1.5)
        nn.init.uniform_(norm.bias, -0.5, 0.5)
    pair = GrowablePair(
        first_name="0",
        second_name=str(len(layers) - 1),
        first=first,
        second=second,
        batch_norm=norm,
        batch_norm_name="1" if norm is not None else None,
        flatten=kind == "conv_linear",
    )
    return model, pair, input_shape


def random_neurons(pair: GrowablePair, num_new: int, zero_omega: bool) -> NewNeurons:
    first, second = pair.first, pair.second
    first_weight = torch.randn(num_new, *first.weight.shape[1:])
    first_bias = torch.randn(num_new) if first.bias is not None else None
    if isinstance(second, nn.Conv2d):
        omega_shape: tuple[int, ...] = (second.out_channels, num_new, *second.kernel_size)
    else:
        slots = second.in_features // pair.width
        omega_shape = (second.out_features, num_new * slots)
    second_weight = torch.zeros(omega_shape) if zero_omega else torch.randn(omega_shape)
    bn = {}
    if pair.batch_norm is not None:
        bn = {
            "bn_weight": torch.rand(num_new) + 0.5,
            "bn_bias": torch.randn(num_new),
            "bn_running_mean": torch.randn(num_new),
            "bn_running_var": torch.rand(num_new) + 0.5,
        }
    return NewNeurons(first_weight, first_bias, second_weight, **bn)


architectures = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(["linear", "conv", "conv_linear"]),
        "in_features": st.integers(1, 4),
        "hidden": st.integers(1, 5),
        "out_features": st.integers(1, 4),
        "first_bias": st.booleans(),
        "second_bias": st.booleans(),
        "batch_norm": st.booleans(),
        "kernel1": st.integers(1, 3),
        "kernel2": st.integers(1, 3),
        "stride1": st.integers(1, 2),
        "stride2": st.integers(1, 2),
        "padding1": st.integers(0, 1),
        "padding2": st.integers(0, 1),
        "image": st.integers(3, 6),
    }
)


def valid(arch: dict) -> bool:
    """Whether ``second``'s kernel fits the hidden map (hypothesis draws impossible convs too)."""
    side = (arch["image"] + 2 * arch["padding1"] - arch["kernel1"]) // arch["stride1"] + 1
    return arch["kind"] != "conv" or side + 2 * arch["padding2"] >= arch["kernel2"]


@PROPERTY_SETTINGS
@given(
    arch=architectures,
    num_new=st.integers(1, 4),
    batch=st.integers(1, 4),
    seed=st.integers(0, 999),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_zero_omega_preserves_the_function(arch, num_new, batch, seed, dtype):
    """With ω = 0 the new units cannot reach the output, and the output stays the same.

    The end-to-end comparison cannot be bitwise: PyTorch's CPU GEMM / oneDNN kernels change
    their blocking (hence summation order) when a layer gets more inputs or outputs, so adding
    exact zero terms moves results by about one ulp (measured: ~1 case in 5, at most 1.2e-7 in
    float32 and 2.2e-16 in float64 on values of order 1). What IS bitwise is that ``second``
    gives the same output whatever the new units' activations are.
    """
    assume(valid(arch))
    torch.manual_seed(seed)
    model, pair, input_shape = build_pair(**arch, dtype=dtype)
    model.eval()
    inputs = torch.randn(batch, *input_shape, dtype=dtype)
    before = model(inputs)
    old_width = pair.width
    grow_pair(pair, random_neurons(pair, num_new, zero_omega=True))
    after = model(inputs)

    hidden = model[:-1](inputs)
    silenced = hidden.clone()
    if arch["kind"] == "conv_linear":
        silenced.view(batch, pair.width, -1)[:, old_width:] = 0.0
    else:
        silenced[:, old_width:] = 0.0
    assert torch.equal(model[-1](hidden), model[-1](silenced))

    scale = before.abs().max().item() + 1.0
    tolerance = 16 * torch.finfo(dtype).eps * scale
    torch.testing.assert_close(after, before, rtol=0.0, atol=tolerance)


def new_neuron_contribution(pair, neurons, inputs, bn_eps):
    """What the new neurons add to the output, computed from the given tensors alone."""
    z_new = (
        F.conv2d(
            inputs, neurons.first_weight, neurons.first_bias, pair.first.stride, pair.first.padding
        )
        if isinstance(pair.first, nn.Conv2d)
        else inputs @ neurons.first_weight.T
        + (neurons.first_bias if neurons.first_bias is not None else 0)
    )
    if pair.batch_norm is not None:
        view = (1, -1) + (1,) * (z_new.ndim - 2)
        z_new = (z_new - neurons.bn_running_mean.view(view)) / torch.sqrt(
            neurons.bn_running_var.view(view) + bn_eps
        ) * neurons.bn_weight.view(view) + neurons.bn_bias.view(view)
    h_new = torch.relu(z_new)
    if isinstance(pair.second, nn.Conv2d):
        return F.conv2d(h_new, neurons.second_weight, None, pair.second.stride, pair.second.padding)
    # Flatten order of the new channels alone: channel-major, then row-major positions.
    return h_new.flatten(1) @ neurons.second_weight.T


@PROPERTY_SETTINGS
@given(arch=architectures, num_new=st.integers(1, 3), seed=st.integers(0, 999))
def test_new_neurons_add_exactly_their_own_contribution(arch, num_new, seed):
    assume(valid(arch))
    torch.manual_seed(seed)
    model, pair, input_shape = build_pair(**arch, dtype=torch.float64)
    model.eval()
    inputs = torch.randn(3, *input_shape, dtype=torch.float64)
    before = model(inputs)
    neurons = random_neurons(pair, num_new, zero_omega=False)
    neurons_64 = NewNeurons(
        **{
            name: value.double() if isinstance(value, torch.Tensor) else value
            for name, value in vars(neurons).items()
        }
    )
    grow_pair(pair, neurons)
    after = model(inputs)
    eps = pair.batch_norm.eps if pair.batch_norm is not None else 0.0
    expected = before + new_neuron_contribution(pair, neurons_64, inputs, eps)
    torch.testing.assert_close(after, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["linear", "conv", "conv_linear"])
def test_parameters_are_new_objects_with_old_entries_kept(kind):
    model, pair, _ = build_pair(kind, batch_norm=True)
    pair.first.bias.requires_grad_(False)
    before = {name: p for name, p in model.named_parameters()}
    buffers_before = {name: b.clone() for name, b in model.named_buffers()}
    neurons = random_neurons(pair, 2, zero_omega=False)
    grow_pair(pair, neurons)
    after = dict(model.named_parameters())
    grown = {
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "3.weight" if kind != "conv_linear" else "4.weight",
    }
    for name, parameter in after.items():
        if name in grown:
            assert parameter is not before[name]
            assert isinstance(parameter, nn.Parameter)
            assert parameter.requires_grad == before[name].requires_grad
        else:
            assert parameter is before[name]
    assert not pair.first.bias.requires_grad
    old_hidden = before["0.weight"].shape[0]
    assert torch.equal(after["0.weight"][:old_hidden], before["0.weight"])
    assert torch.equal(after["0.weight"][old_hidden:], neurons.first_weight)
    assert torch.equal(after["0.bias"][old_hidden:], neurons.first_bias)
    second_name = "3.weight" if kind != "conv_linear" else "4.weight"
    old_columns = before[second_name].shape[1]
    assert torch.equal(after[second_name][:, :old_columns], before[second_name])
    assert torch.equal(after[second_name][:, old_columns:], neurons.second_weight)
    bn = pair.batch_norm
    assert torch.equal(bn.running_mean[old_hidden:], neurons.bn_running_mean)
    assert torch.equal(bn.running_var[:old_hidden], buffers_before["1.running_var"])
    assert torch.equal(bn.num_batches_tracked, buffers_before["1.num_batches_tracked"])


@pytest.mark.parametrize("kind", ["linear", "conv", "conv_linear"])
def test_attributes_follow_the_new_width(kind):
    model, pair, input_shape = build_pair(kind, batch_norm=True, image=4)
    grow_pair(pair, random_neurons(pair, 3, zero_omega=True))
    first, second, bn = pair.first, pair.second, pair.batch_norm
    assert bn.num_features == 7 and bn.weight.shape == (7,) and bn.running_var.shape == (7,)
    if kind == "linear":
        assert first.out_features == 7 and second.in_features == 7
    elif kind == "conv":
        assert first.out_channels == 7 and second.in_channels == 7
    else:
        assert first.out_channels == 7 and second.in_features == 7 * 16
    # The grown layers still run forward and backward (shapes consistent with attributes).
    model.train()
    model(torch.randn(2, *input_shape)).sum().backward()


def test_batch_norm_defaults_are_a_fresh_batch_norm():
    _, pair, _ = build_pair("linear", batch_norm=True)
    neurons = random_neurons(pair, 2, zero_omega=True)
    neurons.bn_weight = neurons.bn_bias = neurons.bn_running_mean = neurons.bn_running_var = None
    grow_pair(pair, neurons)
    fresh = nn.BatchNorm1d(2)
    bn = pair.batch_norm
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(getattr(bn, name)[4:].detach(), getattr(fresh, name).detach())


def test_dtype_and_requires_grad_kept_given_tensors_cast():
    _, pair, _ = build_pair("conv", dtype=torch.float64, batch_norm=True)
    grow_pair(pair, random_neurons(pair, 1, zero_omega=False))  # float32 given
    for module in (pair.first, pair.second, pair.batch_norm):
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.is_floating_point():
                assert tensor.dtype == torch.float64
    assert all(p.requires_grad for p in pair.first.parameters())


def test_pending_gradient_is_padded_with_zeros():
    model, pair, _ = build_pair("linear")
    model(torch.randn(3, 3)).sum().backward()
    old_grad = pair.first.weight.grad.clone()
    grow_pair(pair, random_neurons(pair, 2, zero_omega=False))
    assert torch.equal(pair.first.weight.grad[:4], old_grad)
    assert torch.equal(pair.first.weight.grad[4:], torch.zeros(2, 3))


def test_count_parameters_counts_every_scalar_once():
    shared = nn.Linear(3, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared.__class__(4, 2), nn.BatchNorm1d(2))
    model.append(model[0])  # shared module
    expected = 3 * 4 + 4 + 4 * 2 + 2 + 2 + 2
    assert count_parameters(model) == expected
    _, pair, _ = build_pair("linear", batch_norm=True)
    parent = nn.ModuleList([pair.first, pair.batch_norm, pair.second])
    grow_pair(pair, random_neurons(pair, 2, zero_omega=True))
    assert count_parameters(parent) == (3 * 6 + 6) + (6 + 6) + (6 * 2 + 2)


# ---------------------------------------------------------------------------------------------
# Atomicity: a failure anywhere leaves the model AND the optimizer exactly as they were.


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer):
    return (
        {name: t.clone() for name, t in model.state_dict().items()},
        {name: p for name, p in model.named_parameters()},
        copy.deepcopy(optimizer.state_dict()),
        [list(group["params"]) for group in optimizer.param_groups],
        _sizes(model),
    )


def _sizes(model: nn.Module) -> dict[tuple[str, str], int]:
    attributes = ("in_features", "out_features", "in_channels", "out_channels", "num_features")
    return {
        (name, attribute): getattr(module, attribute)
        for name, module in model.named_modules()
        for attribute in attributes
        if hasattr(module, attribute)
    }


def assert_unchanged(before, model, optimizer):
    state, parameters, optimizer_state, groups, sizes = before
    now = model.state_dict()
    assert now.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(now[name], tensor), name
    assert all(p is parameters[name] for name, p in model.named_parameters())
    assert [list(group["params"]) for group in optimizer.param_groups] == groups
    assert all(
        all(a is b for a, b in zip(group["params"], old))
        for group, old in zip(optimizer.param_groups, groups)
    )
    assert _sizes(model) == sizes
    current = optimizer.state_dict()
    assert current["param_groups"] == optimizer_state["param_groups"]
    assert current["state"].keys() == optimizer_state["state"].keys()
    for index, entry in optimizer_state["state"].items():
        for key, value in entry.items():
            assert torch.equal(current["state"][index][key], value)
    assert set(map(id, optimizer.state)) == {id(p) for p in parameters.values()}


def trained_setup(kind: str = "conv"):
    model, pair, input_shape = build_pair(kind, batch_norm=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, amsgrad=True)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(4, *input_shape)).square().mean().backward()
        optimizer.step()
    return model, pair, optimizer


def test_bad_second_shape_changes_nothing():
    model, pair, optimizer = trained_setup()
    before = snapshot(model, optimizer)
    neurons = random_neurons(pair, 2, zero_omega=True)
    neurons.second_weight = torch.zeros(2, 3, 3, 3)  # 3 new input channels, 2 new filters
    with pytest.raises(ValueError, match=r"second_weight for '3' \(Conv2d\)"):
        grow_pair(pair, neurons, optimizer)
    assert_unchanged(before, model, optimizer)


def test_failure_while_preparing_the_optimizer_state_changes_nothing(monkeypatch):
    model, pair, optimizer = trained_setup()
    before = snapshot(model, optimizer)
    calls = []
    original = optim_module._padded_state

    def fail_on_third(location, growth):
        calls.append(growth.name)
        if len(calls) == 3:
            raise RuntimeError("injected failure")
        return original(location, growth)

    monkeypatch.setattr(optim_module, "_padded_state", fail_on_third)
    with pytest.raises(RuntimeError, match="injected failure"):
        grow_pair(pair, random_neurons(pair, 2, zero_omega=True), optimizer)
    assert len(calls) == 3
    assert_unchanged(before, model, optimizer)


def test_failure_while_planning_the_batch_norm_changes_nothing(monkeypatch):
    model, pair, optimizer = trained_setup("linear")
    before = snapshot(model, optimizer)

    def broken(*args, **kwargs):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(surgery_module, "plan_batch_norm_growth", broken)
    with pytest.raises(RuntimeError, match="injected failure"):
        grow_pair(pair, random_neurons(pair, 2, zero_omega=True), optimizer)
    assert_unchanged(before, model, optimizer)


def test_optimizer_error_changes_nothing():
    model, pair, optimizer = trained_setup("linear")
    optimizer.param_groups[0]["params"].append(pair.second.weight)  # now listed twice
    before = snapshot(model, optimizer)
    with pytest.raises(ValueError, match="more than once"):
        grow_pair(pair, random_neurons(pair, 2, zero_omega=True), optimizer)
    assert_unchanged(before, model, optimizer)


# ---------------------------------------------------------------------------------------------
# Error messages


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda n: setattr(n, "first_weight", torch.randn(2, 5)), r"'0' \(Linear\).*\(2, 3\)"),
        (lambda n: setattr(n, "first_bias", None), r"'0' \(Linear\) has a bias"),
        (lambda n: setattr(n, "first_bias", torch.randn(3)), r"new output bias for '0'.*\(2,\)"),
        (lambda n: setattr(n, "second_weight", torch.randn(2, 3)), r"second_weight for '3'"),
        (lambda n: setattr(n, "bn_weight", torch.randn(5)), r"bn_weight for '1'"),
        (lambda n: setattr(n, "first_weight", torch.randn(0, 3)), r"at least one"),
    ],
)
def test_shape_errors_name_the_module(change, message):
    model, pair, _ = build_pair("linear", batch_norm=True)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    neurons = random_neurons(pair, 2, zero_omega=True)
    change(neurons)
    with pytest.raises(ValueError, match=message):
        grow_pair(pair, neurons)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_bias_given_for_a_layer_without_bias():
    _, pair, _ = build_pair("linear", first_bias=False)
    neurons = random_neurons(pair, 2, zero_omega=True)
    neurons.first_bias = torch.zeros(2)
    with pytest.raises(ValueError, match=r"'0' \(Linear\) has no bias"):
        grow_pair(pair, neurons)


def test_batch_norm_entries_without_batch_norm():
    _, pair, _ = build_pair("linear", batch_norm=False)
    neurons = random_neurons(pair, 2, zero_omega=True)
    neurons.bn_weight = torch.ones(2)
    with pytest.raises(ValueError, match="no BatchNorm"):
        grow_pair(pair, neurons)


def test_non_affine_batch_norm_rejects_affine_entries_but_grows():
    _, pair, _ = build_pair("linear", batch_norm=True)
    pair.batch_norm = nn.BatchNorm1d(4, affine=False)
    neurons = random_neurons(pair, 2, zero_omega=True)
    with pytest.raises(ValueError, match="has no weight"):
        grow_pair(pair, neurons)
    neurons.bn_weight = neurons.bn_bias = None
    grow_pair(pair, neurons)
    assert pair.batch_norm.num_features == 6 and pair.batch_norm.running_mean.shape == (6,)


def test_conv_linear_needs_one_column_per_position():
    _, pair, _ = build_pair("conv_linear", image=4)  # J = 16
    neurons = random_neurons(pair, 2, zero_omega=True)
    neurons.second_weight = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r"second_weight for '3' \(Linear\).*\(2, 32\)"):
        grow_pair(pair, neurons)


def test_inconsistent_or_unsupported_pairs():
    _, pair, _ = build_pair("linear")
    pair.second = nn.Linear(5, 2)
    with pytest.raises(ValueError, match="consumes 5 inputs"):
        grow_pair(pair, random_neurons(build_pair("linear")[1], 1, zero_omega=True))
    _, pair, _ = build_pair("conv")
    pair.first = nn.Conv2d(4, 4, 3, groups=2)
    with pytest.raises(ValueError, match="groups=2"):
        grow_pair(pair, random_neurons(build_pair("conv")[1], 1, zero_omega=True))
    _, pair, _ = build_pair("linear")
    pair.second = nn.Conv2d(4, 2, 3)
    with pytest.raises(TypeError, match="Linear cannot feed a Conv2d"):
        grow_pair(pair, random_neurons(build_pair("linear")[1], 1, zero_omega=True))


@pytest.mark.parametrize("kind", ["linear", "conv", "conv_linear"])
def test_optimizer_follows_every_grown_parameter(kind):
    model, pair, optimizer = trained_setup(kind)
    grow_pair(pair, random_neurons(pair, 2, zero_omega=True), [optimizer])
    in_optimizer = optimizer.param_groups[0]["params"]
    assert len(in_optimizer) == len(list(model.parameters()))
    assert all(a is b for a, b in zip(in_optimizer, model.parameters()))
    for parameter in model.parameters():
        state = optimizer.state[parameter]
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            assert state[key].shape == parameter.shape
        assert int(state["step"]) == 2
