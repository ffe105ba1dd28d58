"""replace_parameters: optimizer updates after growth, LR schedulers, wrappers and error cases."""

from __future__ import annotations

import copy

import pytest
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import nn

from lightning_grow.surgery.optim import ParameterGrowth, check_replaceable, replace_parameters

# name → (constructor, hyperparameters). Weight decay is on, so the parameters' values matter.
OPTIMIZERS = {
    "sgd_momentum": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
    "sgd_nesterov": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    "sgd_dampening": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.5, "dampening": 0.3}),
    "sgd_foreach": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "foreach": True}),
    "adam": (torch.optim.Adam, {"lr": 0.01, "weight_decay": 0.01}),
    "adam_foreach": (torch.optim.Adam, {"lr": 0.01, "foreach": True}),
    "adam_amsgrad": (torch.optim.Adam, {"lr": 0.01, "amsgrad": True}),
    "adamw": (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
    "adamw_amsgrad": (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}),
    "rmsprop": (torch.optim.RMSprop, {"lr": 0.01}),
    "rmsprop_centered_momentum": (
        torch.optim.RMSprop,
        {"lr": 0.01, "centered": True, "momentum": 0.9, "weight_decay": 0.01},
    ),
    "adagrad": (torch.optim.Adagrad, {"lr": 0.1, "initial_accumulator_value": 0.3}),
    "adagrad_decay": (torch.optim.Adagrad, {"lr": 0.1, "lr_decay": 0.05}),
    "rprop": (torch.optim.Rprop, {"lr": 0.02}),
}


def zero_state(name: str, hyper: dict, shape: torch.Size, step: torch.Tensor | None) -> dict:
    """The state a freshly started optimizer would hold for ``shape``, at the given ``step``.

    Written out per optimizer from torch's documented algorithms, independently of the code
    under test: moment estimates and momentum buffers start at 0, Adagrad's sum at
    ``initial_accumulator_value``, Rprop's step sizes at ``lr``.
    """
    zeros = torch.zeros(shape)
    if name.startswith("sgd"):
        return {"momentum_buffer": zeros}
    if name.startswith("adam"):
        state = {"step": step.clone(), "exp_avg": zeros, "exp_avg_sq": zeros.clone()}
        if hyper.get("amsgrad"):
            state["max_exp_avg_sq"] = zeros.clone()
        return state
    if name.startswith("rmsprop"):
        state = {"step": step.clone(), "square_avg": zeros}
        if hyper.get("momentum"):
            state["momentum_buffer"] = zeros.clone()
        if hyper.get("centered"):
            state["grad_avg"] = zeros.clone()
        return state
    if name.startswith("adagrad"):
        return {
            "step": step.clone(),
            "sum": torch.full(shape, hyper.get("initial_accumulator_value", 0.0)),
        }
    if name == "rprop":
        return {"step": step.clone(), "prev": zeros, "step_size": torch.full(shape, hyper["lr"])}
    raise KeyError(name)


def same_objects(actual: list, expected: list) -> bool:
    """Identity, element by element (``==`` on tensors would compare values)."""
    return len(actual) == len(expected) and all(a is e for a, e in zip(actual, expected))


def make_parameters() -> list[nn.Parameter]:
    """A weight growing rows, one growing columns, a bias, and one that does not grow."""
    return [nn.Parameter(torch.randn(shape)) for shape in [(5, 4), (3, 5), (5,), (3,)]]


# (parameter index, dim, entries added)
GROWTH_PLAN = [(0, 0, 2), (1, 1, 2), (2, 0, 2)]


def take_steps(parameters, optimizer, count: int) -> None:
    for _ in range(count):
        for parameter in parameters:
            parameter.grad = torch.randn_like(parameter)
        optimizer.step()


def grow(parameters, optimizer) -> tuple[list[nn.Parameter], list[ParameterGrowth]]:
    grown = list(parameters)
    growths = []
    for index, dim, added in GROWTH_PLAN:
        old = parameters[index]
        extra_shape = list(old.shape)
        extra_shape[dim] = added
        new = nn.Parameter(torch.cat([old.detach(), torch.randn(extra_shape)], dim=dim))
        growths.append(ParameterGrowth(old, new, dim, name=f"p{index}"))
        grown[index] = new
    replace_parameters(optimizer, growths)
    return grown, growths


