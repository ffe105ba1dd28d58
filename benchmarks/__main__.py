"""``python -m benchmarks``: run the suite and write benchmarks/RESULTS.md (+ PNGs, results.json).

Examples
--------
Full suite (issue 9's protocol, ~30–60 min on one thread)::

    python -m benchmarks

Quick pass, two sections::

    python -m benchmarks --seeds 2 --epochs 5 --sections quality,fidelity
"""

from __future__ import annotations

import argparse
import ast
import datetime
import logging
import shlex
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from benchmarks.report import Section, write_results
from benchmarks.runs import Suite, SuiteConfig

SECTIONS: dict[str, str] = {
    "quality": "benchmarks.sections_digits:quality_section",
    "gromo": "benchmarks.sections_digits:gromo_section",
    "cost": "benchmarks.sections_digits:cost_section",
    "teacher": "benchmarks.sections_other:teacher_section",
    "fidelity": "benchmarks.sections_other:fidelity_section",
    "scale": "benchmarks.sections_scale:scale_section",
}


def _section_function(name: str) -> Callable[[Suite, Path], Section]:
    module_name, function_name = SECTIONS[name].split(":")
    module = __import__(module_name, fromlist=[function_name])
    return getattr(module, function_name)


def _option(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    if not key or not value:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seeds", type=int, default=10, help="seeds per configuration (10)")
    parser.add_argument("--epochs", type=int, default=60, help="digits epochs (60)")
    parser.add_argument(
        "--student-epochs",
        type=int,
        default=None,
        help="teacher–student epochs (default: 200, scaled by epochs/60 when --epochs is set)",
    )
    parser.add_argument(
        "--teacher-samples",
        type=int,
        default=4000,
        help="teacher–student training samples (4000); the test set is a quarter of it",
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).resolve().parent / "RESULTS.md",
        help="markdown file to write; PNGs and results.json go next to it",
    )
    parser.add_argument(
        "--statistics-bench",
        choices=("full", "linear"),
        default="full",
        help="bench_statistics pairs: both (full, ~90 s) or the Linear one only (quick)",
    )
    parser.add_argument(
        "--callback-option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra GrowthCallback argument for every grown run (repeatable), e.g. "
        "gain_threshold=0.02; default: none, the library's defaults are measured",
    )
    arguments = parser.parse_args(argv)
    unknown = set(arguments.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {list(SECTIONS)}")
    return arguments


def _quiet_lightning() -> None:
    # One Trainer per run: its banner lines and tips would drown the progress log.
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*validation_step.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*pseudo-inverse.*")


def _code_version() -> str:
    """Commit of the measured code, and which package files differed from it (shared tree)."""
    root = Path(__file__).resolve().parents[1]

    def git(*arguments: str) -> str:
        done = subprocess.run(["git", *arguments], cwd=root, capture_output=True, text=True)
        return done.stdout.rstrip("\n") if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = [line[3:] for line in git("status", "--porcelain", "lightning_grow").splitlines()]
    if not changed:
        return f"commit {commit} (clean `lightning_grow/`)"
    return f"commit {commit} plus uncommitted changes to " + ", ".join(f"`{n}`" for n in changed)


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the selected sections and write the report; return the report's path."""
    arguments = parse_arguments(argv)
    torch.set_num_threads(1)
    _quiet_lightning()
    student_epochs = arguments.student_epochs or max(1, round(200 * arguments.epochs / 60))
    config = SuiteConfig(
        seeds=arguments.seeds,
        epochs=arguments.epochs,
        student_epochs=student_epochs,
        teacher_train=arguments.teacher_samples,
        teacher_test=max(1, arguments.teacher_samples // 4),
        callback_options=dict(arguments.callback_option),
        statistics_arguments=("--threads", "1")
        + (
            ("--only", "linear", "--repeats", "1") if arguments.statistics_bench == "linear" else ()
        ),
    )
    suite = Suite(config)
    version = _code_version()
    output: Path = arguments.output
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sections = []
    for name in arguments.sections.split(","):
        section_started = time.perf_counter()
        section = _section_function(name)(suite, output.parent)
        suite.log(f"section {name} done in {time.perf_counter() - section_started:.0f}s")
        sections.append(section)
    command = "python -m benchmarks " + shlex.join(sys.argv[1:] if argv is None else argv)
    header = [
        f"Generated by `{command}` on {datetime.date.today().isoformat()} in "
        f"{(time.perf_counter() - started) / 60:.1f} min. Every figure is mean ± sample "
        f"standard deviation over {config.seeds} seed(s) unless stated otherwise.",
        f"Code measured: {version} when the run started.",
    ]
    runs = [run.to_dict() for run in suite.runs.values()]
    write_results(output, sections, header, runs)
    suite.log(f"wrote {output}")
    return output


if __name__ == "__main__":
    main()
