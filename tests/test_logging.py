"""GrowthReporter: the same growth metrics reach CSV and W&B, W&B extras, console, rank 0 only.

Real Lightning Trainers on CPU fit a tiny regression while a test-only callback feeds scripted
GrowthEvents to the reporter. Expected values are written out by hand from the script.
"""

from __future__ import annotations

import csv
import json
import pickle
import re
import struct
import sys
import time
import types
import warnings
from io import StringIO
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_grow.callback._lightning import settle_gloo_at_exit
from lightning_grow.reporting.console import architecture_rows, print_architecture
from lightning_grow.reporting.events import GrowthEvent
from lightning_grow.reporting.loggers import GrowthReporter, PairMetricNames, event_table_columns

# Tensors crossing into spawned processes fail with the default strategy on this kind of machine.
torch.multiprocessing.set_sharing_strategy("file_system")

CONV = "layer1.0.conv1 -> layer1.0.conv2"
FC = "fc1 -> fc2"
INITIAL_WIDTHS = {CONV: 4, FC: 8}
PARAMETERS_PER_PAIR = {CONV: 300, FC: 500}


def _event(step: int, pair: str, before: int, after: int, gain: float, total: int) -> GrowthEvent:
    accepted = after > before
    return GrowthEvent(
        step=step,
        epoch=0,
        pair=pair,
        accepted=accepted,
        reason="grown" if accepted else "below gain threshold",
        neurons_added=after - before,
        width_before=before,
        width_after=after,
        expressivity_gain=gain,
        bottleneck_fraction=0.5 if pair == CONV else 0.25,
        num_significant=after - before,
        amplitude=0.125 if accepted else 0.0,
        loss_before=1.5,
        loss_after=1.25 if accepted else 1.5,
        total_parameters=total,
        method="tiny",
        timings={"statistics": 0.5, "solve": 0.25, "search": 1.0 if accepted else 0.0,
                 "surgery": 0.125 if accepted else 0.0},
    )  # fmt: skip


# step -> (events, widths after, total parameters after)
SCRIPT = {
    2: (
        [_event(2, CONV, 4, 6, 0.3, 1100), _event(2, FC, 8, 8, 0.01, 1100)],
        {CONV: 6, FC: 8},
        1100,
    ),
    5: (
        [_event(5, CONV, 6, 6, 0.02, 1250), _event(5, FC, 8, 11, 0.4, 1250)],
        {CONV: 6, FC: 11},
        1250,
    ),
}
ALL_EVENTS = [event for events, _, _ in SCRIPT.values() for event in events]

# Metrics expected at each logged step, written out by hand from SCRIPT.
EXPECTED = {
    0: {"growth/width/layer1.0.conv1": 4, "growth/width/fc1": 8,
        "growth/total_parameters": 1000, "growth/decisions": 0,
        "growth/accepted_events": 0, "growth/neurons_added": 0,
        "growth/time/statistics": 0.0, "growth/time/search": 0.0},
    2: {"growth/width/layer1.0.conv1": 6, "growth/width/fc1": 8,
        "growth/total_parameters": 1100, "growth/decisions": 1,
        "growth/accepted_events": 1, "growth/neurons_added": 2,
        "growth/gain/layer1.0.conv1": 0.3, "growth/gain/fc1": 0.01,
        "growth/bottleneck/layer1.0.conv1": 0.5, "growth/bottleneck/fc1": 0.25,
        "growth/time/statistics": 1.0, "growth/time/solve": 0.5,
        "growth/time/search": 1.0, "growth/time/surgery": 0.125},
    5: {"growth/width/layer1.0.conv1": 6, "growth/width/fc1": 11,
        "growth/total_parameters": 1250, "growth/decisions": 2,
        "growth/accepted_events": 2, "growth/neurons_added": 5,
        "growth/gain/layer1.0.conv1": 0.02, "growth/gain/fc1": 0.4,
        "growth/time/statistics": 2.0, "growth/time/solve": 1.0,
        "growth/time/search": 2.0, "growth/time/surgery": 0.25},
}  # fmt: skip


