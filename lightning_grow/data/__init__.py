"""Data modules: offline 8×8 digits (the default demo) and CIFAR-10/100 (with a synthetic mode)."""

from lightning_grow.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from lightning_grow.data.digits import DigitsDataModule

__all__ = ["CIFAR10DataModule", "CIFAR100DataModule", "DigitsDataModule"]