def old_part(tensor: torch.Tensor, dim: int, old_size: int) -> torch.Tensor:
    return tensor.narrow(dim, 0, old_size)


def new_part(tensor: torch.Tensor, dim: int, old_size: int) -> torch.Tensor:
    return tensor.narrow(dim, old_size, tensor.shape[dim] - old_size)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_step_after_growth_matches_twin_and_fresh_state(name):
    cls, hyper = OPTIMIZERS[name]
    parameters = make_parameters()
    optimizer = cls(parameters, **hyper)
    take_steps(parameters, optimizer, 3)
    twin_parameters, twin_optimizer = copy.deepcopy((parameters, optimizer))

    grown, growths = grow(parameters, optimizer)
    assert same_objects(optimizer.param_groups[0]["params"], grown)
    assert all(growth.old not in optimizer.state for growth in growths)

    gradients = [torch.randn_like(parameter) for parameter in grown]
    references = []
    for (index, dim, _), growth in zip(GROWTH_PLAN, growths):
        old_size = growth.old.shape[dim]
        step = twin_optimizer.state[twin_parameters[index]].get("step")
        reference = nn.Parameter(new_part(growth.new.detach(), dim, old_size).clone())
        reference_optimizer = cls([reference], **hyper)
        reference_optimizer.state[reference] = zero_state(name, hyper, reference.shape, step)
        reference.grad = new_part(gradients[index], dim, old_size).clone()
        references.append((reference, reference_optimizer))

    for parameter, twin, gradient in zip(grown, twin_parameters, gradients):
        parameter.grad = gradient
        twin.grad = gradient.narrow(0, 0, twin.shape[0]).narrow(-1, 0, twin.shape[-1]).clone()
    optimizer.step()
    twin_optimizer.step()
    for _, reference_optimizer in references:
        reference_optimizer.step()

    for parameter, twin in zip(grown, twin_parameters):
        old_entries = parameter.detach().narrow(0, 0, twin.shape[0]).narrow(-1, 0, twin.shape[-1])
        assert torch.equal(old_entries, twin.detach()), name
    for (index, dim, _), growth, (reference, _) in zip(GROWTH_PLAN, growths, references):
        new_entries = new_part(grown[index].detach(), dim, growth.old.shape[dim])
        assert torch.equal(new_entries, reference.detach()), (name, index)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_state_is_padded_and_scalars_kept(name):
    cls, hyper = OPTIMIZERS[name]
    parameters = make_parameters()
    optimizer = cls(parameters, **hyper)
    take_steps(parameters, optimizer, 2)
    before = {
        id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in optimizer.state[p].items()}
        for p in parameters
    }
    grown, growths = grow(parameters, optimizer)
    for (_, dim, _), growth in zip(GROWTH_PLAN, growths):
        old_state, new_state = before[id(growth.old)], optimizer.state[growth.new]
        assert new_state.keys() == old_state.keys()
        expected_fresh = zero_state(
            name,
            hyper,
            new_part(growth.new, dim, growth.old.shape[dim]).shape,
            old_state.get("step"),
        )
        for key, old_value in old_state.items():
            new_value = new_state[key]
            if torch.is_tensor(old_value) and old_value.ndim > 0:
                assert new_value.shape == growth.new.shape
                assert torch.equal(old_part(new_value, dim, growth.old.shape[dim]), old_value)
                assert torch.equal(
                    new_part(new_value, dim, growth.old.shape[dim]), expected_fresh[key]
                )
            else:
                assert (
                    torch.equal(new_value, old_value)
                    if torch.is_tensor(old_value)
                    else new_value == old_value
                )
    untouched = grown[3]
    assert untouched is parameters[3]
    assert all(
        torch.equal(optimizer.state[untouched][k], v)
        for k, v in before[id(untouched)].items()
        if torch.is_tensor(v)
    )


