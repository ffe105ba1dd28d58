"""The command line and the shipped configs: parsing, short end-to-end runs, resuming."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import wandb
import yaml

from lightning_grow.cli import NUM_THREADS_ENV, main
from lightning_grow.models import MLP, ClassifierModule

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
CONFIG_NAMES = [
    "digits_mlp",
    "digits_cnn",
    "cifar10_resnet18",
    "cifar100_resnet18",
    "cifar10_resnet18_ddp",
]
CSV_ONLY = json.dumps(
    [{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "outputs"}}]
)


def config(name: str) -> str:
    return str(CONFIG_DIR / f"{name}.yaml")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in tmp_path, so the configs' relative outputs/ and data/ land there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lightning_grow"])
    monkeypatch.delenv(NUM_THREADS_ENV, raising=False)
    yield tmp_path
    if wandb.run is not None:
        wandb.finish()
    # The wandb service process keeps the working directory it started in, and the configs'
    # save_dir is relative: restart it for the next test's directory.
    wandb.teardown()
    torch.set_num_threads(1)


def read_metrics(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def logged_values(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(row[key]) for row in rows if row.get(key)]


def summary_rows(printed: str) -> tuple[str, dict[str, str]]:
    """The summary's title and its rows (label -> text) from captured standard output."""
    lines = printed.splitlines()
    (start,) = [i for i, line in enumerate(lines) if line.startswith("Summary after ")]
    rows = {}
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        label, text = re.split(r"\s{2,}", line.strip(), maxsplit=1)
        rows[label] = text
    return lines[start], rows


def metric_cells(text: str) -> dict[str, float]:
    """``"acc 0.9275  loss 0.2376"`` -> ``{"acc": 0.9275, "loss": 0.2376}``."""
    return {name: float(value) for name, value in re.findall(r"(\w+) (-?\d+\.\d+)", text)}


SHIPPED_CONFIGS = sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))