class _RankFile:
    """A picklable text stream that appends to ``<folder>/<prefix>_rank<r>.txt``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, text: str) -> int:
        with self.path.open("a") as handle:
            return handle.write(text)

    def flush(self) -> None:
        pass


class _FeedEvents(Callback):
    """Plays SCRIPT through a GrowthReporter, as GrowthCallback would."""

    def __init__(self, reporter: GrowthReporter, console_dir: Path | None = None) -> None:
        self.reporter = reporter
        self.console_dir = console_dir

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.console_dir is not None:
            self.reporter.stream = _RankFile(self.console_dir / f"console_{trainer.global_rank}")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.reporter.on_fit_start(trainer, dict(INITIAL_WIDTHS), 1000)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step in SCRIPT:
            events, widths, total = SCRIPT[trainer.global_step]
            if self.console_dir is not None:
                # Proof that this rank fed the reporter, whatever the reporter prints.
                _RankFile(self.console_dir / f"fed_{trainer.global_rank}").write(
                    f"{trainer.global_step}\n"
                )
            self.reporter.on_decision(trainer, events, widths, total)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _, widths, total = SCRIPT[max(SCRIPT)]
        self.reporter.on_fit_end(trainer, INITIAL_WIDTHS, widths, PARAMETERS_PER_PAIR, total)


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _SettleGlooAtExit(Callback):
    """GrowthCallback's exit guard for 2-rank gloo workers, for runs without GrowthCallback."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        settle_gloo_at_exit()


def _fit(callback: Callback, loggers: list, **trainer_args) -> None:
    x = torch.randn(64, 4)
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)
    settings = {
        "accelerator": "cpu",
        "max_steps": 6,
        "log_every_n_steps": 1,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    callbacks = [callback, _SettleGlooAtExit()]
    trainer = pl.Trainer(logger=loggers, callbacks=callbacks, **{**settings, **trainer_args})
    trainer.fit(_Tiny(), loader)


def _csv_metrics_by_step(path: Path) -> dict[int, dict[str, float]]:
    by_step: dict[int, dict[str, float]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            values = {k: float(v) for k, v in row.items() if k != "step" and v not in ("", None)}
            by_step.setdefault(int(row["step"]), {}).update(values)
    return by_step


def _assert_expected(by_step: dict[int, dict[str, float]]) -> None:
    growth_steps = {step for step, values in by_step.items() if any("growth/" in k for k in values)}
    assert growth_steps == set(EXPECTED)
    for step, expected in EXPECTED.items():
        for key, value in expected.items():
            assert by_step[step][key] == pytest.approx(value), (step, key)


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch) -> Path:
    # WandbLogger(offline=True) rewrites WANDB_MODE; keep every wandb folder inside tmp_path.
    monkeypatch.setenv("WANDB_MODE", "offline")
    # A run re-attached in a ddp_spawn worker takes its folder from WANDB_DIR, not save_dir.
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    for variable in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / variable.lower()))
    return tmp_path


def test_csv_logger_gets_widths_counters_gains_and_console_lines(tmp_path) -> None:
    console = StringIO()
    _fit(_FeedEvents(GrowthReporter(stream=console)), [CSVLogger(tmp_path, name="csv")])
    _assert_expected(_csv_metrics_by_step(tmp_path / "csv" / "version_0" / "metrics.csv"))

    lines = console.getvalue().splitlines()
    event_lines = [line for line in lines if line.startswith("growth step")]
    assert len(event_lines) == 2  # accepted events only
    assert re.search(r"step 2 .*layer1\.0\.conv1 -> layer1\.0\.conv2: width 4 -> 6 \(\+2\)",
                     event_lines[0])  # fmt: skip
    assert re.search(r"step 5 .*fc1 -> fc2: width 8 -> 11 \(\+3\)", event_lines[1])
    # Without rich (not installed here) the final architecture is a plain-text table.
    table = "\n".join(lines[lines.index("Grown architecture") :])
    assert re.search(r"layer1\.0\.conv1 -> layer1\.0\.conv2\s+4\s+6\s+\+2\s+300", table)
    assert re.search(r"fc1 -> fc2\s+8\s+11\s+\+3\s+500", table)
    assert re.search(r"total\s+\+5\s+1,250", table)


