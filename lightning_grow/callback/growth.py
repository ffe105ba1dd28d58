"""GrowthCallback: the TINY growth cycle inside Lightning's training loop."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lightning_grow.callback._arguments import check_arguments, check_max_width_keys, check_network
from lightning_grow.callback._budget_keeper import BudgetKeeper
from lightning_grow.callback._features import check_fit
from lightning_grow.callback._lightning import (
    LossFn,
    check_spawned_parent_can_reload,
    gradient_scale,
    settle_gloo_at_exit,
    should_accumulate,
)
from lightning_grow.callback._monitor import TargetModeMixin
from lightning_grow.callback._planning import PlanningMixin
from lightning_grow.callback._spread import solve_spread
from lightning_grow.callback._state import GrowthStateMixin
from lightning_grow.callback._transport import DecisionPayload, apply_growth
from lightning_grow.decision.budget import StatisticsPlan
from lightning_grow.decision.planner import GrowthConfig
from lightning_grow.decision.policy import GrowthSchedule, Phase
from lightning_grow.decision.spending import AlphaSpending
from lightning_grow.reporting.events import GrowthEvent, TimingPhase, zero_timings
from lightning_grow.reporting.loggers import GrowthReporter
from lightning_grow.solver.method import MethodName
from lightning_grow.statistics.accumulator import LazyMoments, PairStatistics, reduce_statistics
from lightning_grow.surgery.checkpoint import enable_resize_on_load, warn_if_not_reloadable
from lightning_grow.surgery.widen import count_parameters
from lightning_grow.topology._discovery import discover_pairs
from lightning_grow.topology.facts import pair_parameters
from lightning_grow.topology.pairs import GrowablePair, PairName

__all__ = ["GrowthCallback"]


class GrowthCallback(GrowthStateMixin, PlanningMixin, TargetModeMixin, Callback):
    """Grow a plain ``torch.nn`` network while it trains, with TINY's optimal new neurons.

    During ordinary training steps the callback gathers, for every growable layer pair, the
    moments of docs/math.md §2 (hooks, no extra passes). At each decision it computes the
    expressivity bottleneck and the optimal new neurons of every pair, keeps the neurons that are
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
        Samples per statistics window and pair (output positions, for a conv→conv pair).
        ``None``: ``max(512, 2 × the pair's largest moment dimension)``, so bigger layers get
        more samples.
    compute_budget
        Share of the training time that growth (statistics, solves, amplitude search, surgery)
        may add, measured on the batch clock: when growth is ahead of it, the next statistics
        window waits until training has caught up. Open windows spend at most half of it: when
        gathering every sample would cost more, the callback draws a random subset of images
        and, for convolutions, of output positions (an unbiased estimate), spreads a window
        over more steps, and serves the pairs in turn when all at once would make windows too
        long. The plan is made on the first batches (step time, matrix throughput) and
        printed. ``"auto"`` (default): 0.1 for networks whose statistics must be subsampled to
        fit it (a step stays within 1.1× its time without growth); networks whose statistics
        fit whole are not paced, because pacing their millisecond decisions slows their growth
        far more than it saves (the fit's summary prints what growth added). A float: that
        share, kept for every network. ``None``: every sample of every step, every pair at
        once, no pacing; the only setting whose growth does not depend on timings.
    memory_budget
        Bytes one pair's decision may use (its statistics buffers plus the float64 solve; see
        the plan table). Pairs above it are left out with a warning and the rest grow.
        ``"auto"``: an eighth of the device's memory (of the RAM on a CPU). ``None``: no limit.
    held_samples
        Training samples held out (after each window) for the amplitude search. Batches of
        tensors are concatenated so that each trial is one ``training_step`` call.
    cooldown_steps
        Optimizer steps between a decision and the next window.
    max_window_extensions
        When a pair does not grow, its statistics keep accumulating through up to this many
        further windows (more samples make weaker bottlenecks significant) before they restart.
        The default, 10, lets a test see 11 windows (5.5k samples for small layers). With new
        tanh units in tanh's non-linear range (``preactivation_rms``) it grows a
        teacher–student student (teacher width 24, 20 seeds) to widths 29–36 at the fixed
        students' test error; 16 windows grew widths 33–38 (2 of 10 seeds past 36) at the same
        error, 8 windows stopped one seed of 10 short (width 30, 6× the error). The digits MLP
        (ReLU) grows the same with 11 or 16 windows.
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
    false_growth_rate
        Opt-in error rate of the growth decisions (with ``significance_margin=None``): the
        probability that a network with no expressivity bottleneck grows at all before its
        next real growth (worst-case noise). It is spent over the tests (docs/math.md §6,
        ``lightning_grow.decision.spending``): the k-th decision since the last growth tests
        each of its m pairs at level ``α / (k (k + 1) m)``, and accepted neurons must lower the
        loss of held-out samples that did not choose their amplitude and sign. Not the default:
        at 0.05 it costs most of the growth of slowly growing runs (README).
    significance_margin
        A fixed margin for every test: how far above the sampling-noise floor a singular
        value must be, in standard deviations of the worst-case noise law; 1.0 admits ~16 %
        false positives per test, 2.33 about 1 %. ``None``: ``false_growth_rate`` decides.
    max_neurons_per_event
        Cap on neurons per pair per decision. ``None``: the pair's current width (at most
        doubling).
    max_width
        Width cap for every pair, or a ``{pair name: cap}`` mapping.
    max_parameters
        Parameter budget of the network; pairs with the best gain per parameter are served first.
    min_loss_decrease
        Minimum relative loss decrease on the held-out batches for TINY neurons to be accepted.
    confirm_margin
        The held batches are split: one half chooses the amplitude, the other confirms it, cut
        into 8 chunks whose loss decreases must reach this one-sided paired ``t`` (a decrease
        that one chunk carries is noise fitted by chance, not a bottleneck). The default 0.5,
        with ``negative_amplitudes=False``, grew 1 % and 7 % of 100 runs on pure-noise
        regression and random labels (23 % and 36 % before), and kept teacher–student at 10/10
        seeds (README, "Decisions users can trust"). ``None``: no split, the choosing samples
        confirm their own choice.
    negative_amplitudes
        Also try the sign opposite to TINY's first-order descent direction. Off by default: a
        decrease found only at ``-γ`` comes from curvature or saturation, not from the
        bottleneck the neurons were solved for (most growth on random labels came from there).
    amplitude_range
        Smallest and largest amplitude of the doubling line search.
    preactivation_rms
        RMS of a new unit's pre-activations (on the held batches) behind an activation that is
        not positively homogeneous (tanh, sigmoid, GELU, SiLU, ReLU6), where that size decides
        whether the unit is non-linear at all; input weights × f, output weights × 1/f, so the
        first-order step is unchanged (docs/math.md §8). Behind ReLU, LeakyReLU, no activation
        (where the size changes nothing the unit computes) or BatchNorm, and with ``None``, new
        units match the existing units' median RMS instead. Matching copies the starting
        network's scale: PyTorch's default init gives an RMS of about 0.4 for unit-variance
        inputs, tanh's linear range, and a tanh student grown from width 1 that way
        (teacher–student, teacher width 24) kept 5–6 near-constant units, and 2 of 10 seeds
        ended at 5–10× the test error of a fixed student (a third over-grew to width 39). 1.0,
        the pre-activation size that LeCun's and Xavier's inits aim at, brings 20 of 20 seeds to
        the fixed students' error at widths 29–36 (with ``max_window_extensions=10``).
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
    target, target_parameters, target_by
        Grow to a stated size by a stated point (README, "Growing to a target"): ``target`` is
        ``{pair name: width}`` or a multiplier of the starting widths (``4.0``);
        ``target_parameters`` a parameter budget; ``target_by`` an optimizer step (int) or a
        fraction of the estimated steps (float). Each decision adds TINY's best neurons on a
        front-loaded schedule, never past the target; ``stop_*`` and the significance test
        are not used; growth stops at ``target_by``.
    monitor, monitor_mode, monitor_patience
        Stop that follows a logged validation metric (README, "Growing while validation
        improves"): after each validation check that improved ``monitor`` (``"min"`` or
        ``"max"``), the next decision adds TINY's best neurons, up to a quarter of each width;
        ``monitor_patience`` checks without improvement stop growth. ``None``: off.
    """

    #: Under DDP, spread each decision's solves over the ranks (one rank per pair, in turn).
    spread_solves: bool = True
    #: Confirm the loss decrease on held batches that did not choose the amplitude (off: the
    #: choosing batches confirm, as tests of plumbing that need growth at every decision want).
    confirm_held_out: bool = True

    def __init__(
        self,
        *,
        pairs: str | Sequence[PairName] | Callable[[GrowablePair], bool] = "auto",
        network: str | None = None,
        method: MethodName = "tiny",
        warmup_steps: int = 0,
        statistics_samples: int | None = None,
        compute_budget: float | Literal["auto"] | None = "auto",
        memory_budget: int | Literal["auto"] | None = "auto",
        held_samples: int = 256,
        cooldown_steps: int = 0,
        max_window_extensions: int = 10,
        stop_step: int | None = None,
        stop_epoch: int | None = None,
        stop_fraction: float | None = 0.6,
        patience: int | None = 3,
        gain_threshold: float = 0.001,
        false_growth_rate: float | None = None,
        significance_margin: float | None = 1.0,
        confirm_margin: float | None = 0.5,
        negative_amplitudes: bool = False,
        max_neurons_per_event: int | None = None,
        max_width: int | dict[str, int] | None = None,
        max_parameters: int | None = None,
        min_loss_decrease: float = 1e-3,
        amplitude_range: tuple[float, float] = (2.0**-12, 64.0),
        preactivation_rms: float | None = 1.0,
        loss_fn: LossFn | None = None,
        loss_reduction: Literal["mean", "sum"] = "mean",
        seed: int = 0,
        verbose: bool = True,
        wandb_tables: bool = True,
        target: dict[str, int] | float | None = None,
        target_parameters: int | None = None,
        target_by: int | float = 0.5,
        monitor: str | None = None,
        monitor_mode: Literal["min", "max"] = "min",
        monitor_patience: int = 3,
    ) -> None:
        check_arguments(locals())
        self._init_modes(
            target, target_parameters, target_by, monitor, monitor_mode, monitor_patience
        )
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
            preactivation_rms=preactivation_rms,
            seed=seed,
            confirm_margin=confirm_margin,
            negative_amplitudes=negative_amplitudes,
            solver_options={}
            if significance_margin is None
            else {"significance_margin": significance_margin},
        )
        fixed = significance_margin is not None or false_growth_rate is None
        self.spending = None if fixed else AlphaSpending(false_growth_rate)
        self.reporter = GrowthReporter(verbose=verbose, wandb_tables=wandb_tables)
        self.verbose = verbose
        self.budget = BudgetKeeper(compute_budget, memory_budget)
        self.plan: StatisticsPlan | None = None
        self._growing: list[GrowablePair] = []
        self._group = 0
        self._accumulate = 1

        self.pairs: list[GrowablePair] = []
        self.network: nn.Module | None = None
        self.history: list[GrowthEvent] = []
        self.initial_widths: dict[str, int] = {}
        self.timings: dict[str, float] = zero_timings()
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
            check_fit(trainer, pl_module, self.loss_fn is not None)
            check_spawned_parent_can_reload(trainer, pl_module)
            settle_gloo_at_exit()
        # Grown checkpoints hold larger tensors than a freshly built model: resize on load.
        enable_resize_on_load(pl_module)
        if stage != "fit":
            return
        check_network(pl_module, self.network_name)
        self.network, self.pairs = discover_pairs(pl_module, self.network_name, self.pairs_spec)
        check_max_width_keys(self.config.max_width, [pair.name for pair in self.pairs])
        check_max_width_keys(self.target and self.target.spec, list(self.widths), "target")
        if not self.initial_widths:
            self.initial_widths = {pair.name: pair.width for pair in self.pairs}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._kept_in_flight = None
        device = self.pairs[0].first.weight.device
        self._growing = self.budget.admit(self.pairs, device, warn=trainer.is_global_zero)
        if not self._growing and trainer.is_global_zero:
            rank_zero_warn("GrowthCallback: no pair fits the memory budget; nothing will grow.")
        self._statistics = {pair.name: self._new_statistics(pair) for pair in self._growing}
        self._extensions = {pair.name: 0 for pair in self._growing}
        self.schedule = None
        if self._pending_state is None:
            self.plan = None
        self.budget.start(self._growing)
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
        if not self._growing:
            return
        if self.schedule is None:
            if self._pending_state is not None and "plan" in self._pending_state:
                self.plan = StatisticsPlan.from_dict(self._pending_state["plan"])
                self.budget.load_state_dict(self._pending_state["budget"])
            self.schedule = self._build_schedule(trainer, batch)
        elif self.plan is None:
            self._plan_statistics(trainer)  # the first batch was timed: plan, then flush it
        phase = self.schedule.advance(trainer.global_step)
        self.budget.batch_started(collecting=phase is Phase.COLLECT)
        if phase is Phase.COLLECT:
            scale = gradient_scale(trainer)
            for name in self._serving():
                statistics = self._statistics[name]
                statistics.gradient_scale = scale
                if not statistics.is_open:
                    statistics.open(defer=self.plan is None)
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
        if should_accumulate(trainer) or self.schedule is None:
            return
        if self.schedule.ready_to_decide(trainer.global_step):
            self._decide(trainer, pl_module)

    def _decide(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.schedule is not None
        started = time.perf_counter()
        statistics = [self._statistics[name] for name in self._serving()]
        if trainer.world_size > 1:
            reduce_statistics(statistics, lambda t: trainer.strategy.reduce(t, reduce_op="sum"))
        hook_seconds = 0.0
        for s in statistics:
            hook_seconds += s.elapsed_seconds
            s.elapsed_seconds = 0.0
        statistics_seconds = time.perf_counter() - started + hook_seconds

        if self.spending is not None:  # every rank: the account follows broadcast events
            margin = self.spending.margin(len(self._serving()))
            self.config.solver_options["significance_margin"] = margin
        payload: DecisionPayload | None = None
        failure: Exception | None = None
        solved = None
        if trainer.world_size > 1 and self.spread_solves:
            serving = self._serving()
            solved = solve_spread(
                [pair for pair in self._growing if pair.name in serving],
                LazyMoments({name: self._statistics[name] for name in serving}),
                self.config,
                decision_index=self.schedule.decisions,
                rank=trainer.global_rank,
                world_size=trainer.world_size,
                broadcast=lambda obj, src: trainer.strategy.broadcast(obj, src=src),
            )
        if trainer.is_global_zero:
            try:
                payload = self._plan(trainer, pl_module, statistics_seconds, solved)
                replanned = self.budget.recalibrate(
                    self.plan, self._group, hook_seconds, self._growing[0].first.weight.device
                )
                payload.plan = None if replanned is None else replanned.to_dict()
                # The decision so far is charged now (the pause goes out with the broadcast);
                # surgery and reporting are charged after them.
                self.budget.decided(time.perf_counter() - started)
                charged = time.perf_counter()
                subsampled = self.plan.subsampled(self._serving())
                payload.wait = self.budget.pacing_wait(trainer.accumulate_grad_batches, subsampled)
                self.budget.warn_if_paced_out(
                    trainer.global_step, payload.wait, self.schedule.stop_step
                )
            except Exception as error:
                # Every rank waits in the broadcast below: send the failure, raise everywhere.
                payload = DecisionPayload(error=f"{type(error).__name__}: {error}")
                failure = error
        payload = trainer.strategy.broadcast(payload, src=0)
        if payload.error is not None:
            if failure is not None:
                raise failure
            raise RuntimeError(f"GrowthCallback decision failed on rank 0: {payload.error}")

        geometries = {pair.name: pair.geometry() for pair in self.pairs}
        started = time.perf_counter()
        apply_growth(trainer, self.pairs, payload.growth)
        surgery_seconds = time.perf_counter() - started

        events = [GrowthEvent.from_dict(record) for record in payload.events]
        total = self.total_parameters  # counted after surgery: exact when neighbours both grew
        for event in events:
            event.total_parameters = total
            event.timings[TimingPhase.SURGERY.value] = surgery_seconds / max(len(events), 1)
            for phase, seconds in event.timings.items():
                self.timings[phase] += seconds
        self.history.extend(events)
        if self.spending is not None:
            self.spending.record(grew=any(event.accepted for event in events))
        extending = self._next_windows(trainer, geometries, events)
        self._held = []
        if payload.plan is not None:
            self._follow_plan(StatisticsPlan.from_dict(payload.plan))
        self._next_group()
        self.schedule.decided(
            trainer.global_step,
            any_significant=payload.any_significant,
            count_idle=not extending,
            wait=payload.wait,
        )
        self._stop_if_done(trainer)
        self.reporter.on_decision(trainer, events, self.widths, self.total_parameters)
        if trainer.is_global_zero:
            self.budget.decided(time.perf_counter() - charged)

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
