"""CIFAR-10 / CIFAR-100 data modules (torchvision), with an offline synthetic stand-in."""

from __future__ import annotations

import socket
import urllib.error
import urllib.parse
from pathlib import Path
from typing import Any, ClassVar

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets
from torchvision.transforms import v2

__all__ = ["CIFAR10DataModule", "CIFAR100DataModule"]

# Fail fast when offline: one reachability probe before torchvision's download (which retries
# over http and, without a socket timeout, can hang for minutes on a black-holed network).
PROBE_TIMEOUT_S = 5.0
DOWNLOAD_SOCKET_TIMEOUT_S = 60.0


class _SyntheticImages(Dataset):
    """Random uint8 CIFAR-shaped images with random labels, through the real transforms."""

    def __init__(self, size: int, num_classes: int, transform: v2.Transform, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randint(
            0, 256, (size, 3, 32, 32), dtype=torch.uint8, generator=generator
        )
        self.targets = torch.randint(0, num_classes, (size,), generator=generator)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), int(self.targets[index])


class _CIFARDataModule(LightningDataModule):
    """Shared implementation; subclasses set the torchvision dataset and its statistics."""

    dataset_class: ClassVar[type[datasets.CIFAR10]]
    display_name: ClassVar[str]
    num_classes: ClassVar[int]
    mean: ClassVar[tuple[float, float, float]]
    std: ClassVar[tuple[float, float, float]]
    input_shape: tuple[int, int, int] = (3, 32, 32)

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        download: bool = False,
        num_workers: int = 4,
        augment: bool = True,
        synthetic: bool = False,
        synthetic_size: int = 256,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.download = download
        self.num_workers = num_workers
        self.augment = augment
        self.synthetic = synthetic
        self.synthetic_size = synthetic_size
        self.train_set: Dataset | None = None
        self.test_set: Dataset | None = None

    # -- transforms -------------------------------------------------------------------------
    def _transform(self, train: bool) -> v2.Compose:
        steps: list[v2.Transform] = [v2.ToImage()]
        if train and self.augment:
            steps += [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]
        steps += [
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(self.mean, self.std),
            v2.ToPureTensor(),
        ]
        return v2.Compose(steps)

    # -- data availability ------------------------------------------------------------------
    def _data_present(self) -> bool:
        folder = self.data_dir / self.dataset_class.base_folder
        files = self.dataset_class.train_list + self.dataset_class.test_list
        return all((folder / name).is_file() for name, _ in files)

    def _missing_error(self) -> FileNotFoundError:
        folder = self.data_dir.resolve() / self.dataset_class.base_folder
        return FileNotFoundError(
            f"{self.display_name} was not found in {folder} (data_dir={str(self.data_dir)!r}). "
            f"Either pass download=True (CLI: --data.download true) to fetch it from "
            f"{self.dataset_class.url}, or copy the extracted "
            f"'{self.dataset_class.base_folder}' folder into {self.data_dir.resolve()}, "
            "or use synthetic=True for an offline smoke test with random images."
        )

    def _download_error(self, cause: BaseException) -> RuntimeError:
        return RuntimeError(
            f"Could not download {self.display_name} from {self.dataset_class.url} into "
            f"{self.data_dir.resolve()}: {cause!r}. This machine looks offline. Download it "
            f"elsewhere and copy the extracted '{self.dataset_class.base_folder}' folder into "
            f"{self.data_dir.resolve()}, or use synthetic=True for an offline smoke test."
        )

    def _download(self) -> None:
        host = urllib.parse.urlparse(self.dataset_class.url).hostname
        try:
            socket.create_connection((host, 443), timeout=PROBE_TIMEOUT_S).close()
        except OSError as error:
            raise self._download_error(error) from error
        previous_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            for train in (True, False):
                self.dataset_class(str(self.data_dir), train=train, download=True)
        except (urllib.error.URLError, OSError) as error:
            raise self._download_error(error) from error
        finally:
            socket.setdefaulttimeout(previous_timeout)

    def prepare_data(self) -> None:
        """Download when asked; otherwise fail at once, with the fix, if the data is missing."""
        if self.synthetic or self._data_present():
            return
        if not self.download:
            raise self._missing_error()
        self._download()

    def setup(self, stage: str | None = None) -> None:
        """Build the train split (augmented) and the test split (also used for validation)."""
        if self.train_set is not None:
            return
        train_transform, test_transform = self._transform(train=True), self._transform(train=False)
        if self.synthetic:
            self.train_set = _SyntheticImages(
                self.synthetic_size, self.num_classes, train_transform, seed=0
            )
            self.test_set = _SyntheticImages(
                self.synthetic_size, self.num_classes, test_transform, seed=1
            )
            return
        # Every rank checks: prepare_data runs on one process per node only.
        if not self._data_present():
            raise self._missing_error()
        root = str(self.data_dir)
        try:
            self.train_set = self.dataset_class(root, train=True, transform=train_transform)
            self.test_set = self.dataset_class(root, train=False, transform=test_transform)
        except RuntimeError as error:  # torchvision's checksum test failed
            raise RuntimeError(
                f"{self.display_name} files in {self.data_dir.resolve()} are corrupted ({error}); "
                "delete them and download again."
            ) from error

    # -- loaders ----------------------------------------------------------------------------
    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        options: dict[str, Any] = {}
        if self.num_workers > 0:
            options = {"persistent_workers": True, "prefetch_factor": 4}
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            **options,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented training split."""
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """The test split (CIFAR has no official validation split)."""
        return self._loader(self.test_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """The test split."""
        return self._loader(self.test_set, shuffle=False)


_DOC = """{name} (``torchvision.datasets.{cls}``) with standard augmentation and normalisation.

    Training images get ``RandomCrop(32, padding=4)`` and ``RandomHorizontalFlip`` (when
    ``augment``); all images are normalised with the {name} channel mean and std. Validation
    uses the test split.

    Parameters
    ----------
    data_dir
        Folder holding (or receiving) ``{folder}``.
    batch_size
        Batch size of every loader.
    download
        Download the data when it is missing. Without it, missing data fails at once with a
        message naming ``data_dir`` and the fix; an offline download fails within seconds.
    num_workers
        DataLoader worker processes.
    augment
        Random crop and flip on the training split.
    synthetic
        Use ``synthetic_size`` random CIFAR-shaped images (random labels, same transforms)
        instead of the real data: for offline smoke tests and CI.
    synthetic_size
        Number of synthetic images per split.

    Attributes
    ----------
    num_classes : int
        {num_classes}.
    input_shape : tuple of int
        ``(3, 32, 32)``.
    """


class CIFAR10DataModule(_CIFARDataModule):
    __doc__ = _DOC.format(
        name="CIFAR-10", cls="CIFAR10", folder="cifar-10-batches-py", num_classes=10
    )
    dataset_class = datasets.CIFAR10
    display_name = "CIFAR-10"
    num_classes = 10
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)


class CIFAR100DataModule(_CIFARDataModule):
    __doc__ = _DOC.format(
        name="CIFAR-100", cls="CIFAR100", folder="cifar-100-python", num_classes=100
    )
    dataset_class = datasets.CIFAR100
    display_name = "CIFAR-100"
    num_classes = 100
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
