"""Every training run of the suite, computed on demand and cached so sections share them.

Section 1 (quality) and section 3 (cost) both need the grown digits MLPs and the fixed runs of
their final architectures; section 2 compares GroMo with the same grown runs. A :class:`Suite`
runs each ``(configuration, seed)`` once and keeps every :class:`RunResult` for ``results.json``.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from benchmarks.common import RunResult, evaluate_classifier
from benchmarks.digits import DigitsProtocol, DigitsSplit, build_mlp, load_digits_split, train_fixed
from benchmarks.lightning_runs import classifier_module, run_lightning

__all__ = ["Suite", "SuiteConfig"]


@dataclass(frozen=True)
class SuiteConfig:
    """Sizes of a suite run (the defaults are issue 9's protocol).

    Attributes
    ----------
    seeds
        Seeds ``0 … seeds-1`` for every configuration.
    epochs
        Digits epochs (MLP and CNN).
    student_epochs
        Teacher–student epochs.
    fixed_widths
        Widths ``h`` of the fixed ``64-h-h-10`` baselines.
    start_widths
        Initial widths of grown digits MLPs.
    cnn_start
        Initial channels of the grown digits CNN.
    teacher_train, teacher_test
        Teacher–student sample sizes.
    student_widths
        Widths of the fixed students.
    callback_options
        Extra ``GrowthCallback`` arguments for every grown run (empty: the library's defaults).
    statistics_arguments
        Command line of ``benchmarks.bench_statistics.main`` (the throughput measurement).
    """

    seeds: int = 10
    epochs: int = 60
    student_epochs: int = 200
    fixed_widths: tuple[int, ...] = (8, 16, 32, 64, 128)
    start_widths: tuple[int, int] = (2, 2)
    cnn_start: tuple[int, int] = (2, 2)
    teacher_train: int = 4000
    teacher_test: int = 1000
    student_widths: tuple[int, ...] = (8, 16, 24, 32, 64)
    callback_options: dict[str, Any] = field(default_factory=dict)
    statistics_arguments: tuple[str, ...] = ("--threads", "1")


def _build_cnn(channels: tuple[int, ...]) -> nn.Module:
    from lightning_grow.models import CNN

    return CNN(in_channels=1, channels=channels, num_classes=10, image_size=8)


class Suite:
    """Cached runs of one suite invocation.

    Parameters
    ----------
    config
        Sizes of the run.
    log
        Progress lines go here (``print`` to stderr by default).
    """

    def __init__(self, config: SuiteConfig, log: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.protocol = DigitsProtocol(epochs=config.epochs)
        self.log = log or functools.partial(print, file=sys.stderr, flush=True)
        self.runs: dict[tuple[str, int], RunResult] = {}
        self.notes: list[str] = []
        self._split: DigitsSplit | None = None
        self._teacher: Any = None

    @property
    def seeds(self) -> range:
        """The seeds of every configuration."""
        return range(self.config.seeds)

    @property
    def split(self) -> DigitsSplit:
        """The digits protocol split (loaded once)."""
        if self._split is None:
            self._split = load_digits_split()
        return self._split

    @property
    def teacher(self) -> Any:
        """The teacher–student data (drawn once)."""
        if self._teacher is None:
            from benchmarks.teacher_student import make_teacher_data

            self._teacher = make_teacher_data(self.config.teacher_train, self.config.teacher_test)
        return self._teacher

    def _cached(self, key: str, seed: int, compute: Callable[[], RunResult]) -> RunResult:
        if (key, seed) not in self.runs:
            started = time.perf_counter()
            result = compute()
            result.name = key
            self.runs[(key, seed)] = result
            seconds = time.perf_counter() - started
            self.log(f"[{seconds:6.1f}s] {key} seed={seed}: {_summary(result)}")
        return self.runs[(key, seed)]

    def all(self, key: str) -> list[RunResult]:
        """Every cached run of one configuration, by seed."""
        return [run for (name, _), run in sorted(self.runs.items()) if name == key]

    # ------------------------------------------------------------------ digits MLP
    def digits_fixed(self, width: int, seed: int) -> RunResult:
        """Plain-loop fixed ``64-width-width-10``."""
        return self._cached(
            f"fixed h={width}",
            seed,
            lambda: train_fixed((width, width), seed, self.split, self.protocol),
        )

    def _digits_lightning(
        self,
        name: str,
        seed: int,
        widths: tuple[int, ...],
        callback_options: dict[str, Any] | None = None,
        extra_callbacks: Sequence[Any] = (),
    ) -> RunResult:
        """One digits MLP run through the protocol's Trainer (grown, replayed or fixed)."""
        split = self.split
        return run_lightning(
            name=name,
            seed=seed,
            build_backbone=lambda: build_mlp(widths),
            build_module=classifier_module(self.protocol.learning_rate),
            train=(split.train_inputs, split.train_labels),
            evaluate=lambda net: evaluate_classifier(net, split.test_inputs, split.test_labels),
            epochs=self.protocol.epochs,
            batch_size=self.protocol.batch_size,
            callback_options=callback_options,
            extra_callbacks=extra_callbacks,
        )

    def digits_grown(self, method: str, seed: int) -> RunResult:
        """``GrowthCallback(method=method)`` from ``start_widths`` through a Trainer."""
        options = {"method": method, **self.config.callback_options}
        return self._cached(
            f"grown {method}",
            seed,
            lambda: self._digits_lightning(
                f"grown {method}", seed, self.config.start_widths, callback_options=options
            ),
        )

    def digits_random_replay(self, seed: int) -> RunResult:
        """Random neurons at exactly ``grown tiny``'s steps and counts (same seed)."""
        from benchmarks.replay import ReplayGrowth

        replay = ReplayGrowth(self.digits_grown("tiny", seed).events, seed=seed)
        return self._cached(
            "random, tiny's schedule",
            seed,
            lambda: self._digits_lightning(
                "random replay", seed, self.config.start_widths, extra_callbacks=[replay]
            ),
        )

    def digits_final_fixed(self, seed: int) -> RunResult:
        """The final widths of ``grown tiny`` (same seed) trained fixed by the same Trainer."""
        widths = tuple(self.digits_grown("tiny", seed).widths)
        return self._cached(
            "tiny's final widths, fixed",
            seed,
            lambda: self._digits_lightning("final fixed", seed, widths),
        )

    def gromo(self, seed: int) -> RunResult:
        """GroMo's TINY from ``start_widths`` on the same protocol."""
        from benchmarks.gromo_side import run_gromo_digits

        return self._cached(
            "gromo tiny",
            seed,
            lambda: run_gromo_digits(
                seed, self.split, self.protocol, start=self.config.start_widths
            ),
        )

    # ------------------------------------------------------------------ digits CNN
    def _cnn_run(self, seed: int, channels: tuple[int, ...], grow: bool) -> RunResult:
        split = self.split
        images = split.images(split.train_inputs), split.train_labels
        test_images = split.images(split.test_inputs)
        return run_lightning(
            name="cnn",
            seed=seed,
            build_backbone=lambda: _build_cnn(channels),
            build_module=classifier_module(self.protocol.learning_rate),
            train=images,
            evaluate=lambda net: evaluate_classifier(net, test_images, split.test_labels),
            epochs=self.protocol.epochs,
            batch_size=self.protocol.batch_size,
            callback_options={"method": "tiny", **self.config.callback_options} if grow else None,
        )

    def cnn_grown(self, seed: int) -> RunResult:
        """Digits CNN grown from ``cnn_start`` channels."""
        return self._cached(
            "cnn grown tiny", seed, lambda: self._cnn_run(seed, self.config.cnn_start, True)
        )

    def cnn_final_fixed(self, seed: int) -> RunResult:
        """The grown CNN's final channels trained fixed by the same Trainer."""
        channels = tuple(self.cnn_grown(seed).widths)
        return self._cached(
            "cnn final widths, fixed", seed, lambda: self._cnn_run(seed, channels, False)
        )

    # ------------------------------------------------------------------ teacher–student
    def student_fixed(self, width: int, seed: int) -> RunResult:
        """Fixed student of width ``width``."""
        from benchmarks.teacher_student import run_fixed_student

        return self._cached(
            f"student fixed h={width}",
            seed,
            lambda: run_fixed_student(width, seed, self.teacher, self.config.student_epochs),
        )

    def student_grown(self, seed: int) -> RunResult:
        """Student grown from width 1 with the callback's defaults."""
        from benchmarks.teacher_student import run_grown_student

        return self._cached(
            "student grown tiny",
            seed,
            lambda: run_grown_student(
                seed,
                self.teacher,
                self.config.student_epochs,
                callback_options=self.config.callback_options,
            ),
        )


def _summary(result: RunResult) -> str:
    metrics = ", ".join(f"{name}={value:.4g}" for name, value in result.metrics.items())
    return (
        f"widths={result.widths} params={result.parameters} {metrics} fit={result.fit_seconds:.1f}s"
    )
