"""GrowthCallback: the TINY growth cycle inside Lightning's training loop."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.data import extract_batch_size
from torch import nn

from lightning_grow._arguments import check_arguments, check_max_width_keys, check_network
from lightning_grow._discovery import PairSpec, discover_pairs
from lightning_grow._lightning import (
    LossFn,
    check_spawned_parent_can_reload,
    check_strategy,
    default_loss,
    gradient_scale,
    merge_batches,
    quiet_evaluation,
    rewrap_ddp,
    settle_gloo_at_exit,
)
from lightning_grow.checkpoint import enable_resize_on_load, in_flight_state, warn_if_not_reloadable
from lightning_grow.events import GrowthEvent, warn_no_samples
from lightning_grow.logging import GrowthReporter
from lightning_grow.planner import (
    GrowthConfig,
    fit_to_current_shapes,
    moment_dimension,
    pair_parameters,
    plan_growth,
    to_payload,
)
from lightning_grow.policy import GrowthSchedule, Phase
from lightning_grow.statistics import PairStatistics, reduce_statistics
from lightning_grow.surgery import NewNeurons, all_or_nothing, count_parameters, grow_pair
from lightning_grow.topology import (
    GrowablePair,
)

__all__ = ["GrowthCallback"]


class GrowthCallback(Callback):
    """Grow a plain ``torch.nn`` network while it trains, with TINY's optimal new neurons.

    During ordinary training steps the callback gathers, for every growable layer pair, the
    moments of MATH.md §2 (hooks, no extra passes). At each decision it computes the expressivity
    bottleneck and the optimal new neurons of every pair, keeps the neurons that are
    statistically significant and realise enough of the desired update, scales them by a line
    search on held-out training batches, widens the layers, re-points the optimizer (momentum and
    Adam moments kept) and logs the event.

    Every argument is keyword-only and has a default that suits a typical small model.

    Parameters
    ----------
    pairs
        ``"auto"`` (discover every growable pair with torch.fx), a list of explicit pairs
        (``"fc1 -> fc2"``, ``("fc1", "fc2")`` or ``{"first", "second", "batch_norm",
        "activation"}``, names relative to ``network``), or a predicate that filters the
        discovered pairs.
    network
        Attribute name of the network inside the LightningModule (e.g. ``"backbone"``).
        ``None``: trace the LightningModule itself, else its largest child module.
    method
        ``"tiny"`` (optimal neurons), ``"gradmax"`` (α = 0, ω from the gradient) or ``"random"``
        (Kaiming α, ω = 0). Where and how many neurons are added is decided by TINY's analysis for
        every method, so methods compare at the same schedule. GradMax behind a ReLU-family
        activation is not exactly function-preserving: a zero fan-in unit would never receive a
        gradient (ReLU'(0) = 0), so each new unit gets the constant pre-activation 0.01 (its
        bias or its BatchNorm's bias; without either, input weights of size 1e-3), which adds
        0.01 × its output weights to ``second``'s output (away from a convolution's padded
        border); the event's ``loss_after`` includes that change.
    warmup_steps
        Optimizer steps before the first statistics window.
    statistics_samples
        Samples per statistics window. ``None``: ``max(512, 2 × the largest moment dimension)``
        of the pairs, so bigger layers get more samples.
    held_samples
        Training samples held out (after each window) for the amplitude search. Batches of
        tensors are concatenated so that each trial is one ``training_step`` call.
    cooldown_steps
        Optimizer steps between a decision and the next window.
    max_window_extensions
        When a pair does not grow, its statistics keep accumulating through up to this many
        further windows (more samples make weaker bottlenecks significant) before they restart.
        The default, 15, lets a test see 16 windows (8k samples for small layers): enough for
        a teacher–student student to find its last few neurons, where 8 windows stopped it
        short of the teacher's width.
    stop_step, stop_epoch, stop_fraction
        No growth at or after this optimizer step, epoch, or fraction of the estimated total
        steps. The default, 0.6, leaves the last 40 % of training to the final network; at 0.5
        slow-growing runs were cut off short of their size (teacher–student: 4 of 10 students
        stopped at width 26–30 with 3–7× the MSE of width 32), while runs whose growth had
        settled earlier (digits CNN) are unchanged.
    patience
        After this many consecutive exhausted windows in which no pair had a significant neuron,
        pause growth for as many steps as it has gone without one, then look again (``None``:
        never pause). Pauses grow with every idle stretch, so an idle search costs ever less,
        while a network that training has moved to a new bottleneck still gets it fixed.
    gain_threshold
        Minimum expressivity gain, the share ``λ_k² / E‖v‖²`` of the desired update, that each
        new neuron must realise.
    significance_margin
        How far above the sampling-noise floor a singular value must be to count as signal, in
        standard deviations of the worst-case noise law (see ``lightning_grow.tiny``). 1.0 admits
        at most ~16 % false positives per pair and decision in the worst case (far fewer for
        isotropic noise); each accepted neuron must still lower the held-out loss.
    max_neurons_per_event
        Cap on neurons per pair per decision. ``None``: the pair's current width (at most
        doubling).
    max_width
        Width cap for every pair, or a ``{pair name: cap}`` mapping.
    max_parameters
        Parameter budget of the network; pairs with the best gain per parameter are served first.
    min_loss_decrease
        Minimum relative loss decrease on the held-out batches for TINY neurons to be accepted.
    amplitude_range
        Smallest and largest amplitude of the doubling line search.
    loss_fn
        ``loss_fn(pl_module, batch) -> loss`` for the amplitude search. ``None``: the module's
        ``training_step``, called in eval mode without gradients, several times per pair and
        decision (each event's ``training_step_calls``; e.g. 213 calls for 32 optimizer
        steps). Its logging and metric updates are suppressed; any other side effect (a counter,
        an EMA, random draws, prints) happens at every call: pass a pure ``loss_fn`` then.
    loss_reduction
        How the training loss reduces over the batch (``"mean"`` or ``"sum"``); per-sample
        gradients are recovered from it.
    seed
        Seed for random initialisations (broadcast from rank 0 under DDP).
    verbose
        One console line per growth and a final architecture table (rank 0).
    wandb_tables
        With a ``WandbLogger``: log a growth-events table and a width chart.
    """

    def __init__(
        self,
        *,
        pairs: str | Sequence[PairSpec] | Callable[[GrowablePair], bool] = "auto",
        network: str | None = None,
        method: Literal["tiny", "gradmax", "random"] = "tiny",
        warmup_steps: int = 0,
        statistics_samples: int | None = None,
        held_samples: int = 256,
        cooldown_steps: int = 0,
        max_window_extensions: int = 15,
        stop_step: int | None = None,
        stop_epoch: int | None = None,
        stop_fraction: float | None = 0.6,
        patience: int | None = 3,
        gain_threshold: float = 0.001,
        significance_margin: float = 1.0,
        max_neurons_per_event: int | None = None,
        max_width: int | dict[str, int] | None = None,
        max_parameters: int | None = None,
        min_loss_decrease: float = 1e-3,
        amplitude_range: tuple[float, float] = (2.0**-12, 64.0),
        loss_fn: LossFn | None = None,
        loss_reduction: Literal["mean", "sum"] = "mean",
        seed: int = 0,
        verbose: bool = True,
        wandb_tables: bool = True,
    ) -> None:
        check_arguments(locals())
        self.pairs_spec = pairs
        self.network_name = network
        self.warmup_steps = warmup_steps
        self.statistics_samples = statistics_samples
        self.held_samples = held_samples
        self.cooldown_steps = cooldown_steps
        self.max_window_extensions = max_window_extensions
        self.stop_step, self.stop_epoch, self.stop_fraction = stop_step, stop_epoch, stop_fraction
        self.patience = patience
        self.loss_fn = loss_fn
        self.loss_reduction = loss_reduction
        self.config = GrowthConfig(
            method=method,
            gain_threshold=gain_threshold,
            max_neurons_per_event=max_neurons_per_event,
            max_width=max_width,
            max_parameters=max_parameters,
            min_loss_decrease=min_loss_decrease,
            amplitude_range=tuple(amplitude_range),  # type: ignore[arg-type]
            seed=seed,
            solver_options={"significance_margin": significance_margin},
        )
        self.reporter = GrowthReporter(verbose=verbose, wandb_tables=wandb_tables)

        self.pairs: list[GrowablePair] = []
        self.network: nn.Module | None = None
        self.history: list[GrowthEvent] = []
        self.initial_widths: dict[str, int] = {}
        self.timings: dict[str, float] = dict.fromkeys(
            ("statistics", "solve", "search", "surgery"), 0.0
        )
        self.schedule: GrowthSchedule | None = None
        self._statistics: dict[str, PairStatistics] = {}
        self._extensions: dict[str, int] = {}
        self._held: list[Any] = []
        self._pending_state: dict[str, Any] | None = None
        # The in-flight window and held batches as fit ended, for a checkpoint saved after fit.
        self._kept_in_flight: dict[str, Any] | None = None
        self._warned_no_samples = False

    # ------------------------------------------------------------------ setup and teardown
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            check_strategy(trainer.strategy)
            check_spawned_parent_can_reload(trainer, pl_module)
            settle_gloo_at_exit()
        # Grown checkpoints hold larger tensors than a freshly built model: resize on load.
        enable_resize_on_load(pl_module)
        if stage != "fit":
            return
        check_network(pl_module, self.network_name)
        self.network, self.pairs = discover_pairs(pl_module, self.network_name, self.pairs_spec)
        check_max_width_keys(self.config.max_width, [pair.name for pair in self.pairs])
        if not self.initial_widths:
            self.initial_widths = {pair.name: pair.width for pair in self.pairs}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._kept_in_flight = None
        self._statistics = {pair.name: self._new_statistics(pair) for pair in self.pairs}
        self._extensions = dict.fromkeys(self._statistics, 0)
        self.reporter.on_fit_start(trainer, self.widths, self.total_parameters, self.history)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._keep_in_flight()
        self._remove_statistics()
        warn_if_not_reloadable(pl_module, grew=any(e.accepted for e in self.history))
        self.reporter.on_fit_end(
            trainer,
            self.initial_widths,
            self.widths,
            {pair.name: pair_parameters(pair) for pair in self.pairs},
            self.total_parameters,
        )

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._keep_in_flight()  # also when fit was interrupted (on_fit_end did not run)
        self._remove_statistics()
        self._held = []

    # ------------------------------------------------------------------ the cycle
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.schedule is None:
            self.schedule = self._build_schedule(trainer, batch)
        phase = self.schedule.advance(trainer.global_step)
        if phase is Phase.COLLECT:
            scale = gradient_scale(trainer)
            for statistics in self._statistics.values():
                statistics.gradient_scale = scale
                if not statistics.is_open:
                    statistics.open()
            return
        self._close_statistics()
        if phase is Phase.HOLD and trainer.is_global_zero:
            self._held.append(batch)
        elif phase is Phase.STOPPED:
            self._remove_statistics()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # Never between a backward and its optimizer step: only after a real step, and on a
        # condition (global step) that is identical on every rank.
        if trainer.fit_loop._should_accumulate() or self.schedule is None:
            return
        if self.schedule.ready_to_decide(trainer.global_step):
            self._decide(trainer, pl_module)

    def _decide(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.schedule is not None
        started = time.perf_counter()
        statistics = [self._statistics[pair.name] for pair in self.pairs]
        if trainer.world_size > 1:
            reduce_statistics(statistics, lambda t: trainer.strategy.reduce(t, reduce_op="sum"))
        hook_seconds = 0.0
        for s in statistics:
            hook_seconds += s.elapsed_seconds
            s.elapsed_seconds = 0.0
        statistics_seconds = time.perf_counter() - started + hook_seconds

        payload: dict[str, Any] | None = None
        failure: Exception | None = None
        if trainer.is_global_zero:
            try:
                payload = self._plan(trainer, pl_module, statistics_seconds)
            except Exception as error:
                # Every rank waits in the broadcast below: send the failure, raise everywhere.
                payload, failure = {"error": f"{type(error).__name__}: {error}"}, error
        payload = trainer.strategy.broadcast(payload, src=0)
        if "error" in payload:
            if failure is not None:
                raise failure
            raise RuntimeError(f"GrowthCallback decision failed on rank 0: {payload['error']}")

        geometries = {pair.name: pair.geometry() for pair in self.pairs}
        started = time.perf_counter()
        self._apply(trainer, payload["growth"])
        surgery_seconds = time.perf_counter() - started

        events = [GrowthEvent.from_dict(record) for record in payload["events"]]
        for event in events:
            event.timings["surgery"] = surgery_seconds / max(len(events), 1)
            for phase, seconds in event.timings.items():
                self.timings[phase] += seconds
        self.history.extend(events)
        extending = self._next_windows(trainer, geometries, events)
        self._held = []
        self.schedule.decided(
            trainer.global_step,
            any_significant=payload["any_significant"],
            count_idle=not extending,
        )
        self.reporter.on_decision(trainer, events, self.widths, self.total_parameters)

    def _next_windows(
        self, trainer: pl.Trainer, geometries: dict[str, Any], events: list[GrowthEvent]
    ) -> bool:
        """Start each pair's next statistics window; return whether any window is extended.

        A pair that did not grow and whose shapes did not change keeps its statistics and adds
        the next window's samples to them (up to ``max_window_extensions`` windows): "not
        significant with n samples" calls for more samples, not for giving up. A pair that grew,
        or whose neighbour's growth changed its shapes, starts afresh.
        """
        accepted = {event.pair for event in events if event.accepted}
        extending = False
        for pair in self.pairs:
            name = pair.name
            statistics = self._statistics[name]
            if pair.geometry() != geometries[name]:
                statistics.remove()
                self._statistics[name] = self._new_statistics(pair)
                self._extensions[name] = 0
            elif name not in accepted and self._extensions[name] < self.max_window_extensions:
                self._extensions[name] += 1
                extending = True
                if not trainer.is_global_zero:
                    # After the reduction every rank holds the global sums: only rank 0 keeps
                    # them, so the next reduction counts every sample once.
                    statistics.reset()
            else:
                statistics.reset()
                self._extensions[name] = 0
        return extending

    def _plan(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, statistics_seconds: float
    ) -> dict[str, Any]:
        assert self.schedule is not None
        # A window whose batches all had non-finite gradients (e.g. early fp16 AMP steps) has no
        # samples: such pairs sit this decision out.
        moments = {name: s.moments() for name, s in self._statistics.items() if s.num_samples}
        self._warned_no_samples = self._warned_no_samples or warn_no_samples(self._statistics)
        loss_fn = self.loss_fn or default_loss
        held = merge_batches(self._held)
        calls = 0

        def evaluate() -> float:
            nonlocal calls
            total, count = 0.0, 0
            for batch in held:
                calls += 1
                size = extract_batch_size(batch)
                total += float(loss_fn(pl_module, batch)) * size
                count += size
            return total / max(count, 1)

        with quiet_evaluation(pl_module):
            planned, events, any_significant = plan_growth(
                self.pairs,
                moments,
                evaluate,
                self.config,
                total_parameters=self.total_parameters,
                step=trainer.global_step,
                epoch=trainer.current_epoch,
                decision_index=self.schedule.decisions,
                statistics_seconds=statistics_seconds,
            )
        for event in events:
            event.training_step_calls = calls
        return {
            "growth": [to_payload(item) for item in planned],
            "events": [event.to_dict() for event in events],
            "any_significant": any_significant,
        }

    def _apply(self, trainer: pl.Trainer, growth: list[tuple[str, dict[str, Any]]]) -> set[str]:
        """Install the planned neurons on this rank; return the names of the grown pairs."""
        by_name = {pair.name: pair for pair in self.pairs}
        grown: set[str] = set()
        # All pairs or none: a failure on one undoes the pairs grown before it.
        with all_or_nothing() as journal:
            for name, tensors in growth:
                pair = by_name[name]
                device = pair.first.weight.device
                tensors = fit_to_current_shapes(pair, move_data_to_device(tensors, device))
                neurons = NewNeurons(**tensors)
                grow_pair(pair, neurons, trainer.optimizers, journal=journal)
                grown.add(name)
        if grown:
            rewrap_ddp(trainer)
        return grown

    # ------------------------------------------------------------------ helpers
    @property
    def widths(self) -> dict[str, int]:
        """Current hidden width of every pair."""
        return {pair.name: pair.width for pair in self.pairs}

    @property
    def total_parameters(self) -> int:
        """Parameters of the network being grown."""
        if self.network is None:
            return 0
        return count_parameters(self.network)

    def _new_statistics(self, pair: GrowablePair) -> PairStatistics:
        return PairStatistics(pair, loss_reduction=self.loss_reduction)

    def _close_statistics(self) -> None:
        for statistics in self._statistics.values():
            if statistics.is_open:
                statistics.close()

    def _remove_statistics(self) -> None:
        for statistics in self._statistics.values():
            statistics.remove()
        self._statistics = {}

    def _build_schedule(self, trainer: pl.Trainer, batch: Any) -> GrowthSchedule:
        # The batch size of rank 0 sets the window length so all ranks agree on the schedule.
        local_batch = extract_batch_size(batch)
        batch_size = int(trainer.strategy.broadcast(local_batch, src=0))
        per_step = batch_size * trainer.accumulate_grad_batches
        window_samples = self.statistics_samples or max(
            [512] + [2 * moment_dimension(pair) for pair in self.pairs]
        )
        window_steps = math.ceil(window_samples / (per_step * trainer.world_size))
        hold_steps = math.ceil(self.held_samples / per_step)
        schedule = GrowthSchedule(
            warmup_steps=self.warmup_steps,
            window_steps=max(window_steps, 1),
            hold_steps=max(hold_steps, 1),
            cooldown_steps=self.cooldown_steps,
            stop_step=self._stop_step(trainer),
            patience=self.patience,
        )
        if self._pending_state is not None:
            self._restore_in_flight(schedule, self._pending_state, trainer.is_global_zero)
            self._pending_state = None
        return schedule

    def _stop_step(self, trainer: pl.Trainer) -> int | None:
        stops: list[int] = []
        if self.stop_step is not None:
            stops.append(self.stop_step)
        total = trainer.estimated_stepping_batches
        if self.stop_fraction is not None and math.isfinite(total):
            stops.append(int(self.stop_fraction * total))
        if self.stop_epoch is not None:
            batches = trainer.num_training_batches
            if math.isfinite(batches):
                steps_per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
                stops.append(int(self.stop_epoch * steps_per_epoch))
        return min(stops) if stops else None

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "history": [event.to_dict() for event in self.history],
            "initial_widths": dict(self.initial_widths),
            "timings": dict(self.timings),
        }
        if self.schedule is not None:
            state["schedule"] = self.schedule.state_dict()
            # An interrupted window resumes where it was (rank 0's partial sums under DDP); after
            # fit, the window and held batches as fit ended.
            kept = None if self._statistics else self._kept_in_flight
            state.update(kept or in_flight_state(self._statistics, self._held))
            state["extensions"] = dict(self._extensions)
        return state

    def _keep_in_flight(self) -> None:
        if self._statistics:
            self._kept_in_flight = in_flight_state(self._statistics, self._held)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [GrowthEvent.from_dict(record) for record in state_dict["history"]]
        self.initial_widths = dict(state_dict["initial_widths"])
        self.timings.update(state_dict.get("timings", {}))
        if "schedule" in state_dict:
            self._pending_state = state_dict
            self.schedule = None

    def _restore_in_flight(
        self, schedule: GrowthSchedule, state: dict[str, Any], is_global_zero: bool
    ) -> None:
        schedule.load_state_dict(state["schedule"])
        self._extensions.update(state.get("extensions", {}))
        # Saved sums are rank 0's (global after a reduction): the other ranks start empty so the
        # next reduction counts every sample once.
        for name, sums in state.get("statistics", {}).items() if is_global_zero else ():
            if name in self._statistics:
                device = next(iter(self._statistics[name].pair.first.parameters())).device
                self._statistics[name].load_flat_sums(sums.to(device))
        device = self.pairs[0].first.weight.device if self.pairs else "cpu"
        self._held = [move_data_to_device(batch, device) for batch in state.get("held", [])]
