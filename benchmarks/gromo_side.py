"""GroMo (PyPI ``gromo==0.1.0``), our main competitor, driven through its public API.

Growth loop, as the GroMo tutorial (``GrowingContainer`` tutorial) does it:
``init_computation`` → forward/backward with a summed loss and ``update_computation`` on a batch
of statistics samples → ``compute_optimal_updates`` (TINY settings) → ``reset_computation`` →
``select_best_update`` (the layer with the best first-order improvement) →
``normalize_optimal_updates`` (optional) → line search on ``set_scaling_factor`` with
``extended_forward`` → ``apply_change``. GroMo has no optimizer integration, so a fresh Adam is
built after each growth (as GroMo's own examples do): Adam's moments are reset.

Nothing of GroMo is copied here: it is imported, and an ``ImportError`` is reported as such.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.common import RunResult, count_parameters, evaluate_classifier, seed_everything
from benchmarks.digits import DigitsProtocol, DigitsSplit
from benchmarks.lightning_runs import make_loader

__all__ = ["GromoSchedule", "gromo_available", "gromo_pair_lambdas", "run_gromo_digits"]

# GroMo's docstring of ``compute_optimal_updates``: "Hyper-parameters to reproduce papers - TINY".
TINY_SETTINGS: dict[str, Any] = {
    "compute_delta": False,
    "use_covariance": True,
    "alpha_zero": False,
    "omega_zero": False,
    "use_projection": True,
    "ignore_singular_values": False,
}


def gromo_available() -> str | None:
    """``None`` when GroMo imports, else the reason it does not (for the report)."""
    try:
        import gromo.containers.growing_mlp  # noqa: F401
    except Exception as error:  # any import-time failure must end up in the report
        return f"{type(error).__name__}: {error}"
    return None


@dataclass(frozen=True)
class GromoSchedule:
    """When and how GroMo grows (the same budget of samples as ``GrowthCallback``'s defaults).

    Attributes
    ----------
    grow_every_epochs
        One growth decision after every this many epochs.
    stop_fraction
        No growth after this fraction of the epochs (0.5: the second half trains the final net).
    statistics_samples
        Training samples (drawn at random each time) for GroMo's statistics.
    held_samples
        Other training samples for the amplitude line search.
    amplitudes
        Scaling factors tried by the line search (0 is always tried: no growth).
    maximum_added_neurons
        GroMo's cap per growth (``None``: every singular value above its statistical threshold).
    normalize
        Call ``normalize_optimal_updates()`` (GroMo's default normalisation) before the search.
    """

    grow_every_epochs: int = 1
    stop_fraction: float = 0.5
    statistics_samples: int = 512
    held_samples: int = 256
    amplitudes: tuple[float, ...] = tuple(2.0**k for k in range(-12, 1))
    maximum_added_neurons: int | None = None
    normalize: bool = False
    settings: dict[str, Any] = field(default_factory=lambda: dict(TINY_SETTINGS))


def _grow_once(
    model: Any,
    statistics: tuple[Tensor, Tensor],
    held: tuple[Tensor, Tensor],
    schedule: GromoSchedule,
    batch_size: int,
    timings: dict[str, float],
) -> dict[str, Any]:
    """One GroMo growth decision on the best layer; returns the event record."""
    started = time.perf_counter()
    model.init_computation()
    inputs, labels = statistics
    for start in range(0, len(inputs), batch_size):
        model.zero_grad()
        logits = model(inputs[start : start + batch_size])
        # GroMo averages its statistics itself: it wants the summed loss.
        F.cross_entropy(logits, labels[start : start + batch_size], reduction="sum").backward()
        model.update_computation()
    timings["statistics"] += time.perf_counter() - started

    started = time.perf_counter()
    model.compute_optimal_updates(
        maximum_added_neurons=schedule.maximum_added_neurons, **schedule.settings
    )
    model.reset_computation()
    model.zero_grad()
    layer_index = model.select_best_update()
    layer = model.currently_updated_layer
    if schedule.normalize:
        layer.normalize_optimal_updates()
    timings["solve"] += time.perf_counter() - started

    started = time.perf_counter()
    held_inputs, held_labels = held

    @torch.no_grad()
    def held_loss(amplitude: float) -> float:
        model.set_scaling_factor(amplitude)
        return F.cross_entropy(model.extended_forward(held_inputs), held_labels).item()

    loss_before = held_loss(0.0)
    losses = {amplitude: held_loss(amplitude) for amplitude in schedule.amplitudes}
    amplitude = min(losses, key=losses.__getitem__)
    accepted = losses[amplitude] < loss_before
    timings["search"] += time.perf_counter() - started

    started = time.perf_counter()
    added = int(layer.eigenvalues_extension.shape[0]) if accepted else 0
    if accepted:
        model.set_scaling_factor(amplitude)
        model.apply_change()
    else:
        layer.delete_update()
        model.currently_updated_layer_index = None
    timings["surgery"] += time.perf_counter() - started
    return {
        "layer": layer_index,
        "accepted": accepted,
        "neurons_added": added,
        "amplitude": amplitude if accepted else 0.0,
        "loss_before": loss_before,
        "loss_after": losses[amplitude] if accepted else loss_before,
    }


def _widths(model: Any) -> list[int]:
    return [int(layer.in_features) for layer in model.layers[1:]]


def run_gromo_digits(
    seed: int,
    split: DigitsSplit,
    protocol: DigitsProtocol | None = None,
    schedule: GromoSchedule | None = None,
    start: tuple[int, int] = (2, 2),
) -> RunResult:
    """GroMo's TINY growth of a ``GrowingMLP`` 64-2-2-10 (ReLU) on the digits protocol.

    Parameters
    ----------
    seed
        Seeds the initialisation, the data order and the statistics / held sample draws.
    split
        The protocol split.
    protocol
        Epochs, batch size, learning rate (Adam); default: the protocol's.
    schedule
        When and how GroMo grows; default: :class:`GromoSchedule()`.
    start
        Initial hidden widths (GroMo's ``GrowingMLP`` has one width for all layers: both must
        be equal).

    Returns
    -------
    RunResult
        Test metrics, parameters, fit time, per-phase growth time, width trajectory, events.
    """
    from gromo.containers.growing_mlp import GrowingMLP

    protocol = protocol or DigitsProtocol()
    schedule = schedule or GromoSchedule()
    if start[0] != start[1]:
        raise ValueError("GrowingMLP starts with one width for every hidden layer")
    seed_everything(seed)
    model = GrowingMLP(64, 10, hidden_size=start[0], number_hidden_layers=2, activation=nn.ReLU())
    loader = make_loader(split.train_inputs, split.train_labels, protocol.batch_size, seed)
    draws = torch.Generator().manual_seed(seed + 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=protocol.learning_rate)
    timings = dict.fromkeys(("statistics", "solve", "search", "surgery"), 0.0)
    trajectory: list[tuple[int, list[int]]] = [(0, _widths(model))]
    events: list[dict[str, Any]] = []
    last_growth_epoch = int(protocol.epochs * schedule.stop_fraction)
    step = 0
    started = time.perf_counter()
    for epoch in range(protocol.epochs):
        model.train()
        for inputs, labels in loader:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(inputs), labels).backward()
            optimizer.step()
            step += 1
        if epoch + 1 > last_growth_epoch or (epoch + 1) % schedule.grow_every_epochs:
            continue
        order = torch.randperm(len(split.train_inputs), generator=draws)
        statistics_index = order[: schedule.statistics_samples]
        held_index = order[schedule.statistics_samples :][: schedule.held_samples]
        event = _grow_once(
            model,
            (split.train_inputs[statistics_index], split.train_labels[statistics_index]),
            (split.train_inputs[held_index], split.train_labels[held_index]),
            schedule,
            protocol.batch_size,
            timings,
        )
        if event["accepted"]:
            rebuilt = time.perf_counter()
            optimizer = torch.optim.Adam(model.parameters(), lr=protocol.learning_rate)
            timings["surgery"] += time.perf_counter() - rebuilt
            trajectory.append((step, _widths(model)))
        events.append({"step": step, "epoch": epoch, "widths_after": _widths(model), **event})
    seconds = time.perf_counter() - started
    return RunResult(
        name="gromo tiny",
        seed=seed,
        widths=_widths(model),
        parameters=count_parameters(model),
        metrics=evaluate_classifier(model, split.test_inputs, split.test_labels),
        fit_seconds=seconds,
        growth_seconds=timings,
        width_trajectory=trajectory,
        events=events,
    )


def gromo_pair_lambdas(
    first: nn.Linear,
    second: nn.Linear,
    activation: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    loss: str = "cross_entropy",
) -> Tensor:
    """GroMo's λ (``eigenvalues_extension``) for the pair ``first → activation → second``.

    The two Linear layers are copied into ``LinearGrowingModule`` s (float64), GroMo gathers its
    statistics on ``inputs`` in one batch with a summed loss, and ``compute_optimal_updates``
    with the TINY settings, no statistical threshold and no neuron cap returns every singular
    value of ``S^{-1/2} N``.

    Parameters
    ----------
    first, second
        The pair (with biases).
    activation
        The activation between them.
    inputs, targets
        The samples (targets: class indices for ``"cross_entropy"``, values for ``"mse"``).
    loss
        ``"cross_entropy"`` or ``"mse"`` (per-sample ``0.5 * ||y - t||²`` is NOT used: the
        summed ``F.mse_loss(reduction="sum")``).

    Returns
    -------
    Tensor
        The singular values, largest first (float64).
    """
    from gromo.modules.linear_growing_module import LinearGrowingModule

    grown_first = LinearGrowingModule(
        first.in_features, first.out_features, post_layer_function=activation, name="first"
    )
    grown_second = LinearGrowingModule(
        second.in_features, second.out_features, previous_module=grown_first, name="second"
    )
    grown_first.next_module = grown_second
    for grown, plain in ((grown_first, first), (grown_second, second)):
        grown.double()
        with torch.no_grad():
            grown.layer.weight.copy_(plain.weight)
            grown.layer.bias.copy_(plain.bias)
    grown_second.init_computation()
    outputs = grown_second(grown_first(inputs.double()))
    if loss == "cross_entropy":
        total = F.cross_entropy(outputs, targets, reduction="sum")
    else:
        total = F.mse_loss(outputs, targets.double(), reduction="sum")
    total.backward()
    grown_second.update_computation()
    grown_second.compute_optimal_updates(
        numerical_threshold=1e-12,
        statistical_threshold=0.0,
        maximum_added_neurons=None,
        dtype=torch.float64,
        **TINY_SETTINGS,
    )
    return grown_second.eigenvalues_extension.detach().clone()
