"""The benchmark harness cannot rot: every section runs at toy size, and its building blocks hold.

The full suite is run by hand (``make bench``); here each section runs with one seed, one epoch
and tiny teacher–student data, and the pieces whose correctness the report relies on are checked
against independent computations.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

# ``benchmarks`` is a top-level folder, not part of the installed package: make it importable
# when pytest is started as ``pytest`` rather than ``python -m pytest`` from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.__main__ import SECTIONS, main
from benchmarks.common import paired_comparison, seed_everything
from benchmarks.digits import build_mlp, load_digits_split, train_plain
from benchmarks.lightning_runs import classifier_module, fit_with_trainer, make_loader
from benchmarks.pair_math import moments_from_samples, pair_samples


def test_plain_loop_trains_exactly_like_the_trainer() -> None:
    """Fixed baselines use the plain loop: it must give the Trainer's weights, step for step."""
    split = load_digits_split()
    inputs, labels = split.train_inputs[:300], split.train_labels[:300]
    seed_everything(3)
    plain = build_mlp((8, 8))
    initial = {name: tensor.clone() for name, tensor in plain.state_dict().items()}
    train_plain(plain, inputs, labels, seed=3, epochs=2, batch_size=64, learning_rate=1e-3)
    seed_everything(3)
    trained = build_mlp((8, 8))
    module = classifier_module(1e-3)(trained)
    fit_with_trainer(module, make_loader(inputs, labels, batch_size=64, seed=3), epochs=2)
    torch.testing.assert_close(plain.state_dict(), trained.state_dict(), rtol=1e-5, atol=1e-6)
    # Both really trained (a loop that silently did nothing would also "agree").
    assert not torch.allclose(initial["fc1.weight"], plain.fc1.weight, atol=1e-3)


def test_protocol_split_is_the_data_modules_split() -> None:
    """Benchmark numbers are comparable with the package's DigitsDataModule (same 400 images)."""
    from lightning_grow.data import DigitsDataModule

    split = load_digits_split()
    data = DigitsDataModule()
    data.setup("fit")
    assert data.test_set is not None and data.train_set is not None
    torch.testing.assert_close(data.test_set.tensors[0], split.test_inputs)
    torch.testing.assert_close(data.test_set.tensors[1], split.test_labels)
    torch.testing.assert_close(data.train_set.tensors[0], split.train_inputs)
    assert split.test_inputs.shape == (400, 64) and split.train_inputs.shape == (1397, 64)
    assert torch.bincount(split.test_labels).min() >= 39  # stratified: ~40 per class


def test_pair_moments_match_per_sample_autograd() -> None:
    """v_i = -∂ℓ_i/∂z2 sample by sample, and the moments are plain averages of outer products."""
    torch.manual_seed(0)
    first, second = torch.nn.Linear(5, 3), torch.nn.Linear(3, 4)
    inputs, labels = torch.randn(7, 5), torch.randint(0, 4, (7,))
    samples = pair_samples(first, torch.nn.Tanh(), second, inputs, labels)
    moments = moments_from_samples(samples)
    n = len(inputs)
    S, M = torch.zeros(4, 4, dtype=torch.float64), torch.zeros(4, 4, dtype=torch.float64)
    Mx = torch.zeros(6, 4, dtype=torch.float64)
    Mx_noise = torch.zeros(6, 4, dtype=torch.float64)
    for i in range(n):
        x = torch.cat([inputs[i].double(), torch.ones(1, dtype=torch.float64)])
        h = torch.tanh(first.weight.double() @ x[:5] + first.bias.double())
        z2 = (second.weight.double() @ h + second.bias.double()).requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(z2[None], labels[i : i + 1]), z2)
        h1 = torch.cat([h, torch.ones(1, dtype=torch.float64)])
        S += torch.outer(h1, h1) / n
        M += torch.outer(-grad, h1) / n
        Mx += torch.outer(x, -grad) / n
        Mx_noise += (1.0 if i % 2 == 0 else -1.0) * torch.outer(x, -grad) / n
    torch.testing.assert_close(moments.S, S)
    torch.testing.assert_close(moments.M, M)
    torch.testing.assert_close(moments.Mx, Mx)
    torch.testing.assert_close(moments.Mx_noise, Mx_noise)
    assert moments.n == n


def test_paired_comparison_sign_test_matches_enumeration() -> None:
    """The sign-test p equals the share of all 2^n coin-flip outcomes with at least as many wins."""
    better = [0.10, 0.20, 0.15, 0.30, 0.12, 0.18, 0.25]
    worse = [0.12, 0.19, 0.20, 0.35, 0.11, 0.30, 0.26]
    wins = sum(w > b for b, w in zip(better, worse))
    outcomes = list(itertools.product((0, 1), repeat=len(better)))
    expected_p = sum(sum(outcome) >= wins for outcome in outcomes) / len(outcomes)
    differences = torch.tensor(worse, dtype=torch.float64) - torch.tensor(better)
    text = paired_comparison(better, worse)
    assert text.startswith(f"{differences.mean():.3f} ± {differences.std():.3f}")
    assert f"s.e. {differences.std() / math.sqrt(len(better)):.3f}" in text
    assert f"{wins} of {len(better)} seeds" in text
    assert text.endswith(f"p = {expected_p:.2g}")


def test_every_section_runs_at_toy_size(tmp_path) -> None:
    """``python -m benchmarks`` end to end: every section, one seed, one epoch."""
    output = tmp_path / "RESULTS.md"
    main(
        [
            "--seeds",
            "1",
            "--epochs",
            "1",
            "--student-epochs",
            "1",
            "--teacher-samples",
            "256",
            "--statistics-bench",
            "linear",
            "--sections",
            ",".join(SECTIONS),
            "--output",
            str(output),
        ]
    )
    text = output.read_text()
    titles = ("1. Quality", "2. Side by side with GroMo", "3. Cost", "4. Teacher", "5. First", "6.")
    for title in titles:
        assert f"## {title}" in text
    assert "| linear 512-512-512, batch 256 |" in text  # bench_statistics ran and was tabulated
    for figure in (
        "quality_accuracy_vs_parameters.png",
        "quality_widths.png",
        "teacher_student.png",
        "fidelity.png",
    ):
        assert (tmp_path / figure).stat().st_size > 1000
        assert f"({figure})" in text
    raw = json.loads((tmp_path / "results.json").read_text())
    names = {run["name"] for run in raw["runs"]}
    assert {"grown tiny", "grown random", "fixed h=8", "student grown tiny"} <= names
    for run in raw["runs"]:
        assert all(math.isfinite(value) for value in run["metrics"].values()), run["name"]
        assert run["parameters"] > 0 and run["fit_seconds"] > 0


def test_pacing_rows_compare_a_grown_run_with_its_final_architecture() -> None:
    from benchmarks.pacing import overhead_row

    row = overhead_row(0.05, range(1), epochs=2)
    assert row["budget"] == 0.05
    assert len(row["overhead_percent"]) == len(row["widths"]) == len(row["accuracy"]) == 1
    assert 0.0 <= row["accuracy"][0] <= 1.0 and row["overhead_percent"][0] < 100.0
    assert all(width >= 2 for width in row["widths"][0])  # grown from [2, 2], never shrunk
