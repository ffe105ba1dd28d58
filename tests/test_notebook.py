"""The quickstart notebook runs top to bottom in the project's venv and shows a grown network.

The notebook is executed once (module fixture) by nbclient in a kernel pinned to this
interpreter, with its working directory in a temporary folder. Its printed claims (widths,
accuracy, growth events) are then checked against sources the notebook's code does not produce:
the checkpoint's tensor shapes, a float64 forward pass written out here on the digits test split
rebuilt from scikit-learn, and the CSVLogger's metrics file.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from nbclient import NotebookClient
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
OUTPUT_DIR = Path("outputs") / "quickstart"
CELL_TIMEOUT_S = 300
FC1, FC2 = "backbone.fc1 -> backbone.fc2", "backbone.fc2 -> backbone.head"
PROBE_MARKER = "KERNEL-PROBE "
# Appended to the executed copy only: which interpreter the kernel really ran.
PROBE_SOURCE = f"import json, sys\nprint({PROBE_MARKER!r} + json.dumps({{'prefix': sys.prefix}}))"


@dataclass
class ExecutedNotebook:
    notebook: nbformat.NotebookNode
    workdir: Path

    def stdout(self) -> str:
        return "".join(
            output.text
            for cell in self.notebook.cells
            if cell.cell_type == "code"
            for output in cell.outputs
            if output.output_type == "stream" and output.name == "stdout"
        )

    def outputs(self) -> Iterator[nbformat.NotebookNode]:
        for cell in self.notebook.cells:
            if cell.cell_type == "code":
                yield from cell.outputs


def _write_kernel_spec(jupyter_dir: Path) -> None:
    # An explicit interpreter path: a spec saying "python" would resolve through PATH.
    spec_dir = jupyter_dir / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (lightning_grow test)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> ExecutedNotebook:
    root = tmp_path_factory.mktemp("quickstart")
    workdir = root / "work"
    workdir.mkdir()
    _write_kernel_spec(root / "jupyter")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(PROBE_SOURCE))
    with pytest.MonkeyPatch.context() as patch:
        # The kernel inherits this environment.
        patch.setenv("JUPYTER_PATH", str(root / "jupyter"))
        patch.setenv("IPYTHONDIR", str(root / "ipython"))
        patch.setenv("MPLBACKEND", "Agg")
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_DIR", str(root / "wandb"))
        client = NotebookClient(
            notebook,
            kernel_name="python3",
            timeout=CELL_TIMEOUT_S,
            resources={"metadata": {"path": str(workdir)}},
        )
        client.execute()
    return ExecutedNotebook(notebook, workdir)


def _checkpoint_state(executed: ExecutedNotebook) -> dict[str, torch.Tensor]:
    path = executed.workdir / OUTPUT_DIR / "grown.ckpt"
    assert path.is_file(), "the notebook did not write its checkpoint where it says"
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _printed_widths(executed: ExecutedNotebook) -> dict[str, tuple[int, int]]:
    rows = re.findall(
        r"^(backbone\.\S+ -> backbone\.\S+)\s+(\d+)\s+(\d+)$", executed.stdout(), re.M
    )
    return {pair: (int(initial), int(final)) for pair, initial, final in rows}


def _digits_test_split() -> tuple[np.ndarray, np.ndarray]:
    # The documented protocol, rebuilt from scikit-learn rather than taken from the data module.
    images, labels = load_digits(return_X_y=True)
    _, test_images, _, test_labels = train_test_split(
        images, labels, test_size=400, random_state=0, stratify=labels
    )
    return test_images / 16.0, test_labels


def test_committed_notebook_is_valid_and_has_no_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code_cells)
    assert "arxiv.org/abs/2405.19816" in notebook.cells[0].source


def test_kernel_is_the_project_interpreter(executed: ExecutedNotebook) -> None:
    probe = [line for line in executed.stdout().splitlines() if line.startswith(PROBE_MARKER)]
    assert len(probe) == 1
    assert Path(json.loads(probe[0].removeprefix(PROBE_MARKER))["prefix"]) == Path(sys.prefix)


def test_no_cell_errored(executed: ExecutedNotebook) -> None:
    assert not [output for output in executed.outputs() if output.output_type == "error"]


def test_printed_widths_grew_and_match_the_checkpoint(executed: ExecutedNotebook) -> None:
    widths = _printed_widths(executed)
    assert set(widths) == {FC1, FC2}
    assert widths[FC1][0] == widths[FC2][0] == 2
    assert widths[FC1][1] > 2 and widths[FC2][1] > 2
    state = _checkpoint_state(executed)
    assert state["backbone.fc1.weight"].shape == (widths[FC1][1], 64)
    assert state["backbone.fc2.weight"].shape == (widths[FC2][1], widths[FC1][1])
    assert state["backbone.head.weight"].shape == (10, widths[FC2][1])
    summary = f"grown network: 64-{widths[FC1][1]}-{widths[FC2][1]}-10"
    assert summary in executed.stdout()


def test_printed_accuracy_matches_an_independent_forward_pass(executed: ExecutedNotebook) -> None:
    printed = re.search(r"test accuracy of the grown network: ([0-9.]+)", executed.stdout())
    assert printed is not None
    state = {k: v.double().numpy() for k, v in _checkpoint_state(executed).items()}
    images, labels = _digits_test_split()
    hidden = np.maximum(images @ state["backbone.fc1.weight"].T + state["backbone.fc1.bias"], 0)
    hidden = np.maximum(hidden @ state["backbone.fc2.weight"].T + state["backbone.fc2.bias"], 0)
    logits = hidden @ state["backbone.head.weight"].T + state["backbone.head.bias"]
    accuracy = float(np.mean(logits.argmax(axis=1) == labels))
    # float32 vs float64 may flip a near-tie: one of 400 images, plus the 3-digit rounding.
    assert abs(float(printed.group(1)) - accuracy) <= 1 / 400 + 5e-4
    # The untouched 64-2-2-10 network stays far below this on digits.
    assert accuracy > 0.85


def test_events_table_adds_up_to_the_final_widths(executed: ExecutedNotebook) -> None:
    rows = re.findall(
        r"^\s*(\d+)\s+(\d+)\s+(backbone\.\S+ -> backbone\.\S+)\s+(\d+)->(\d+)\s",
        executed.stdout(),
        re.M,
    )
    assert rows, "no accepted growth event was printed"
    widths = {pair: initial for pair, (initial, _) in _printed_widths(executed).items()}
    for _, _, pair, before, after in rows:
        # Consecutive events of a pair chain, each one adding neurons.
        assert int(before) == widths[pair] < int(after)
        widths[pair] = int(after)
    assert widths == {pair: final for pair, (_, final) in _printed_widths(executed).items()}
    assert f"{len(rows)} accepted events" in executed.stdout()


def test_metrics_csv_logged_the_final_widths(executed: ExecutedNotebook) -> None:
    files = list((executed.workdir / OUTPUT_DIR).glob("digits_mlp/version_*/metrics.csv"))
    assert len(files) == 1
    last_width: dict[str, int] = {}
    losses = 0
    with files[0].open(newline="") as handle:
        for row in csv.DictReader(handle):
            for key in ("growth/width/backbone.fc1", "growth/width/backbone.fc2"):
                if row.get(key):
                    last_width[key] = int(float(row[key]))
            losses += bool(row.get("train/loss"))
    widths = _printed_widths(executed)
    assert last_width == {
        "growth/width/backbone.fc1": widths[FC1][1],
        "growth/width/backbone.fc2": widths[FC2][1],
    }
    assert f"{losses} logged training-loss points" in executed.stdout()


def test_plots_are_displayed_and_not_blank(executed: ExecutedNotebook) -> None:
    images = [
        output["data"]["image/png"]
        for output in executed.outputs()
        if output.output_type == "display_data" and "image/png" in output.get("data", {})
    ]
    assert len(images) == 2  # width per pair (plot_growth) and the training loss
    for encoded in images:
        picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))).convert("L"))
        assert picture.shape[0] > 200 and picture.shape[1] > 400
        assert picture.std() > 5.0
    assert (executed.workdir / OUTPUT_DIR / "growth.png").is_file()


def test_reloaded_model_reproduces_the_grown_one(executed: ExecutedNotebook) -> None:
    stdout = executed.stdout()
    widths = _printed_widths(executed)
    assert f"reloaded network: 64-{widths[FC1][1]}-{widths[FC2][1]}-10" in stdout
    assert re.search(r"max \|grown - reloaded\| over 400 test images: 0\n", stdout)