def test_adagrad_padding_is_what_torch_gives_a_fresh_parameter():
    value = 0.7
    optimizer = torch.optim.Adagrad([nn.Parameter(torch.randn(3))], initial_accumulator_value=value)
    fresh = torch.optim.Adagrad([nn.Parameter(torch.randn(2))], initial_accumulator_value=value)
    torch_initial = next(iter(fresh.state.values()))["sum"]
    old = optimizer.param_groups[0]["params"][0]
    new = nn.Parameter(torch.cat([old.detach(), torch.zeros(2)]))
    replace_parameters(optimizer, [ParameterGrowth(old, new, 0)])
    assert torch.equal(optimizer.state[new]["sum"][3:], torch_initial)


def test_optimizer_without_state_yet_is_repointed():
    old = nn.Parameter(torch.randn(4, 2))
    optimizer = torch.optim.Adam([old], lr=0.1)
    new = nn.Parameter(torch.randn(6, 2))
    replace_parameters(optimizer, [ParameterGrowth(old, new, 0)])
    assert same_objects(optimizer.param_groups[0]["params"], [new]) and len(optimizer.state) == 0
    new.grad = torch.ones_like(new)
    optimizer.step()
    assert optimizer.state[new]["exp_avg"].shape == (6, 2)


def test_param_groups_keep_their_place_and_hyperparameters():
    first, second, third = (nn.Parameter(torch.randn(3, 2)) for _ in range(3))
    optimizer = torch.optim.SGD(
        [{"params": [first, second], "lr": 0.5}, {"params": [third], "weight_decay": 0.1}],
        lr=0.1,
        momentum=0.9,
    )
    take_steps([first, second, third], optimizer, 1)
    new_second = nn.Parameter(torch.randn(3, 4))
    new_third = nn.Parameter(torch.randn(5, 2))
    replace_parameters(
        optimizer, [ParameterGrowth(second, new_second, 1), ParameterGrowth(third, new_third, 0)]
    )
    assert same_objects(optimizer.param_groups[0]["params"], [first, new_second])
    assert same_objects(optimizer.param_groups[1]["params"], [new_third])
    assert (
        optimizer.param_groups[0]["lr"] == 0.5 and optimizer.param_groups[1]["weight_decay"] == 0.1
    )


def test_lightning_optimizer_wrapper_is_unwrapped_and_stays_in_sync():
    old = nn.Parameter(torch.randn(3, 2))
    optimizer = torch.optim.Adam([old], lr=0.1)
    take_steps([old], optimizer, 1)
    wrapped = LightningOptimizer(optimizer)
    new = nn.Parameter(torch.randn(4, 2))
    replace_parameters(wrapped, [ParameterGrowth(old, new, 0)])
    assert same_objects(optimizer.param_groups[0]["params"], [new])
    assert same_objects(wrapped.param_groups[0]["params"], [new])
    assert wrapped.state[new]["exp_avg"].shape == (4, 2)


def test_several_optimizers_each_get_their_own_parameters():
    generator_weight, critic_weight = (
        nn.Parameter(torch.randn(3, 2)),
        nn.Parameter(torch.randn(2, 3)),
    )
    generator_optimizer = torch.optim.Adam([generator_weight])
    critic_optimizer = torch.optim.SGD([critic_weight], lr=0.1, momentum=0.9)
    take_steps([generator_weight], generator_optimizer, 1)
    take_steps([critic_weight], critic_optimizer, 1)
    new_generator, new_critic = nn.Parameter(torch.randn(4, 2)), nn.Parameter(torch.randn(2, 4))
    replace_parameters(
        [generator_optimizer, critic_optimizer],
        [
            ParameterGrowth(generator_weight, new_generator, 0),
            ParameterGrowth(critic_weight, new_critic, 1),
        ],
    )
    assert same_objects(generator_optimizer.param_groups[0]["params"], [new_generator])
    assert same_objects(critic_optimizer.param_groups[0]["params"], [new_critic])
    assert critic_optimizer.state[new_critic]["momentum_buffer"].shape == (2, 4)


