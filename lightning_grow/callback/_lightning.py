"""Lightning plumbing for the callback: quiet loss evaluation, DDP re-wrap, precision details.

Every private API of Lightning, DDP and torchmetrics that the package relies on is used here
and nowhere else, each guarded by a test pinned to the version it was verified on
(``tests/test_private_apis.py``):

* ``trainer.fit_loop._should_accumulate()`` (Lightning): whether the batch that just ended is
  followed by an optimizer step (:func:`should_accumulate`).
* ``DistributedDataParallel._remove_autograd_hooks()`` (torch DDP): drop the old reducer's hooks
  before re-wrapping (:func:`rewrap_ddp`).
* ``Metric._defaults``, ``_update_count``, ``_computed``, ``_forward_cache`` (torchmetrics): a
  metric's state, snapshotted and restored around the amplitude search (:func:`quiet_evaluation`).
* ``strategy._start_method`` (Lightning DDP): whether ``ddp_spawn`` copies weights back into the
  launching process (:func:`check_spawned_parent_can_reload`).
"""

from __future__ import annotations

import atexit
import copy
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from torch import Tensor, nn

from lightning_grow.surgery.checkpoint import is_resize_on_load_enabled
from lightning_grow.topology.pairs import GrowthConfigurationError

LossFn = Callable[["pl.LightningModule", Any], Tensor]


def check_strategy(strategy: Any) -> None:
    """Refuse strategies whose parameters are sharded or wrapped beyond plain DDP."""
    if isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)):
        return
    name = type(strategy).__name__
    raise ValueError(
        f"GrowthCallback supports single-device training and DDP (strategy='ddp' or "
        f"'ddp_spawn'), not {name}: sharded strategies such as FSDP and DeepSpeed split "
        f"parameters across ranks, so layers cannot be widened in place. Use strategy='ddp'."
    )


_gloo_exit_settled = False


def settle_gloo_at_exit(seconds: float = 0.2) -> None:
    """Let gloo's worker threads free their last collective before this process exits.

    torch's gloo worker thread drops its reference to a finished collective after the waiting
    thread has moved on, and freeing it takes the GIL (the work keeps the caller's Python
    context). A rank that exits right after its last collective can start finalizing the
    interpreter first; the worker thread is then killed inside a ``noexcept`` destructor and the
    process aborts ("terminate called without an active exception", SIGABRT) after training
    finished. Releasing the GIL for a moment at exit, before finalization starts, lets the
    worker finish. Registered once per process; only DDP on gloo needs it.
    """
    global _gloo_exit_settled
    distributed = torch.distributed
    on_gloo = distributed.is_available() and distributed.is_initialized()
    if _gloo_exit_settled or not on_gloo or distributed.get_backend() != "gloo":
        return
    _gloo_exit_settled = True
    atexit.register(time.sleep, seconds)


def should_accumulate(trainer: pl.Trainer) -> bool:
    """Whether the batch that just ended only accumulates gradients (no optimizer step follows).

    The callback may change the model only after a real optimizer step, never between a
    backward and its step; Lightning keeps that answer in a private method of its fit loop.
    """
    return bool(trainer.fit_loop._should_accumulate())


def rewrap_ddp(trainer: pl.Trainer) -> None:
    """Rebuild the DDP wrapper after parameters were replaced (keeps the user's DDP options)."""
    strategy = trainer.strategy
    if not isinstance(strategy, DDPStrategy):
        return
    wrapped = strategy.model
    if isinstance(wrapped, nn.parallel.DistributedDataParallel):
        # The old reducer still holds autograd hooks on the parameters that did not change.
        wrapped._remove_autograd_hooks()
    strategy.model = strategy.lightning_module
    strategy.configure_ddp()


def refresh_compiled(pair_names: Iterable[str]) -> None:
    """Drop dynamo's compiled code when growth stops on a ``torch.compile``'d network.

    While the network grows, the statistics' hooks split its graph at every layer and each growth
    changes the guarded shapes: the split frames (``Linear.forward``) reach dynamo's recompile
    limit (8) and then run eagerly, for the rest of the run unless the cache is dropped.
    Dropping it after each growth instead cost a full compilation per growth (tiny MLP, CPU,
    inductor, ~30 growths in 150 steps: 146 s against 15 s). Once growth stops and the hooks
    are gone, one fresh compilation gives the final network the whole graph.
    """
    if any("_orig_mod" in name.split(" -> ")[0].split(".") for name in pair_names):
        torch.compiler.reset()


def gradient_scale(trainer: pl.Trainer) -> float:
    """Factor that turns a captured ∂(loss)/∂z into the gradient of the mean training loss.

    Lightning divides the loss by ``accumulate_grad_batches`` before backward, and 16-bit AMP
    multiplies it by the GradScaler's scale.
    """
    scale = float(trainer.accumulate_grad_batches)
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if scaler is not None and scaler.is_enabled():
        scale /= float(scaler.get_scale())
    return scale


