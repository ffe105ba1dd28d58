"""Teacher–student right-sizing (issue 9, section 4): does growth find the teacher's width?

Teacher: ``Linear(16, 24) → tanh → Linear(24, 8)`` with weights ``N(0, 1/fan_in)`` and zero
biases (so hidden pre-activations have unit variance and tanh is really non-linear), fixed by
``TEACHER_SEED``. Inputs ``N(0, I_16)``: 4000 training and 1000 test samples; targets are the
teacher's outputs plus ``N(0, 0.01²)`` noise, on both splits, so the best achievable test MSE is
``1e-4``.

Student (same setup for fixed and grown): ``Linear(16, h) → tanh → Linear(h, 8)`` with PyTorch's
default initialisation, Adam (lr 1e-3), batch 64, mean squared error (``F.mse_loss``, averaged
over samples and outputs), :data:`STUDENT_EPOCHS` epochs. Grown students start at ``h = 1``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.common import RunResult, count_parameters, evaluate_regressor, seed_everything
from benchmarks.digits import train_plain
from benchmarks.lightning_runs import run_lightning

__all__ = [
    "RegressionModule",
    "TeacherData",
    "make_teacher_data",
    "run_fixed_student",
    "run_grown_student",
    "train_fixed_student",
]

TEACHER_SEED = 1234
TEACHER_WIDTHS = (16, 24, 8)
NOISE_STD = 0.01
STUDENT_EPOCHS = 200
STUDENT_BATCH = 64
STUDENT_LR = 1e-3


@dataclass(frozen=True)
class TeacherData:
    """Training and test samples of the teacher (float32)."""

    train_inputs: Tensor
    train_targets: Tensor
    test_inputs: Tensor
    test_targets: Tensor


def make_teacher_data(
    train_size: int = 4000, test_size: int = 1000, seed: int = TEACHER_SEED
) -> TeacherData:
    """Draw the teacher and its noisy samples (fully determined by ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    d_in, hidden, d_out = TEACHER_WIDTHS
    weight1 = torch.randn(hidden, d_in, generator=generator) / d_in**0.5
    weight2 = torch.randn(d_out, hidden, generator=generator) / hidden**0.5

    def sample(size: int) -> tuple[Tensor, Tensor]:
        inputs = torch.randn(size, d_in, generator=generator)
        clean = torch.tanh(inputs @ weight1.T) @ weight2.T
        return inputs, clean + NOISE_STD * torch.randn(size, d_out, generator=generator)

    train = sample(train_size)
    test = sample(test_size)
    return TeacherData(*train, *test)


def build_student(width: int) -> nn.Module:
    """``lightning_grow.models.MLP(16, (width,), 8, "tanh")``: the student of every run."""
    from lightning_grow.models import MLP

    return MLP(in_features=16, hidden=(width,), num_classes=8, activation="tanh")


class RegressionModule(pl.LightningModule):
    """Mean-squared-error regression of any backbone, optimised with Adam.

    Parameters
    ----------
    backbone
        The network.
    learning_rate
        Adam's learning rate.
    """

    def __init__(self, backbone: nn.Module, learning_rate: float = STUDENT_LR) -> None:
        super().__init__()
        self.backbone = backbone
        self.learning_rate = learning_rate

    def forward(self, inputs: Tensor) -> Tensor:
        """Predictions of the backbone."""
        return self.backbone(inputs)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """``F.mse_loss`` of the batch (mean over samples and outputs)."""
        inputs, targets = batch
        return F.mse_loss(self(inputs), targets)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam on ``self.parameters()`` (the growth callback re-points it after growth)."""
        return torch.optim.Adam(self.parameters(), lr=self.learning_rate)


def train_fixed_student(
    width: int, seed: int, data: TeacherData, epochs: int = STUDENT_EPOCHS
) -> tuple[nn.Module, float]:
    """A fixed student of hidden width ``width`` trained by the plain loop, and its seconds."""
    seed_everything(seed)
    student = build_student(width)
    seconds = train_plain(
        student,
        data.train_inputs,
        data.train_targets,
        seed=seed,
        epochs=epochs,
        batch_size=STUDENT_BATCH,
        learning_rate=STUDENT_LR,
        loss_fn=F.mse_loss,
    )
    return student, seconds


def run_fixed_student(
    width: int, seed: int, data: TeacherData, epochs: int = STUDENT_EPOCHS
) -> RunResult:
    """Train a fixed student of hidden width ``width`` with the plain loop."""
    student, seconds = train_fixed_student(width, seed, data, epochs)
    return RunResult(
        name=f"fixed h={width}",
        seed=seed,
        widths=[width],
        parameters=count_parameters(student),
        metrics=evaluate_regressor(student, data.test_inputs, data.test_targets),
        fit_seconds=seconds,
        width_trajectory=[(0, [width])],
    )


def run_grown_student(
    seed: int,
    data: TeacherData,
    epochs: int = STUDENT_EPOCHS,
    method: str = "tiny",
    callback_options: dict[str, Any] | None = None,
    start_width: int = 1,
) -> RunResult:
    """Grow a student from ``start_width`` with ``GrowthCallback`` (defaults unless overridden)."""
    evaluate: Callable[[nn.Module], dict[str, float]] = lambda student: evaluate_regressor(  # noqa: E731
        student, data.test_inputs, data.test_targets
    )
    return run_lightning(
        name=f"grown ({method})",
        seed=seed,
        build_backbone=lambda: build_student(start_width),
        build_module=RegressionModule,
        train=(data.train_inputs, data.train_targets),
        evaluate=evaluate,
        epochs=epochs,
        batch_size=STUDENT_BATCH,
        callback_options={"method": method, **(callback_options or {})},
    )
