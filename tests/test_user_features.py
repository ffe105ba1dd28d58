"""Features of today's training code around growth: torch.compile, SWA, manual optimization,
parametrized layers. Each either works or is refused up front with the combination named and
the fix, instead of an error mid-fit (or a half-grown model)."""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import StochasticWeightAveraging
from torch import nn
from torch.nn.utils import parametrizations, parametrize
from torch.utils.data import DataLoader, TensorDataset

from lightning_grow import GrowthCallback
from lightning_grow.topology.pairs import (
    GrowthConfigurationError,
    find_growable_pairs,
    pairs_from_names,
)
from tests.helpers import permissive_callback


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(320, 8, generator=g)
    y = torch.sin(3 * x[:, :3]) + 0.5 * x[:, 3:6] ** 2
    return DataLoader(TensorDataset(x, y), batch_size=32)


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, 2), nn.Tanh(), nn.Linear(2, 3))


class Regression(pl.LightningModule):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _fit(model: pl.LightningModule, callbacks: list, steps: int = 30) -> None:
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(model, _loader())


def test_a_compiled_network_is_unwrapped_and_grows() -> None:
    pl.seed_everything(0, verbose=False)
    # The eager backend keeps the test fast; what growth meets (dynamo's guards, the graph
    # breaks of the hooks, OptimizedModule) is the same as with inductor.
    model = Regression(torch.compile(_mlp(), backend="eager"))
    callback = permissive_callback()
    _fit(model, [callback])
    name = "net._orig_mod.0 -> net._orig_mod.2"
    assert set(callback.initial_widths) == {name}
    assert any(event.accepted for event in callback.history), callback.history
    inner = model.net._orig_mod
    assert callback.widths[name] == inner[0].out_features == inner[2].in_features > 2
    x, _ = next(iter(_loader()))
    torch.testing.assert_close(model.net(x), inner(x))  # the compiled code follows the growth


def test_stochastic_weight_averaging_is_refused_at_setup_naming_the_combination() -> None:
    with pytest.raises(ValueError, match=r"StochasticWeightAveraging.*Grow first"):
        _fit(Regression(_mlp()), [GrowthCallback(verbose=False), StochasticWeightAveraging(1e-2)])


class TwoOptimizers(Regression):
    """Manual optimization, as GANs and several-optimizer modules are written."""

    def __init__(self) -> None:
        super().__init__(_mlp())
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        first, second = self.optimizers()
        loss = super().training_step(batch, batch_idx)
        first.zero_grad()
        second.zero_grad()
        self.manual_backward(loss)
        first.step()
        second.step()
        return loss

    def configure_optimizers(self):
        return (
            torch.optim.Adam(self.net[0].parameters(), lr=1e-2),
            torch.optim.SGD(self.net[2].parameters(), lr=1e-2),
        )


def test_manual_optimization_asks_for_a_loss_fn_and_grows_with_one() -> None:
    with pytest.raises(ValueError, match=r"manual optimization.*loss_fn="):
        _fit(TwoOptimizers(), [GrowthCallback(verbose=False)])

    pl.seed_everything(0, verbose=False)
    model = TwoOptimizers()
    callback = permissive_callback(
        loss_fn=lambda module, batch: nn.functional.mse_loss(module.net(batch[0]), batch[1])
    )
    _fit(model, [callback])
    assert any(event.accepted for event in callback.history), callback.history
    # Each optimizer was re-pointed to the grown parameters of its own layer.
    first, second = model.optimizers()
    assert first.optimizer.param_groups[0]["params"][0] is model.net[0].weight
    assert second.optimizer.param_groups[0]["params"][0] is model.net[2].weight
    assert model.net[0].out_features == model.net[2].in_features > 2


@pytest.mark.parametrize(
    "parametrized",
    [
        lambda layer: parametrizations.weight_norm(layer),
        lambda layer: parametrizations.spectral_norm(layer),
        lambda layer: torch.nn.utils.weight_norm(layer),  # the deprecated hook-based one
        lambda layer: parametrize.register_parametrization(layer, "weight", nn.Identity()),
    ],
    ids=["weight_norm", "spectral_norm", "old_weight_norm", "parametrize"],
)
def test_parametrized_layers_are_refused_by_discovery_with_the_reason(parametrized) -> None:
    net = _mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is deprecated
        parametrized(net[2])
    with pytest.raises(GrowthConfigurationError, match="parametrization") as error:
        find_growable_pairs(net)
    assert "2" in str(error.value)
    with pytest.raises(GrowthConfigurationError, match="remove"):
        pairs_from_names(net, ["0 -> 2"])
    assert net[0].out_features == 2  # nothing was half-grown


@pytest.mark.parametrize(
    ("norm", "what"),
    [
        (nn.LayerNorm(4), "mean and variance"),
        (nn.RMSNorm(4), "root mean square"),
        (nn.GroupNorm(2, 4), "group means"),
        (nn.GroupNorm(4, 4), "not implemented"),
    ],
)
def test_norms_across_the_hidden_units_are_refused_with_the_reason(norm, what) -> None:
    net = nn.Sequential(nn.Linear(3, 4), norm, nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(GrowthConfigurationError, match=what) as error:
        find_growable_pairs(net)
    if what != "not implemented":
        assert "pre-norm" in str(error.value)
    with pytest.raises(GrowthConfigurationError, match=what):
        pairs_from_names(net, ["0 -> 3"])


def test_adding_units_under_a_layer_norm_changes_the_existing_outputs_unless_they_copy_it() -> None:
    # The argument of docs/math.md §1, checked numerically: one new unit changes the old units'
    # normalised values; a copy of the whole layer (K = H) leaves them exactly as they were.
    torch.manual_seed(0)
    first = nn.Linear(3, 4).double()
    x = torch.randn(16, 3, dtype=torch.float64)
    z = first(x).detach()
    norm = lambda t: nn.functional.layer_norm(t, t.shape[-1:])  # noqa: E731
    old = norm(z)
    one_more = norm(torch.cat([z, x @ torch.randn(3, 1, dtype=torch.float64)], -1))[:, :4]
    assert (one_more - old).abs().max() > 1e-2
    torch.testing.assert_close(norm(torch.cat([z, z], -1))[:, :4], old)