def test_every_documented_config_is_shipped():
    assert set(CONFIG_NAMES) <= set(SHIPPED_CONFIGS)


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_config_parses_with_print_config(name, workdir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", config(name), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    callbacks = [callback["class_path"] for callback in printed["trainer"]["callbacks"]]
    assert any(path.endswith("GrowthCallback") for path in callbacks)
    assert printed["model"]["backbone"]["class_path"].startswith("lightning_grow.models.")
    assert printed["data"]["class_path"].startswith("lightning_grow.data.")
    model, trainer, data = printed["model"], printed["trainer"], printed["data"]["init_args"]
    if name in ("digits_mlp", "digits_cnn"):
        assert trainer["accelerator"] == "cpu" and printed["num_threads"] == 1
        loggers = {lg["class_path"].rsplit(".", 1)[1]: lg["init_args"] for lg in trainer["logger"]}
        assert loggers["WandbLogger"]["offline"] is True
        assert loggers["CSVLogger"]["save_dir"] == loggers["WandbLogger"]["save_dir"] == "outputs"
        assert trainer["enable_checkpointing"] is False
        assert model["optimizer"]["class_path"].endswith("Adam")
    progress = [c for c in printed["trainer"]["callbacks"] if c["class_path"].endswith("Progress")]
    assert [c["class_path"] for c in progress] == ["lightning_grow.progress.EpochProgress"]
    if name.startswith("cifar"):
        # Long runs: Lightning's bar on a terminal plus a line per epoch for log files.
        assert trainer["enable_progress_bar"] is True
        assert progress[0]["init_args"]["every_n_epochs"] == 1
    if name == "digits_mlp":
        assert printed["summary_test"] is True and printed["growth_plot"] is True
        assert model["backbone"]["init_args"]["hidden"] == [2, 2]
        assert model["optimizer"]["init_args"]["lr"] == 1e-3
        assert data["batch_size"] == 64 and trainer["max_epochs"] == 60
    if name == "digits_cnn":
        assert model["backbone"]["init_args"]["batch_norm"] is True
        assert data["flatten"] is False
    if name in ("cifar10_resnet18", "cifar100_resnet18", "cifar10_resnet18_ddp"):
        optimizer = model["optimizer"]["init_args"]
        assert model["optimizer"]["class_path"].endswith("SGD")
        assert (optimizer["lr"], optimizer["momentum"], optimizer["weight_decay"]) == (
            0.1,
            0.9,
            5e-4,
        )
        assert optimizer["nesterov"] is True
        assert model["lr_scheduler"]["class_path"].endswith("CosineAnnealingLR")
        assert model["lr_scheduler"]["init_args"]["T_max"] == trainer["max_epochs"]
        assert model["backbone"]["init_args"]["width_factor"] == 1 / 64
        assert data["batch_size"] == 128 and data["augment"] is True
        classes = 100 if "cifar100" in name else 10
        assert model["num_classes"] == model["backbone"]["init_args"]["num_classes"] == classes
    if name == "cifar10_resnet18_ddp":
        assert (trainer["accelerator"], trainer["devices"], trainer["strategy"]) == (
            "gpu",
            -1,
            "ddp",
        )
        assert trainer["precision"] == "bf16-mixed" and trainer["sync_batchnorm"] is False
        (logger,) = trainer["logger"]
        assert logger["class_path"].endswith("WandbLogger")
        assert logger["init_args"]["project"] == "lightning-grow"
        assert not logger["init_args"].get("offline")


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn"])
def test_digits_configs_run_end_to_end(name, workdir, capsys):
    steps = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "5"]
    cli = main(["fit", "--config", config(name), *steps, "--trainer.log_every_n_steps", "1"])
    assert cli.trainer.global_step == 5
    rows = read_metrics(workdir / "outputs" / name / "version_0" / "metrics.csv")
    losses = logged_values(rows, "train/loss")
    assert len(losses) == 5 and all(math.isfinite(loss) for loss in losses)
    (val_acc,) = logged_values(rows, "val/acc")
    assert 0.0 <= val_acc <= 1.0
    (wandb_run,) = (workdir / "outputs" / "wandb").glob("offline-run-*")
    assert not list(workdir.rglob("*.ckpt"))  # no checkpointing noise

    title, summary = summary_rows(capsys.readouterr().out)
    assert title == "Summary after 1 epoch (5 steps)"
    assert metric_cells(summary["validation"])["acc"] == pytest.approx(val_acc, abs=5e-5)
    # Only the demo asks for a test pass.
    assert ("test" in summary) is (name == "digits_mlp")
    assert summary["W&B run"].startswith(str(Path("outputs") / "wandb" / wandb_run.name))
    assert summary["CSV log"] == str(Path("outputs") / name / "version_0" / "metrics.csv")
    # Five steps may end before the first growth decision: then the plot is explained away.
    plot = summary["growth plot"]
    assert plot == "none (no growth decision yet)" or (workdir / plot).is_file()


