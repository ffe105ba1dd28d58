"""Load grown checkpoints into freshly built (smaller) models.

A grown checkpoint holds larger tensors than the model its constructor builds. Before the weights
are copied, the Linear / Conv2d / BatchNorm layers are resized to the incoming shapes (new
``nn.Parameter`` objects, updated ``in_/out_features``, ``in_/out_channels``, ``num_features``);
``load_state_dict`` then fills them.

Order in ``trainer.fit(model, ckpt_path=...)`` (lightning 2.6, ``Trainer._run``), which is why a
load_state_dict pre-hook registered in ``Callback.setup`` is enough:

1. ``call._call_setup_hook``: callbacks' and the module's ``setup`` (register the hook here with
   :func:`enable_resize_on_load`), then ``configure_model``;
2. ``_checkpoint_connector._restore_modules_and_callbacks``: ``on_load_checkpoint`` of the
   module, then ``strategy.load_model_state_dict`` → ``lightning_module.load_state_dict`` (the
   pre-hook resizes here), then datamodule and callback states (callbacks' ``on_load_checkpoint``
   runs AFTER the weights are loaded, too late to resize);
3. ``strategy.setup``: the model moves to the device, is wrapped (DDP), and the optimizers and
   LR schedulers are created from the now grown parameters;
4. ``_checkpoint_connector.restore_training_state``: optimizer states (grown, matching the new
   parameters) and LR scheduler states are loaded, then the loops.

Strategies with ``restore_checkpoint_after_setup`` (FSDP, DeepSpeed, ModelParallel) load weights
after step 3, when the optimizers already hold the old parameters: growth refuses them anyway.

``LightningModule.load_from_checkpoint`` constructs the module and calls its ``load_state_dict``:
:class:`ResizeOnLoadMixin` registers the pre-hook at construction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_grow.layers import is_norm, is_weight_layer, layer_handler, norm_handler
from lightning_grow.surgery.widen import ModuleEdit

__all__ = [
    "ResizeOnLoadMixin",
    "enable_resize_on_load",
    "in_flight_state",
    "reload_hint",
    "resize_to_state_dict",
    "warn_if_not_reloadable",
]


def _fresh_value(module: nn.Module, attribute: str) -> float:
    """What a resized tensor holds until load_state_dict fills it (matters for non-strict loads)."""
    handler = norm_handler(module)
    return 0.0 if handler is None else handler.fresh_value(attribute)


def _local_tensors(module: nn.Module) -> dict[str, Tensor]:
    tensors = {name: p for name, p in module.named_parameters(recurse=False) if p is not None}
    tensors.update(
        (name, b)
        for name, b in module.named_buffers(recurse=False)
        if b is not None and name not in module._non_persistent_buffers_set
    )
    return tensors


def _layer_targets(
    module: nn.Linear | nn.Conv2d, where: str, incoming: dict[str, tuple[int, ...]]
) -> dict[str, tuple[int, ...]]:
    current = tuple(module.weight.shape)
    if "weight" in incoming:
        weight = incoming["weight"]
    elif "bias" in incoming:
        weight = (incoming["bias"][0], *current[1:])
    else:
        weight = current
    if len(weight) != len(current):
        raise ValueError(f"cannot resize {where}: incoming weight has shape {weight}")
    handler = layer_handler(module)
    assert handler is not None
    problem = handler.resize_problem(module, weight)
    if problem is not None:
        raise ValueError(f"cannot resize {where}: {problem}")
    targets = {"weight": weight}
    if module.bias is not None:
        targets["bias"] = (weight[0],)
    return targets


def _batch_norm_targets(
    module: nn.Module, where: str, incoming: dict[str, tuple[int, ...]]
) -> dict[str, tuple[int, ...]]:
    shapes = {shape for name, shape in incoming.items() if name != "num_batches_tracked"}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"cannot resize {where}: inconsistent incoming shapes {incoming}")
    length = next(iter(shapes))
    return {name: length for name in _local_tensors(module) if name != "num_batches_tracked"}


def _plan_resize(module: nn.Module, name: str, incoming: dict[str, tuple[int, ...]]) -> ModuleEdit:
    """New tensors of the incoming sizes for one layer, after checking they fit together."""
    where = f"'{name}' ({type(module).__name__})" if name else type(module).__name__
    handler = layer_handler(module)
    if handler is not None:
        targets = _layer_targets(module, where, incoming)
    else:
        targets = _batch_norm_targets(module, where, incoming)
    for attribute, shape in incoming.items():
        if attribute in targets and targets[attribute] != shape:
            raise ValueError(
                f"cannot resize {where}: incoming {attribute} has shape {shape}, inconsistent "
                f"with the layer's other incoming tensors (expected {targets[attribute]})"
            )
    edit = ModuleEdit(module, name)
    for attribute, shape in targets.items():
        current = getattr(module, attribute)
        if tuple(current.shape) == shape:
            continue  # e.g. the bias of a layer that only gained inputs keeps its values
        fresh = torch.full(
            shape, _fresh_value(module, attribute), dtype=current.dtype, device=current.device
        )
        if isinstance(current, nn.Parameter):
            fresh = nn.Parameter(fresh, requires_grad=current.requires_grad)
        edit.tensors[attribute] = fresh
    norm = norm_handler(module)
    if handler is not None:
        edit.attributes.update(handler.resized_widths(module, targets["weight"]))
    elif norm is not None:
        edit.attributes[norm.width_attribute] = next(iter(targets.values()))[0]
    return edit


def resize_to_state_dict(
    module: nn.Module, state_dict: Mapping[str, Any], prefix: str = ""
) -> list[str]:
    """Resize Linear / Conv2d / BatchNorm layers of ``module`` to the shapes in ``state_dict``.

    Tensors whose shape changes are new (``nn.Parameter`` objects for parameters, keeping dtype,
    device and ``requires_grad``) and freshly initialised (0; 1 for BatchNorm weight and
    running_var): load the state dict afterwards to fill them. An optimizer built before the
    resize still points at the old parameters. All layers are checked before any is changed.

    Parameters
    ----------
    module
        The module to resize in place.
    state_dict
        Incoming tensors, keyed as ``prefix + module.state_dict()`` keys; keys that are absent are
        left alone.
    prefix
        Prefix of ``module``'s keys inside ``state_dict``.

    Returns
    -------
    list of str
        Names (as in ``module.named_modules()``) of the resized layers.

    Raises
    ------
    ValueError
        When another kind of module has a tensor whose shape differs, or a layer's incoming
        tensors are inconsistent (e.g. a kernel size change).
    """
    edits = []
    for name, submodule in module.named_modules():
        key_prefix = f"{prefix}{name}." if name else prefix
        local = _local_tensors(submodule)
        incoming = {
            attribute: tuple(state_dict[key_prefix + attribute].shape)
            for attribute in local
            if isinstance(state_dict.get(key_prefix + attribute), Tensor)
        }
        differing = [a for a, shape in incoming.items() if shape != tuple(local[a].shape)]
        if not differing:
            continue
        if not (is_weight_layer(submodule) or is_norm(submodule)):
            attribute = differing[0]
            current = tuple(local[attribute].shape)
            raise ValueError(
                f"cannot resize '{key_prefix}{attribute}' of {type(submodule).__name__}: the state "
                f"dict has shape {incoming[attribute]}, the module {current}; "
                "only Linear, Conv1d/2d (depthwise included) and BatchNorm layers are resized "
                "on load"
            )
        edits.append(_plan_resize(submodule, name, incoming))
    for edit in edits:
        edit.apply()
    return [edit.name for edit in edits]


def _resize_before_load(
    module: nn.Module,
    state_dict: Mapping[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    # A module-level function (not a closure) so that modules carrying the hook stay picklable.
    with torch.no_grad():
        resize_to_state_dict(module, state_dict, prefix)


def enable_resize_on_load(module: nn.Module) -> RemovableHandle:
    """Make ``module.load_state_dict`` resize layers to the incoming shapes first.

    Registers a load_state_dict pre-hook on ``module`` (it also runs when ``module`` is loaded
    as part of a parent). Registering twice is harmless: the existing hook's handle is returned.

    Parameters
    ----------
    module
        Usually the root module (the LightningModule), e.g. from ``Callback.setup``.

    Returns
    -------
    RemovableHandle
        ``handle.remove()`` unregisters the hook.
    """
    hooks = module._load_state_dict_pre_hooks
    for hook_id, hook in hooks.items():
        if getattr(hook, "hook", None) is _resize_before_load:
            handle = RemovableHandle(hooks)
            handle.id = hook_id
            return handle
    return module.register_load_state_dict_pre_hook(_resize_before_load)


def is_resize_on_load_enabled(module: nn.Module) -> bool:
    """Whether ``module.load_state_dict`` already resizes layers (mixin or registered hook)."""
    if isinstance(module, ResizeOnLoadMixin):
        return True
    hooks = module._load_state_dict_pre_hooks.values()
    return any(getattr(hook, "hook", None) is _resize_before_load for hook in hooks)


class ResizeOnLoadMixin:
    """Let a module load grown checkpoints: ``class Net(ResizeOnLoadMixin, L.LightningModule)``.

    Put it before the ``nn.Module`` base. ``Net.load_from_checkpoint(path)`` and
    ``net.load_state_dict(grown_state_dict)`` then resize the layers before loading.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        enable_resize_on_load(self)  # type: ignore[arg-type]

    def load_state_dict(self, state_dict: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
        # Covers subclasses whose __init__ bypassed the mixin's; idempotent otherwise.
        enable_resize_on_load(self)  # type: ignore[arg-type]
        return super().load_state_dict(state_dict, *args, **kwargs)  # type: ignore[misc]


def reload_hint(module: nn.Module) -> str | None:
    """What to do so that a grown ``module``'s checkpoints load again, or ``None`` if they do.

    ``Model.load_from_checkpoint(path)`` and ``Model().load_state_dict(...)`` build the model at
    its constructor's (small) size and fail with PyTorch's "size mismatch" error unless the
    class resizes on load; no code of this package runs there to explain it. The callback shows
    this hint at the end of a fit that grew the network.
    """
    if isinstance(module, ResizeOnLoadMixin):
        return None
    name = type(module).__name__
    return (
        f"The network grew, so checkpoints of this run hold larger layers than {name}() "
        f"builds: {name}.load_from_checkpoint(...) and load_state_dict(...) on a fresh {name} "
        f"fail with a 'size mismatch' error. Declare `class {name}(ResizeOnLoadMixin, "
        "LightningModule)` (from lightning_grow.checkpoint), or call "
        "`enable_resize_on_load(model)` before loading. Resuming with "
        "trainer.fit(model, ckpt_path=...) works as is while GrowthCallback is in the trainer."
    )


def warn_if_not_reloadable(module: nn.Module, *, grew: bool) -> None:
    """Warn (on rank 0) with :func:`reload_hint` when the network ``grew`` and needs it."""
    hint = reload_hint(module) if grew else None
    if hint is not None:
        rank_zero_warn(hint)


def in_flight_state(statistics: Mapping[str, Any], held: Sequence[Any]) -> dict[str, Any]:
    """The growth cycle's in-flight part of a checkpoint, on the CPU.

    ``statistics`` (pair name → :class:`~lightning_grow.statistics.accumulator.PairStatistics`)
    gives the partial sums of the open or closed window, ``held`` the batches held out for the
    amplitude
    search. The callback also keeps this when fit ends, so that ``trainer.save_checkpoint``
    after ``fit`` resumes exactly like a checkpoint written during training.
    """
    return {
        "statistics": {
            name: s.flat_sums().cpu() for name, s in statistics.items() if s.num_samples
        },
        "held": [move_data_to_device(batch, "cpu") for batch in held],
    }
