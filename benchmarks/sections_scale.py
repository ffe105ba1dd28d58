"""Section 6 of RESULTS.md: growth at scale, from ``python -m benchmarks.scale`` (run separately:
each configuration takes minutes per 100 steps on a CPU, so the suite reports its last run)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.report import Section
from benchmarks.runs import Suite
from benchmarks.scale import RESULTS as SCALE_RESULTS

__all__ = ["scale_section"]

TARGETS = {"resnet18_1_64": (1.10, None), "resnet18_full": (1.15, 1.5)}


def scale_section(suite: Suite, directory: Path) -> Section:
    """Time per step, peak RSS and growth with and without ``GrowthCallback()``."""
    section = Section("6. Growth at scale (CIFAR-shaped ResNet-18)")
    if not SCALE_RESULTS.exists():
        section.add("No `benchmarks/scale_results.json` yet: run `python -m benchmarks.scale`.")
        return section
    results = json.loads(SCALE_RESULTS.read_text())
    section.data = results
    section.add(
        "Protocol (`python -m benchmarks.scale`, "
        "its last run): each network trained without and with `GrowthCallback()` (defaults) "
        "on a learnable synthetic CIFAR-shaped task (smooth random images labelled by a fixed "
        "random teacher CNN), SGD lr 0.05 momentum 0.9, each run in its own process so that "
        "peak RSS is its own. Step times are medians and means over all steps but the first; "
        "callback phases are the callback's own timed statistics, solve, search and surgery."
    )
    rows = []
    for model, entry in results.items():
        plain, grown, args = entry["plain"], entry["grown"], entry["args"]
        time_target, rss_target = TARGETS.get(model, (None, None))
        rows.append(
            [
                model,
                f"{args['batch']} / {args['steps']} / {args['threads']}",
                f"{plain['median_step_s']:.3f} / {grown['median_step_s']:.3f}",
                f"{entry['median_step_ratio']:.3f}",
                f"{entry['mean_step_ratio']:.3f}",
                f"{entry['callback_share']:.1%}",
                f"{plain['peak_rss_mb']:.0f} / {grown['peak_rss_mb']:.0f}",
                f"{entry['rss_ratio']:.2f}",
                f"{grown['decisions']} / {grown['accepted']}",
                " ".join(str(w) for w in grown["widths"].values()),
                "—"
                if time_target is None
                else f"time ≤ {time_target}"
                + ("" if rss_target is None else f", RSS ≤ {rss_target}"),
            ]
        )
    section.table(
        [
            "network",
            "batch / steps / threads",
            "median step s (without / with)",
            "median ×",
            "mean ×",
            "callback phases",
            "peak RSS MB",
            "RSS ×",
            "decisions / accepted",
            "widths",
            "target",
        ],
        rows,
    )
    for model, entry in results.items():
        flops = entry["grown"].get("statistics_gflop_per_step")
        if flops and "training_gflop_per_step" in entry["plain"]:
            training = entry["plain"]["training_gflop_per_step"]
            section.add(
                f"`{model}` FLOPs per training step (torch's flop counter, initial network): "
                f"training {training:.2f} GFLOP; statistics with every sample of every pair "
                f"{flops['every_sample']:.1f} GFLOP ({flops['every_sample'] / training:.1f}× "
                f"training), as planned {flops['planned']:.2f} GFLOP "
                f"({flops['planned'] / training:.3f}× training)."
            )
        timings = ", ".join(f"{k} {v:.1f} s" for k, v in entry["grown"]["timings"].items())
        section.add(f"`{model}` callback phases: {timings}. Statistics plan:")
        section.add("```\n" + entry["grown"].get("plan", "") + "\n```")
    return section
