"""The GPU check's tiny CPU version runs, so ``make gpu-check`` cannot rot."""

from __future__ import annotations

from benchmarks.gpu_check import main


def test_tiny_gpu_check_reports_accurate_moments_bf16_and_decisions() -> None:
    report = main(["--tiny"])
    assert report["device"] == "cpu"
    errors = report["moment_relative_error"]
    assert set(errors) == {"S", "M", "Sx", "Mx", "P", "v_sq"}
    assert max(errors.values()) < 1e-4  # float32 accumulation against a float64 reference
    assert report["bf16"]["float32"] and report["bf16"]["finite"]
    assert report["bf16"]["samples"] > 0
    resnet = report["resnet18_1_64"]
    assert resnet["decisions"] >= 2
    assert resnet["step_ratio"] > 0