@pytest.mark.parametrize(
    ("scheduler_factory", "cls", "hyper"),
    [
        (
            lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
            torch.optim.SGD,
            {"lr": 0.1, "momentum": 0.9},
        ),
        (
            lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6),
            torch.optim.Adam,
            {"lr": 0.01},
        ),
        (
            lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10),
            torch.optim.SGD,
            {"lr": 0.1, "momentum": 0.9},
        ),
        (
            lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=10),
            torch.optim.AdamW,
            {"lr": 0.01},
        ),
    ],
)
def test_lr_schedulers_keep_driving_the_grown_optimizer(scheduler_factory, cls, hyper):
    parameters = make_parameters()
    optimizer = cls(parameters, **hyper)
    scheduler = scheduler_factory(optimizer)
    for _ in range(3):
        take_steps(parameters, optimizer, 1)
        scheduler.step()
    twin_parameters, twin_optimizer, twin_scheduler = copy.deepcopy(
        (parameters, optimizer, scheduler)
    )
    grown, _ = grow(parameters, optimizer)
    assert scheduler.optimizer is optimizer
    for _ in range(5):
        for parameter, twin in zip(grown, twin_parameters):
            parameter.grad = torch.randn_like(parameter)
            twin.grad = (
                parameter.grad.narrow(0, 0, twin.shape[0]).narrow(-1, 0, twin.shape[-1]).clone()
            )
        optimizer.step()
        twin_optimizer.step()
        scheduler.step()
        twin_scheduler.step()
        for group, twin_group in zip(optimizer.param_groups, twin_optimizer.param_groups):
            assert {k: v for k, v in group.items() if k != "params"} == {
                k: v for k, v in twin_group.items() if k != "params"
            }
        for parameter, twin in zip(grown, twin_parameters):
            old_entries = (
                parameter.detach().narrow(0, 0, twin.shape[0]).narrow(-1, 0, twin.shape[-1])
            )
            assert torch.equal(old_entries, twin.detach())
    assert scheduler.get_last_lr() == twin_scheduler.get_last_lr()
    assert scheduler.state_dict() == twin_scheduler.state_dict()