def default_loss(pl_module: pl.LightningModule, batch: Any) -> Tensor:
    """The module's own ``training_step`` loss (a tensor, or the ``"loss"`` of a dict)."""
    output = pl_module.training_step(batch, 0)
    if isinstance(output, dict):
        output = output.get("loss")
    if not isinstance(output, Tensor):
        raise TypeError(
            "GrowthCallback evaluates candidate neurons with your training_step, which must "
            "return the loss tensor or a dict with a 'loss' tensor; it returned "
            f"{type(output).__name__}. Pass GrowthCallback(loss_fn=lambda module, batch: ...)."
        )
    return output


class _Unmergeable(Exception):
    pass


def merge_batches(batches: list[Any]) -> list[Any]:
    """Concatenate batches along dim 0 so that one ``training_step`` call evaluates them all.

    A line search evaluates the held-out batches 5–10 times per pair; for small models the
    per-call overhead (``training_step``, hooks, metrics) dominates, and one call on the merged
    batch gives the same mean loss. Tensors with matching trailing shapes are concatenated
    inside dicts, tuples, lists and named tuples; equal non-tensor leaves are kept. Anything else
    (custom batch types, differing leaves such as lists of strings) leaves the batches as they
    are, which is always correct.
    """
    if len(batches) < 2:
        return list(batches)
    try:
        return [_merge(batches)]
    except _Unmergeable:
        return list(batches)


def _merge(items: list[Any]) -> Any:
    first = items[0]
    kind = type(first)
    if any(type(item) is not kind for item in items):
        raise _Unmergeable
    if isinstance(first, Tensor):
        if first.dim() == 0 or any(
            item.shape[1:] != first.shape[1:]
            or item.dtype != first.dtype
            or item.device != first.device
            for item in items
        ):
            raise _Unmergeable
        return torch.cat(items)
    if kind is dict:
        if any(item.keys() != first.keys() for item in items):
            raise _Unmergeable
        return {key: _merge([item[key] for item in items]) for key in first}
    if kind in (tuple, list) or (isinstance(first, tuple) and hasattr(first, "_fields")):
        if any(len(item) != len(first) for item in items):
            raise _Unmergeable
        fields = [_merge([item[index] for item in items]) for index in range(len(first))]
        if kind is list:
            return fields
        return kind(*fields) if kind is not tuple else tuple(fields)
    if isinstance(first, (str, int, float, bool, type(None))) and all(
        item == first for item in items
    ):
        return first
    raise _Unmergeable


def _metric_modules(module: nn.Module) -> list[nn.Module]:
    try:
        from torchmetrics import Metric
    except ImportError:  # pragma: no cover - torchmetrics is a dependency
        return []
    return [m for m in module.modules() if isinstance(m, Metric)]


def _copied(value: Any) -> Any:
    """A copy that in-place updates of the original cannot reach (tensors and lists of them)."""
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, list):
        return [_copied(item) for item in value]
    return copy.copy(value)


def _snapshot_metric(metric: Any) -> dict[str, Any]:
    state = {name: _copied(getattr(metric, name)) for name in metric._defaults}
    for name in ("_update_count", "_computed", "_forward_cache"):
        state[name] = copy.copy(getattr(metric, name, None))
    return state


@contextmanager
def quiet_evaluation(pl_module: pl.LightningModule) -> Iterator[None]:
    """Eval mode and no grad; ``self.log`` and torchmetrics updates leave no trace.

    Module train/eval flags are restored exactly, including modules the user froze in eval mode.
    """
    modes = [(m, m.training) for m in pl_module.modules()]
    metrics = [(m, _snapshot_metric(m)) for m in _metric_modules(pl_module)]

    def silent(*args: Any, **kwargs: Any) -> None:
        return None

    pl_module.__dict__["log"] = silent
    pl_module.__dict__["log_dict"] = silent
    pl_module.eval()
    # A torch.compile'd network runs eagerly here: every amplitude search adds and removes
    # hooks and switches to eval/no-grad, and each change would cost a recompilation (dynamo
    # gives up after its recompile limit, 8, and runs the network eagerly for the rest of fit).
    set_stance = getattr(torch.compiler, "set_stance", None)
    eager = set_stance("force_eager") if set_stance is not None else nullcontext()
    try:
        with torch.no_grad(), eager:
            yield
    finally:
        pl_module.__dict__.pop("log", None)
        pl_module.__dict__.pop("log_dict", None)
        for module, training in modes:
            module.training = training
        for metric, state in metrics:
            for name, value in state.items():
                setattr(metric, name, value)


def check_spawned_parent_can_reload(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    """ddp_spawn copies rank 0's weights back into the launching process's (ungrown) model."""
    start_method = getattr(trainer.strategy, "_start_method", "popen")
    if start_method == "popen" or is_resize_on_load_enabled(pl_module):
        return
    name = type(pl_module).__name__
    raise GrowthConfigurationError(
        f"With strategy 'ddp_spawn', Lightning loads the grown weights back into your original "
        f"{name} after fit, which needs it to accept larger tensors. Declare "
        f"`class {name}(ResizeOnLoadMixin, LightningModule)` (from lightning_grow.checkpoint) "
        f"or call `enable_resize_on_load(model)` before trainer.fit, or use strategy='ddp'."
    )