def test_fit_summary_agrees_with_the_csv_log_and_the_checkpoint(workdir, capsys):
    """The demo config for three epochs: every number of the summary is checked against the CSV
    log, the saved checkpoint, or a model built independently, never against the CLI's state."""
    args = ["fit", "--config", config("digits_mlp"), "--trainer.logger", CSV_ONLY]
    args += ["--trainer.max_epochs", "3", "--trainer.enable_checkpointing", "true"]
    started = time.perf_counter()
    main(args)
    wall = time.perf_counter() - started
    printed = capsys.readouterr().out
    title, summary = summary_rows(printed)

    folder = Path("outputs") / "lightning_logs" / "version_0"
    assert summary["CSV log"] == str(folder / "metrics.csv")
    rows = read_metrics(workdir / folder / "metrics.csv")
    (checkpoint_path,) = (workdir / folder / "checkpoints").glob("*.ckpt")
    assert summary["checkpoint"] == str(checkpoint_path.relative_to(workdir))
    checkpoint = torch.load(checkpoint_path, weights_only=True)

    # Epochs and steps: the checkpoint was written at the end of the last epoch.
    assert title == f"Summary after 3 epochs ({checkpoint['global_step']:,} steps)"
    assert checkpoint["epoch"] == 2

    # Validation: the last val row of the log; test: the row the extra test pass logged.
    val_rows = [row for row in rows if row.get("val/acc")]
    expected_val = {"acc": float(val_rows[-1]["val/acc"]), "loss": float(val_rows[-1]["val/loss"])}
    assert metric_cells(summary["validation"]) == pytest.approx(expected_val, abs=5e-5)
    (test_row,) = [row for row in rows if row.get("test/acc")]
    expected_test = {"acc": float(test_row["test/acc"]), "loss": float(test_row["test/loss"])}
    assert metric_cells(summary["test"]) == pytest.approx(expected_test, abs=5e-5)
    # val_size 0: validation and test read the same 400 images, with the same final weights.
    assert summary["test"].endswith("(same images as validation)")
    assert expected_test == pytest.approx(expected_val, abs=1e-6)

    # Parameters: at the start, a freshly built 64-2-2-10 MLP; at the end, the checkpoint.
    backbone = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("backbone.")}
    start = sum(p.numel() for p in MLP(in_features=64, hidden=(2, 2), num_classes=10).parameters())
    end = sum(tensor.numel() for tensor in backbone.values())
    logged_totals = logged_values(rows, "growth/total_parameters")
    assert (logged_totals[0], logged_totals[-1]) == (start, end)
    assert end > start  # three epochs of the demo do grow
    added = backbone["backbone.fc1.weight"].shape[0] + backbone["backbone.fc2.weight"].shape[0] - 4
    events = int(logged_values(rows, "growth/accepted_events")[-1])
    assert summary["parameters"] == (
        f"{start:,} -> {end:,} ({end / start:.1f}x), {added:+,} neurons in {events} growth events"
    )

    # Time: the phases are the callback's cumulative timings, which it also logs.
    phases = {
        phase: float(seconds)
        for phase, seconds in re.findall(r"(\w+) (\d+\.\d+) s", summary["growth time"])
    }
    assert set(phases) == {"statistics", "solve", "search", "surgery"}
    for phase, seconds in phases.items():
        assert seconds == pytest.approx(logged_values(rows, f"growth/time/{phase}")[-1], abs=5e-3)
    fit, training, growth = (
        float(value) for value in re.findall(r"(\d+\.\d+) s", summary["time"])[:3]
    )
    assert growth == pytest.approx(sum(phases.values()), abs=0.06)
    assert fit == pytest.approx(training + growth, abs=0.11)
    assert 0 < growth < fit < wall

    # The plot sits next to the log and is a PNG.
    plot = workdir / summary["growth plot"]
    assert plot.parent == workdir / folder and plot.name == "growth.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The config's EpochProgress prints the last epoch (3 is not a multiple of 10) with the
    # same validation numbers.
    (epoch_line,) = [line for line in printed.splitlines() if line.startswith("epoch ")]
    assert epoch_line.startswith(f"epoch 3/3 | step {checkpoint['global_step']:,} | ")
    assert f"val/acc {expected_val['acc']:.4f}" in epoch_line
    assert f"| {end:,} params |" in epoch_line


def _synthetic_cifar_args(name: str) -> list[str]:
    args = [
        "fit",
        "--config",
        config(name),
        "--data.synthetic",
        "true",
        "--data.synthetic_size",
        "16",
        "--data.batch_size",
        "8",
        "--data.num_workers",
        "0",
        "--trainer.max_steps",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.accelerator",
        "cpu",
        "--num_threads",
        "1",
    ]
    if name.endswith("ddp"):
        args += ["--trainer.devices", "1", "--trainer.strategy", "auto"]
        args += ["--trainer.precision", "32-true", "--trainer.logger", CSV_ONLY]
    return args


@pytest.mark.parametrize("name", ["cifar10_resnet18", "cifar100_resnet18", "cifar10_resnet18_ddp"])
def test_cifar_configs_run_a_few_synthetic_steps_on_cpu(name, workdir):
    cli = main(_synthetic_cifar_args(name))
    assert cli.trainer.global_step == 2
    assert cli.model.backbone.fc.out_features == (100 if "cifar100" in name else 10)
    assert list(workdir.rglob("last.ckpt"))
    assert not (workdir / "data").exists()  # synthetic: nothing downloaded or looked up