def test_verbose_false_silences_console_but_not_loggers(tmp_path) -> None:
    console = StringIO()
    reporter = GrowthReporter(verbose=False, stream=console)
    _fit(_FeedEvents(reporter), [CSVLogger(tmp_path, name="csv")])
    assert console.getvalue() == ""
    _assert_expected(_csv_metrics_by_step(tmp_path / "csv" / "version_0" / "metrics.csv"))


def _wandb_records(run_dir: Path, timeout_s: float = 120.0) -> list:
    """Records of a run's ``.wandb`` file, once its exit record is written.

    wandb's service process writes the file asynchronously: on a loaded machine ``wandb.finish()``
    can return while the file still holds only its 7-byte header.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        records = _parse_wandb_file(next(run_dir.glob("run-*.wandb")).read_bytes())
        done = any(record.WhichOneof("record_type") == "exit" for record in records)
        if done or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def _parse_wandb_file(data: bytes) -> list:
    """Records of a ``.wandb`` file (LevelDB log format: 32 KiB blocks, 7-byte headers)."""
    from wandb.proto import wandb_internal_pb2

    block, position, pending, payloads = 32768, 7, b"", []  # 7: the W&B file header
    while position + 7 <= len(data):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if left < 7 or (kind == 0 and length == 0):
            position += left
            continue
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 1:  # FULL
            payloads.append(chunk)
        elif kind == 2:  # FIRST
            pending = chunk
        elif kind in (3, 4):  # MIDDLE, LAST
            pending += chunk
            if kind == 4:
                payloads.append(pending)
    records = []
    for payload in payloads:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def _item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


def _table_rows(run_dir: Path, key: str) -> tuple[list[str], list[list]]:
    """Columns and rows of every saved increment of table ``growth/<key>``, in order."""
    files = sorted(
        (run_dir / "files" / "media" / "table" / "growth").glob(f"{key}_*.table.json"),
        key=lambda path: int(path.name.removeprefix(f"{key}_").split("_")[0]),
    )
    assert files, f"no {key} table saved"
    tables = [json.loads(path.read_text()) for path in files]
    assert all(table["columns"] == tables[0]["columns"] for table in tables)
    return tables[0]["columns"], [row for table in tables for row in table["data"]]


def test_wandb_offline_table_chart_metrics_and_summary(offline_wandb) -> None:
    import wandb

    logger = WandbLogger(offline=True, save_dir=offline_wandb, project="growth-test")
    _fit(_FeedEvents(GrowthReporter(stream=StringIO())), [logger])
    wandb.finish()
    (run_dir,) = (offline_wandb / "wandb").glob("offline-run-*")

    columns, rows = _table_rows(run_dir, "events")
    assert columns == list(ALL_EVENTS[0].to_dict())
    assert [dict(zip(columns, row)) for row in rows] == [e.to_dict() for e in ALL_EVENTS]

    # The latest width chart holds every pair's width at the start and after each decision.
    chart = sorted((run_dir / "files" / "media" / "table" / "growth").glob("width_chart*.json"))
    latest = max(chart, key=lambda path: int(path.name.split("_")[3]))
    points = {(s, k): v for s, k, v in json.loads(latest.read_text())["data"]}
    assert points == {(0, CONV): 4, (2, CONV): 6, (5, CONV): 6,
                      (0, FC): 8, (2, FC): 8, (5, FC): 11}  # fmt: skip

    records = _wandb_records(run_dir)
    history: dict[int, dict[str, float]] = {}
    summary: dict[str, object] = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            items = {_item_key(i): json.loads(i.value_json) for i in record.history.item}
            if "trainer/global_step" in items:
                step = int(items.pop("trainer/global_step"))
                scalars = {k: v for k, v in items.items() if isinstance(v, int | float)}
                history.setdefault(step, {}).update(scalars)
        elif record.WhichOneof("record_type") == "summary":
            summary.update({_item_key(i): json.loads(i.value_json) for i in record.summary.update})
    _assert_expected(history)
    assert summary["growth/final_architecture"] == {
        CONV: {"initial_width": 4, "final_width": 6, "neurons_added": 2, "parameters": 300},
        FC: {"initial_width": 8, "final_width": 11, "neurons_added": 3, "parameters": 500},
    }
    assert summary["growth/total_parameters"] == 1250


def test_only_rank_zero_logs_and_prints_under_ddp_spawn(offline_wandb) -> None:
    import wandb

    console_dir = offline_wandb / "console"
    console_dir.mkdir()
    loggers = [
        CSVLogger(offline_wandb, name="csv"),
        WandbLogger(offline=True, save_dir=offline_wandb, project="growth-test"),
    ]
    _fit(
        _FeedEvents(GrowthReporter(), console_dir),
        loggers,
        devices=2,
        strategy="ddp_spawn",
    )
    wandb.finish()

    # Both ranks fed the reporter; only rank 0 wrote to the console.
    for rank in (0, 1):
        assert (console_dir / f"fed_{rank}").read_text().split() == ["2", "5"]
    assert not (console_dir / "console_1").exists()
    printed = (console_dir / "console_0").read_text().splitlines()
    assert sum(line.startswith("growth step") for line in printed) == 2
    assert "Grown architecture" in printed

    # One CSV file and one W&B run, each holding every metric and event exactly once.
    (metrics_file,) = (offline_wandb / "csv").glob("version_*/metrics.csv")
    with metrics_file.open(newline="") as handle:
        width_rows = [r for r in csv.DictReader(handle) if r["growth/width/fc1"] != ""]
    assert [int(r["step"]) for r in width_rows] == [0, 2, 5]
    _assert_expected(_csv_metrics_by_step(metrics_file))
    (run_dir,) = (offline_wandb / "wandb").glob("offline-run-*")
    _, rows = _table_rows(run_dir, "events")
    assert len(rows) == len(ALL_EVENTS)


class _RecordingLogger(SimpleNamespace):
    def log_metrics(self, metrics, step):
        self.logged.append((step, dict(metrics)))


def test_resumed_reporter_continues_counters_from_history() -> None:
    logger = _RecordingLogger(logged=[])
    trainer = SimpleNamespace(global_step=7, loggers=[logger], is_global_zero=True)
    reporter = GrowthReporter(verbose=False)
    reporter.on_fit_start(trainer, {CONV: 6, FC: 11}, 1250, history=ALL_EVENTS)
    ((step, metrics),) = logger.logged
    assert step == 7
    for key, value in EXPECTED[5].items():
        if "/gain/" not in key:  # gains belong to decision steps, not to the resumed state
            assert metrics[key] == pytest.approx(value), key
    assert reporter.width_history == [
        (0, {CONV: 4, FC: 8}),
        (2, {CONV: 6, FC: 8}),
        (5, {CONV: 6, FC: 11}),
        (7, {CONV: 6, FC: 11}),
    ]


def test_metric_names_are_logger_safe_unique_and_stable() -> None:
    pairs = [CONV, FC, "fc1 -> fc3", "fc1->fc3", "features.0 -> classifier[1]"]
    names = PairMetricNames(pairs)
    mapping = names.as_dict()
    assert mapping[CONV] == "layer1.0.conv1"
    assert mapping[FC] == "fc1"
    assert len(set(mapping.values())) == len(pairs)
    # MLflow's rule is the strictest of the usual loggers; spaces are excluded on top of it.
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-/]+", name) for name in mapping.values())
    assert names["fc1 -> fc3"] == mapping["fc1 -> fc3"]  # stable on re-lookup


def test_event_table_columns_follow_to_dict_and_append_unknown_phases() -> None:
    event = ALL_EVENTS[0]
    assert event_table_columns() == list(event.to_dict())
    event.timings = {**event.timings, "warmup": 0.1}
    try:
        assert event_table_columns([event])[-1] == "time_warmup"
    finally:
        del event.timings["warmup"]


def test_final_table_uses_rich_when_importable(monkeypatch) -> None:
    # rich is not installed here: a stand-in records what the reporter asks rich to draw.
    drawn: dict[str, list] = {"columns": [], "rows": [], "printed": []}
    rich_table = types.ModuleType("rich.table")
    rich_console = types.ModuleType("rich.console")

    class Table:
        def __init__(self, title=None) -> None:
            drawn["title"] = title

        def add_column(self, header, justify="left") -> None:
            drawn["columns"].append(header)

        def add_row(self, *cells) -> None:
            drawn["rows"].append(cells)

    class Console:
        def __init__(self, file=None) -> None:
            self.file = file

        def print(self, table) -> None:
            drawn["printed"].append((table, self.file))

    rich_table.Table, rich_console.Console = Table, Console
    monkeypatch.setitem(sys.modules, "rich", types.ModuleType("rich"))
    monkeypatch.setitem(sys.modules, "rich.table", rich_table)
    monkeypatch.setitem(sys.modules, "rich.console", rich_console)
    stream = StringIO()
    rows = architecture_rows(INITIAL_WIDTHS, {CONV: 6, FC: 11}, PARAMETERS_PER_PAIR)
    print_architecture(rows, 1250, stream)
    assert drawn["rows"] == [
        (CONV, "4", "6", "+2", "300"),
        (FC, "8", "11", "+3", "500"),
        ("total", "", "", "+5", "1,250"),
    ]
    assert len(drawn["columns"]) == 5
    assert drawn["printed"][0][1] is stream
    assert stream.getvalue() == ""  # rich drew it, not the plain fallback


def test_warns_when_wandb_media_would_land_outside_save_dir(tmp_path) -> None:
    # The situation of a ddp_spawn worker without WANDB_DIR: the run's root is not save_dir.
    attached_run = SimpleNamespace(
        settings=SimpleNamespace(root_dir=str(tmp_path / "elsewhere")),
        define_metric=lambda *args, **kwargs: None,
    )
    logger = WandbLogger(save_dir=tmp_path / "logs", experiment=attached_run)
    trainer = SimpleNamespace(global_step=0, loggers=[logger], is_global_zero=True)
    logger.log_metrics = lambda metrics, step: None
    with pytest.warns(UserWarning, match="WANDB_DIR="):
        GrowthReporter(verbose=False).on_fit_start(trainer, {FC: 8}, 100)

    attached_run.settings.root_dir = str(tmp_path / "logs")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GrowthReporter(verbose=False).on_fit_start(trainer, {FC: 8}, 100)


def test_reporter_pickles_for_spawned_workers_with_standard_streams() -> None:
    reporter = GrowthReporter(stream=sys.stderr)
    reporter.neurons_added = 7
    clone = pickle.loads(pickle.dumps(reporter))
    assert clone.stream is sys.stderr
    assert clone.neurons_added == 7
    assert pickle.loads(pickle.dumps(GrowthReporter())).stream is None


def test_default_console_is_stdout_alongside_the_progress_bar(tmp_path, capsys) -> None:
    _fit(_FeedEvents(GrowthReporter()), [CSVLogger(tmp_path)], enable_progress_bar=True)
    printed = capsys.readouterr().out
    event_lines = [line for line in printed.splitlines() if "growth step" in line]
    assert len(event_lines) == 2
    assert "Grown architecture" in printed
