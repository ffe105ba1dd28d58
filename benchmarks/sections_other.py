"""Sections 4–5 of RESULTS.md: teacher–student right-sizing and first-order fidelity."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from benchmarks.common import format_mean_std, mean_std
from benchmarks.report import Section, new_figure, save_figure
from benchmarks.runs import Suite

__all__ = ["fidelity_section", "teacher_section"]


def teacher_section(suite: Suite, directory: Path) -> Section:
    """Section 4: a student grown from width 1 vs fixed students; final width and test MSE."""
    from benchmarks import teacher_student as ts

    section = Section("4. Teacher–student right-sizing")
    seeds, config = suite.seeds, suite.config
    fixed = {w: [suite.student_fixed(w, seed) for seed in seeds] for w in config.student_widths}
    grown = [suite.student_grown(seed) for seed in seeds]
    section.add(
        f"Teacher 16 → 24 (tanh) → 8, weights N(0, 1/fan_in), zero biases (seed "
        f"{ts.TEACHER_SEED}); inputs N(0, I); {config.teacher_train} train / "
        f"{config.teacher_test} test samples; targets + N(0, {ts.NOISE_STD}²) noise on both "
        'splits (best possible test MSE ≈ 1e-4). Students: `MLP(16, (h,), 8, "tanh")`, Adam '
        f"lr {ts.STUDENT_LR}, batch {ts.STUDENT_BATCH}, `F.mse_loss`, {config.student_epochs} "
        "epochs, same for fixed (plain loop) and grown (Trainer + `GrowthCallback()` defaults, "
        f"from width 1). {len(seeds)} seeds.",
    )
    rows = [
        [
            label,
            format_mean_std([run.widths[0] for run in runs], digits=1),
            format_mean_std([run.metrics["mse"] for run in runs], digits=2, scientific=True),
            format_mean_std([run.parameters for run in runs], digits=0),
        ]
        for label, runs in [
            *((f"fixed h={w}", fixed[w]) for w in config.student_widths),
            ("grown from 1 (tiny)", grown),
        ]
    ]
    section.table(["student", "final width", "test MSE", "parameters"], rows)
    width, _ = mean_std(run.widths[0] for run in grown)
    mse, _ = mean_std(run.metrics["mse"] for run in grown)
    within = sum(run.widths[0] <= 36 and run.metrics["mse"] <= 3e-4 for run in grown)
    section.table(
        ["target", "measured", "met"],
        [
            [
                "final width ≤ 36",
                f"mean {width:.1f}, max {max(run.widths[0] for run in grown)}",
                "yes" if width <= 36 else f"**no** (over by {width - 36:.1f})",
            ],
            [
                "test MSE ≤ 3e-4",
                f"mean {mse:.2e}",
                "yes" if mse <= 3e-4 else f"**no** ({mse / 3e-4:.1f}× the target)",
            ],
            ["seeds meeting both", f"{within} of {len(grown)}", "—"],
        ],
    )
    section.table(
        ["seed", "final width", "test MSE", "accepted growths", "last growth epoch", "reasons"],
        [
            [
                run.seed,
                run.widths[0],
                f"{run.metrics['mse']:.2e}",
                sum(event["accepted"] for event in run.events),
                max((e["epoch"] for e in run.events if e["accepted"]), default="never"),
                ", ".join(
                    f"{reason}: {count}"
                    for reason, count in Counter(e["reason"] for e in run.events).most_common()
                ),
            ]
            for run in grown
        ],
    )
    figure, axes = new_figure()
    widths = list(config.student_widths)
    means = [mean_std(run.metrics["mse"] for run in fixed[w]) for w in widths]
    axes.errorbar(
        widths,
        [m for m, _ in means],
        yerr=[s for _, s in means],
        fmt="o-",
        capsize=3,
        label="fixed students",
    )
    axes.scatter(
        [run.widths[0] for run in grown],
        [run.metrics["mse"] for run in grown],
        color="C3",
        marker="*",
        s=80,
        label="grown from width 1",
        zorder=3,
    )
    axes.axvline(24, color="grey", linestyle=":", label="teacher width")
    axes.set_yscale("log")
    axes.set_xlabel("hidden width")
    axes.set_ylabel("test MSE")
    axes.legend()
    save_figure(figure, directory, "teacher_student.png", section)
    section.data = {"grown_width_mean": width, "grown_mse_mean": mse}
    return section


def fidelity_section(suite: Suite, directory: Path) -> Section:
    """Section 5: measured / predicted first-order decrease on a γ grid, tanh and ReLU."""
    from benchmarks.fidelity import measure_fidelity

    section = Section("5. First-order fidelity")
    results = [
        measure_fidelity(suite.split, activation, epochs=suite.protocol.epochs)
        for activation in ("tanh", "relu")
    ]
    section.add(
        f"MLP 64-16-16-10 trained {suite.protocol.epochs} epochs on digits (seed 0); pair "
        "`fc2 → head`; TINY's 4 leading candidate neurons from `compute_candidates` (library "
        "defaults) on exact moments of the 1397 training samples; α and ω scaled by √γ; loss "
        "measured in float64 on the same samples. *ratio (library)* = measured / "
        "(γ · `first_order_decrease`, i.e. γ σ'(0) Σ α_kᵀ Mx ω_k); *ratio (Σλ²)* = measured / "
        "(γ σ'(0) Σ λ_k², the paper's formula, which leaves out the cross term α_kᵀ P ΔW*ᵀ ω_k "
        "and is therefore off whenever the head is not at a stationary point).",
    )
    header = ["γ"]
    for result in results:
        header += [f"{result.activation}: measured", "ratio (library)", "ratio (Σλ²)"]
    rows = []
    for index, gamma in enumerate(results[0].amplitudes):
        row = [f"{gamma:.2e}"]
        for result in results:
            row += [
                f"{result.measured[index]:.3e}",
                f"{result.ratio_first_order[index]:.4f}",
                f"{result.ratio_lambda[index]:.4f}",
            ]
        rows.append(row)
    section.table(header, rows)
    tanh, relu = results
    section.add(
        f"tanh: the ratio to the library's prediction goes from {tanh.ratio_first_order[0]:.4f} "
        f"at γ = 1 to {tanh.ratio_first_order[-1]:.6f} at γ = {tanh.amplitudes[-1]:.1e}: the "
        "error is O(γ) (tanh(ε) = ε − ε³/3 and the loss's curvature). "
        f"ReLU: the ratio is constant ({relu.ratio_first_order[-1]:.3f}) for every γ, because "
        "relu(√γ a) = √γ relu(a) makes the change exactly linear in γ, with slope "
        "E[vᵀ ω relu(αᵀx)] instead of E[vᵀ ω αᵀx]: the linearisation of σ at 0 that TINY's "
        "prediction relies on does not hold for ReLU (whose kink is at 0), so the prediction "
        "only ranks candidates and the line search must set the amplitude.",
    )
    figure, axes = new_figure()
    for color, result in zip(("C0", "C1"), results):
        axes.plot(
            result.amplitudes,
            result.ratio_first_order,
            "o-",
            color=color,
            label=f"{result.activation}: measured / library prediction",
        )
        axes.plot(
            result.amplitudes,
            result.ratio_lambda,
            "x--",
            color=color,
            label=f"{result.activation}: measured / γσ'(0)Σλ²",
        )
    axes.axhline(1.0, color="grey", linestyle=":")
    axes.set_xscale("log")
    axes.set_xlabel("amplitude γ")
    axes.set_ylabel("measured / predicted loss decrease")
    axes.legend(fontsize=7)
    save_figure(figure, directory, "fidelity.png", section)
    section.data = {result.activation: result.__dict__ for result in results}
    return section
