"""scikit-learn's 8×8 handwritten digits: ships with scikit-learn, so it works offline."""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["DigitsDataModule"]

# The benchmark protocol: a fixed, stratified 400-image test split (random_state 0).
TEST_SIZE = 400
SPLIT_SEED = 0
PIXEL_MAX = 16.0


class DigitsDataModule(LightningDataModule):
    """The 1797 images of ``sklearn.datasets.load_digits`` as an in-memory data module.

    Pixels are scaled to ``[0, 1]`` (``X / 16``, float32). The test split is always
    ``train_test_split(X, y, test_size=400, random_state=0, stratify=y)``, so results are
    comparable across runs and with the benchmarks.

    Parameters
    ----------
    batch_size
        Batch size of every loader.
    val_size
        Size of a stratified validation carve-out from the 1397 training images (an int is a
        count, a float in (0, 1) a fraction). With ``0`` there is no carve-out and validation
        uses the test split.
    flatten
        ``True``: inputs are vectors of 64 features (for MLPs). ``False``: ``(1, 8, 8)`` images
        (for CNNs).
    seed
        Seeds the training shuffle and the validation carve-out (not the test split).
    num_workers
        DataLoader workers (0 is fastest for this in-memory data).

    Attributes
    ----------
    num_classes : int
        10.
    input_shape : tuple of int
        ``(64,)`` or ``(1, 8, 8)``.
    """

    num_classes: int = 10

    def __init__(
        self,
        batch_size: int = 64,
        val_size: int | float = 0,
        flatten: bool = True,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.val_size = val_size
        self.flatten = flatten
        self.seed = seed
        self.num_workers = num_workers
        self.input_shape: tuple[int, ...] = (64,) if flatten else (1, 8, 8)
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None

    def _dataset(self, images: np.ndarray, labels: np.ndarray) -> TensorDataset:
        inputs = torch.from_numpy(images).reshape(len(images), *self.input_shape)
        return TensorDataset(inputs, torch.from_numpy(labels).long())

    def setup(self, stage: str | None = None) -> None:
        """Load and split the data (idempotent; every stage gets every split)."""
        if self.train_set is not None:
            return
        digits = load_digits()
        images = (digits.data / PIXEL_MAX).astype(np.float32)
        labels = digits.target.astype(np.int64)
        x_train, x_test, y_train, y_test = train_test_split(
            images, labels, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=labels
        )
        self.test_set = self._dataset(x_test, y_test)
        if self.val_size:
            x_train, x_val, y_train, y_val = train_test_split(
                x_train, y_train, test_size=self.val_size, random_state=self.seed, stratify=y_train
            )
            self.val_set = self._dataset(x_val, y_val)
        else:
            self.val_set = self.test_set
        self.train_set = self._dataset(x_train, y_train)

    def _loader(self, dataset: TensorDataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training split (seeded by ``seed``)."""
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation carve-out, or the test split when ``val_size == 0``."""
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """The fixed 400-image test split."""
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test split."""
        return self._loader(self.test_set, shuffle=False)