def test_grad_scaler_and_clipping_keep_working():
    parameters = make_parameters()
    optimizer = torch.optim.SGD(parameters, lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    take_steps(parameters, optimizer, 1)
    twin_parameters, twin_optimizer = copy.deepcopy((parameters, optimizer))
    twin_scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    grown, _ = grow(parameters, optimizer)
    for parameter in [*grown, *twin_parameters]:
        parameter.grad = None
    inputs = torch.randn(4)
    for params, opt, grad_scaler in (
        (grown, optimizer, scaler),
        (twin_parameters, twin_optimizer, twin_scaler),
    ):
        # The loss reads only the old entries, so the new entries' gradients are zero.
        loss = (
            (params[0][:5, :4] @ inputs).sum()
            + (params[1][:, :5] @ params[2][:5]).sum()
            + params[3].sum()
        )
        grad_scaler.scale(loss).backward()
        grad_scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(
            [p for g in opt.param_groups for p in g["params"]], max_norm=0.5
        )
        grad_scaler.step(opt)
        grad_scaler.update()
    assert scaler.get_scale() == twin_scaler.get_scale()
    for parameter, twin in zip(grown, twin_parameters):
        old_entries = parameter.detach().narrow(0, 0, twin.shape[0]).narrow(-1, 0, twin.shape[-1])
        # The clipping norm reduces over more (zero) entries: equal up to summation order.
        torch.testing.assert_close(old_entries, twin.detach(), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Errors: each leaves the optimizer exactly as it was.


def stepped_adam():
    parameters = make_parameters()
    optimizer = torch.optim.Adam(parameters, lr=0.1)
    take_steps(parameters, optimizer, 2)
    return parameters, optimizer


def assert_optimizer_unchanged(optimizer, parameters, state_before):
    assert same_objects(optimizer.param_groups[0]["params"], parameters)
    current = optimizer.state_dict()
    for index, entry in state_before["state"].items():
        assert all(torch.equal(current["state"][index][k], v) for k, v in entry.items())
    assert set(map(id, optimizer.state)) == set(map(id, parameters))


def growth_of(parameter: nn.Parameter, added: int = 2, dim: int = 0) -> ParameterGrowth:
    shape = list(parameter.shape)
    shape[dim] += added
    return ParameterGrowth(parameter, nn.Parameter(torch.randn(shape)), dim)


def test_missing_trainable_parameter_is_an_error_but_a_frozen_one_is_skipped():
    parameters, optimizer = stepped_adam()
    state_before = copy.deepcopy(optimizer.state_dict())
    stranger = nn.Parameter(torch.randn(2, 2))
    with pytest.raises(ValueError, match="requires grad but is in none"):
        replace_parameters(optimizer, [growth_of(parameters[0]), growth_of(stranger)])
    assert_optimizer_unchanged(optimizer, parameters, state_before)
    stranger.requires_grad_(False)
    replace_parameters(optimizer, [growth_of(stranger)])
    assert_optimizer_unchanged(optimizer, parameters, state_before)


def test_parameter_in_two_groups_is_an_error():
    parameters, optimizer = stepped_adam()
    optimizer.add_param_group({"params": [nn.Parameter(torch.randn(2))]})
    optimizer.param_groups[1]["params"].append(parameters[0])
    state_before = copy.deepcopy(optimizer.state_dict())
    with pytest.raises(ValueError, match=r"more than once.*group 0 index 0, Adam group 1 index 1"):
        check_replaceable(optimizer, [growth_of(parameters[0])])
    with pytest.raises(ValueError, match="more than once"):
        replace_parameters(optimizer, [growth_of(parameters[1]), growth_of(parameters[0])])
    assert_optimizer_unchanged(optimizer, parameters, state_before)


def test_parameter_in_two_optimizers_is_an_error():
    parameters, optimizer = stepped_adam()
    other = torch.optim.SGD([parameters[0]], lr=0.1)
    with pytest.raises(ValueError, match="more than once"):
        replace_parameters([optimizer, other], [growth_of(parameters[0])])
    assert other.param_groups[0]["params"][0] is parameters[0]


def test_unexpected_state_shape_is_an_error():
    parameters, optimizer = stepped_adam()
    optimizer.state[parameters[0]]["flat_buffer"] = torch.zeros(parameters[0].numel() + 3)
    state_before = copy.deepcopy(optimizer.state_dict())
    with pytest.raises(ValueError, match=r"state 'flat_buffer' .* shape \(23,\)"):
        replace_parameters(optimizer, [growth_of(parameters[1]), growth_of(parameters[0])])
    assert_optimizer_unchanged(optimizer, parameters, state_before)


def test_factored_adafactor_state_is_refused():
    weight = nn.Parameter(torch.randn(4, 3))
    optimizer = torch.optim.Adafactor([weight])
    take_steps([weight], optimizer, 1)
    with pytest.raises(ValueError, match=r"row_var|col_var"):
        check_replaceable(optimizer, [growth_of(weight)])


def test_lbfgs_is_refused():
    weight = nn.Parameter(torch.randn(4, 3))
    with pytest.raises(TypeError, match="LBFGS"):
        check_replaceable(torch.optim.LBFGS([weight]), [growth_of(weight)])


def test_zero_redundancy_optimizer_is_refused(tmp_path):
    import torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        weight = nn.Parameter(torch.randn(4, 3))
        optimizer = ZeroRedundancyOptimizer([weight], optimizer_class=torch.optim.SGD, lr=0.1)
        with pytest.raises(TypeError, match="ZeroRedundancyOptimizer"):
            replace_parameters(optimizer, [growth_of(weight)])
    finally:
        dist.destroy_process_group()


def test_growth_records_are_validated():
    weight = nn.Parameter(torch.randn(4, 3))
    with pytest.raises(ValueError, match="must equal old shape"):
        ParameterGrowth(weight, nn.Parameter(torch.randn(5, 4)), 0)
    with pytest.raises(ValueError, match="must equal old shape"):
        ParameterGrowth(weight, nn.Parameter(torch.randn(3, 3)), 0)
    with pytest.raises(ValueError, match="differ in rank"):
        ParameterGrowth(weight, nn.Parameter(torch.randn(4, 3, 1)), 0)
    with pytest.raises(ValueError, match="out of range"):
        ParameterGrowth(weight, nn.Parameter(torch.randn(4, 3)), 2)
    assert ParameterGrowth(weight, nn.Parameter(torch.randn(4, 5)), -1).dim == 1
    optimizer = torch.optim.SGD([weight], lr=0.1)
    growth = growth_of(weight)
    with pytest.raises(ValueError, match="grown twice"):
        replace_parameters(optimizer, [growth, growth])