def test_fit_resumes_from_a_checkpoint_and_test_reads_it(workdir):
    common = ["--config", config("digits_mlp"), "--trainer.logger", CSV_ONLY]
    common += ["--trainer.enable_checkpointing", "true"]
    common += ["--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1"]
    first = main(["fit", *common, "--trainer.max_epochs", "1"])
    assert first.trainer.global_step == 3
    (checkpoint,) = (workdir / "outputs" / "lightning_logs" / "version_0").rglob("*.ckpt")

    resume = ["--ckpt_path", str(checkpoint), "--trainer.log_every_n_steps", "1"]
    resumed = main(["fit", *common, *resume, "--trainer.max_epochs", "2"])
    assert resumed.trainer.global_step == 6
    rows = read_metrics(workdir / "outputs" / "lightning_logs" / "version_1" / "metrics.csv")
    train_epochs = {row["epoch"] for row in rows if row.get("train/loss")}
    assert train_epochs == {"1"}  # epoch 0 came from the checkpoint, not from retraining

    # The CLI-written hyperparameters rebuild the model without the CLI.
    loaded = ClassifierModule.load_from_checkpoint(checkpoint)
    assert isinstance(loaded.backbone, MLP)
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert loaded.state_dict().keys() == saved.keys()
    for key, tensor in saved.items():
        torch.testing.assert_close(loaded.state_dict()[key], tensor, msg=key)

    tested = main(["test", *common, "--ckpt_path", str(checkpoint)])
    assert 0.0 <= float(tested.trainer.callback_metrics["test/acc"]) <= 1.0


def test_resumed_fit_summary_reports_its_own_growth(workdir, capsys):
    """After a resume, the summary starts from the checkpoint's network and counts only the
    growth time spent in this fit, though the callback's timings (and the log) are cumulative."""
    # Growth until the end of each fit, so that the first checkpoint is taken mid-growth.
    settings = yaml.safe_load(Path(config("digits_mlp")).read_text())
    (growth,) = [c for c in settings["trainer"]["callbacks"] if "Growth" in c["class_path"]]
    growth["init_args"]["stop_fraction"] = 1.0
    # No time budget: decisions that do not depend on how busy the machine is.
    growth["init_args"]["compute_budget"] = None
    (workdir / "grow_to_the_end.yaml").write_text(yaml.safe_dump(settings))
    common = ["--config", "grow_to_the_end.yaml", "--trainer.logger", CSV_ONLY]
    common += ["--trainer.enable_checkpointing", "true", "--summary_test", "false"]
    main(["fit", *common, "--trainer.max_epochs", "1"])
    first_folder = workdir / "outputs" / "lightning_logs" / "version_0"
    (checkpoint_path,) = first_folder.rglob("*.ckpt")
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    grown = sum(v.numel() for k, v in checkpoint["state_dict"].items() if k.startswith("backbone."))
    capsys.readouterr()

    main(["fit", *common, "--ckpt_path", str(checkpoint_path), "--trainer.max_epochs", "2"])
    _, summary = summary_rows(capsys.readouterr().out)
    assert "test" not in summary
    assert summary["parameters"].startswith(f"{grown:,} -> ")
    first = read_metrics(first_folder / "metrics.csv")
    second = read_metrics(workdir / "outputs" / "lightning_logs" / "version_1" / "metrics.csv")
    for phase, seconds in re.findall(r"(\w+) (\d+\.\d+) s", summary["growth time"]):
        before = logged_values(first, f"growth/time/{phase}")[-1]
        after = logged_values(second, f"growth/time/{phase}")[-1]
        assert after > before or phase == "surgery"  # the resumed fit did grow
        assert float(seconds) == pytest.approx(after - before, abs=5e-3)
    # A resumed CSV log lacks the first fit: the plot comes from the callback's history, which
    # starts at the very first width.
    assert (workdir / summary["growth plot"]).is_file()


def test_num_threads_option_and_environment_variable(workdir, monkeypatch):
    validate = ["validate", "--config", config("digits_mlp"), "--trainer.logger", "false"]
    validate += ["--trainer.limit_val_batches", "1"]
    main([*validate, "--num_threads", "2"])
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    monkeypatch.setenv(NUM_THREADS_ENV, "2")
    main([*validate, "--num_threads", "null"])
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    main(validate)  # the config's num_threads: 1 wins over the environment
    assert torch.get_num_threads() == 1


def test_python_dash_m_entry_point(tmp_path):
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    environment = {**os.environ, "PYTHONPATH": python_path}
    command = [sys.executable, "-m", "lightning_grow", "fit", "--config", config("digits_mlp")]
    result = subprocess.run(
        [*command, "--print_config"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["model"]["backbone"]["class_path"].endswith("MLP")
