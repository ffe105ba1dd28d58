"""The command line and the shipped configs: parsing, short end-to-end runs, resuming."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
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
    if name == "digits_mlp":
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
def test_digits_configs_run_end_to_end(name, workdir):
    steps = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "5"]
    cli = main(["fit", "--config", config(name), *steps, "--trainer.log_every_n_steps", "1"])
    assert cli.trainer.global_step == 5
    rows = read_metrics(workdir / "outputs" / name / "version_0" / "metrics.csv")
    losses = logged_values(rows, "train/loss")
    assert len(losses) == 5 and all(math.isfinite(loss) for loss in losses)
    (val_acc,) = logged_values(rows, "val/acc")
    assert 0.0 <= val_acc <= 1.0
    assert list((workdir / "outputs" / "wandb").glob("offline-run-*"))
    assert not list(workdir.rglob("*.ckpt"))  # no checkpointing noise


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
