"""Data modules: the digits protocol, CIFAR transforms and synthetic mode, offline failures."""

from __future__ import annotations

import socket
from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from lightning_grow.data import CIFAR10DataModule, CIFAR100DataModule, DigitsDataModule


def _rows_sorted(array: np.ndarray) -> np.ndarray:
    """Rows in lexicographic order: comparing two of these compares multisets of rows."""
    array = np.asarray(array, dtype=np.float64).reshape(len(array), -1)
    return array[np.lexsort(array.T[::-1])]


def _stacked(dataset) -> tuple[np.ndarray, np.ndarray]:
    inputs, labels = dataset.tensors
    return inputs.numpy(), labels.numpy()


# -- digits --------------------------------------------------------------------------------------


def test_digits_split_sizes_and_partition_without_validation_carve_out():
    data = DigitsDataModule()
    data.setup("fit")
    x_train, y_train = _stacked(data.train_set)
    x_test, y_test = _stacked(data.test_set)
    assert (len(x_train), len(x_test)) == (1397, 400)
    # val_size == 0: validation is the test split, sample for sample.
    x_val, y_val = _stacked(data.val_set)
    np.testing.assert_array_equal(x_val, x_test)
    np.testing.assert_array_equal(y_val, y_test)
    # Train and test together are exactly the whole dataset, scaled by 1/16.
    digits = load_digits()
    everything = np.concatenate([x_train, x_test])
    labelled = np.concatenate([everything, np.concatenate([y_train, y_test])[:, None]], axis=1)
    expected = np.concatenate([digits.data / 16.0, digits.target[:, None]], axis=1)
    np.testing.assert_allclose(_rows_sorted(labelled), _rows_sorted(expected), atol=1e-7)


def test_digits_validation_carve_out_is_stratified_and_disjoint():
    data = DigitsDataModule(val_size=200, seed=3)
    data.setup()
    x_train, y_train = _stacked(data.train_set)
    x_val, y_val = _stacked(data.val_set)
    x_test, y_test = _stacked(data.test_set)
    assert (len(x_train), len(x_val), len(x_test)) == (1197, 200, 400)
    parts = np.concatenate([x_train, x_val, x_test])
    part_labels = np.concatenate([y_train, y_val, y_test])[:, None]
    digits = load_digits()
    np.testing.assert_allclose(
        _rows_sorted(np.concatenate([parts, part_labels], axis=1)),
        _rows_sorted(np.concatenate([digits.data / 16.0, digits.target[:, None]], axis=1)),
    )
    # The carve-out follows the class proportions of the 1397 training images.
    remaining = Counter(np.concatenate([y_train, y_val]).tolist())
    val_counts = Counter(y_val.tolist())
    for label in range(10):
        assert abs(val_counts[label] - 200 * remaining[label] / 1397) <= 1.0


def test_digits_test_split_is_stratified_and_fixed_by_the_protocol():
    labels = load_digits().target
    counts = Counter(labels.tolist())
    splits = []
    for seed in (0, 5):  # the module's seed must not move the benchmark test split
        data = DigitsDataModule(seed=seed, val_size=100)
        data.setup()
        x_test, y_test = _stacked(data.test_set)
        test_counts = Counter(y_test.tolist())
        for label in range(10):
            assert abs(test_counts[label] - 400 * counts[label] / len(labels)) <= 1.0
        splits.append(x_test)
    np.testing.assert_array_equal(splits[0], splits[1])


def test_digits_scaling_dtype_and_image_layout():
    flat, images = DigitsDataModule(flatten=True), DigitsDataModule(flatten=False)
    flat.setup()
    images.setup()
    x_flat, _ = flat.train_set.tensors
    x_images, _ = images.train_set.tensors
    assert x_flat.dtype == torch.float32 and x_images.dtype == torch.float32
    assert flat.input_shape == (64,) and images.input_shape == (1, 8, 8)
    assert tuple(x_flat.shape[1:]) == (64,) and tuple(x_images.shape[1:]) == (1, 8, 8)
    assert float(x_flat.min()) == 0.0 and float(x_flat.max()) == 1.0
    # Pixel (r, c) of an image is feature 8 r + c of the vector, as in load_digits().images.
    raw = load_digits()
    index = int(np.flatnonzero((raw.data / 16.0 == x_flat[0].numpy()).all(axis=1))[0])
    for r in range(8):
        for c in range(8):
            assert float(x_images[0, 0, r, c]) == pytest.approx(raw.images[index, r, c] / 16.0)
    assert flat.num_classes == 10


def test_digits_shuffle_is_seeded():
    def first_batches(seed: int, epochs: int = 2) -> list[torch.Tensor]:
        data = DigitsDataModule(seed=seed, batch_size=32)
        data.setup()
        loader = data.train_dataloader()
        return [next(iter(loader))[1] for _ in range(epochs)]

    run_a, run_b, other_seed = first_batches(0), first_batches(0), first_batches(1)
    torch.testing.assert_close(run_a[0], run_b[0])
    torch.testing.assert_close(run_a[1], run_b[1])
    assert not torch.equal(run_a[0], run_a[1])  # a fresh order every epoch
    assert not torch.equal(run_a[0], other_seed[0])


# -- CIFAR ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module_class", "num_classes"), [(CIFAR10DataModule, 10), (CIFAR100DataModule, 100)]
)
def test_cifar_synthetic_shapes(module_class, num_classes):
    data = module_class(synthetic=True, synthetic_size=40, batch_size=16, num_workers=0)
    data.prepare_data()
    data.setup("fit")
    assert data.num_classes == num_classes and data.input_shape == (3, 32, 32)
    assert len(data.train_set) == 40 and len(data.test_set) == 40
    for loader in (data.train_dataloader(), data.val_dataloader(), data.test_dataloader()):
        inputs, labels = next(iter(loader))
        assert inputs.shape == (16, 3, 32, 32) and inputs.dtype == torch.float32
        assert type(inputs) is torch.Tensor
        assert labels.dtype == torch.int64
    all_labels = torch.tensor([data.train_set[i][1] for i in range(40)])
    assert int(all_labels.min()) >= 0 and int(all_labels.max()) < num_classes


def test_cifar_normalisation_matches_the_channel_statistics():
    data = CIFAR10DataModule(synthetic=True, synthetic_size=8, augment=False, num_workers=0)
    data.setup()
    mean = torch.tensor([0.4914, 0.4822, 0.4465], dtype=torch.float64)[:, None, None]
    std = torch.tensor([0.2470, 0.2435, 0.2616], dtype=torch.float64)[:, None, None]
    for index in range(8):
        raw = data.train_set.images[index].to(torch.float64)
        expected = (raw / 255.0 - mean) / std
        torch.testing.assert_close(data.train_set[index][0].double(), expected, atol=1e-5, rtol=0)


def test_cifar_augmentation_is_a_padded_crop_and_optional_flip():
    data = CIFAR10DataModule(synthetic=True, synthetic_size=6, augment=True, num_workers=0)
    data.setup()
    plain = data._transform(train=False)
    changed = 0
    for index in range(6):
        image = data.train_set.images[index]
        augmented = data.train_set[index][0]
        # Zero-padded uint8 image, normalised: every crop of it, flipped or not, is a candidate.
        padded = plain(torch.nn.functional.pad(image, (4, 4, 4, 4)))
        candidates = []
        for top in range(9):
            for left in range(9):
                crop = padded[:, top : top + 32, left : left + 32]
                candidates += [crop, crop.flip(-1)]
        errors = [float((augmented - candidate).abs().max()) for candidate in candidates]
        assert min(errors) < 1e-5
        changed += not torch.allclose(augmented, plain(image))
    assert changed > 0  # augmentation really happens


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to resolve or connect fails the test (not as an OSError the code could catch)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "getaddrinfo", forbidden)
    monkeypatch.setattr(socket, "create_connection", forbidden)


@pytest.mark.parametrize("module_class", [CIFAR10DataModule, CIFAR100DataModule])
def test_cifar_missing_data_fails_at_once_with_the_fix(module_class, tmp_path, no_network):
    data = module_class(data_dir=str(tmp_path), download=False, num_workers=0)
    for step in (data.prepare_data, data.setup):
        with pytest.raises(FileNotFoundError) as failure:
            step()
        message = str(failure.value)
        assert str(tmp_path) in message
        assert "download=True" in message and "copy" in message
        assert module_class.dataset_class.base_folder in message
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_cifar_download_offline_fails_quickly_with_a_clear_error(tmp_path, monkeypatch):
    lookups = []

    def offline_lookup(host, *args, **kwargs):
        lookups.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", offline_lookup)
    data = CIFAR10DataModule(data_dir=str(tmp_path), download=True, num_workers=0)
    with pytest.raises(RuntimeError) as failure:
        data.prepare_data()
    message = str(failure.value)
    assert "offline" in message and str(tmp_path) in message and "synthetic=True" in message
    assert len(lookups) == 1  # one probe, no retries
    assert socket.getdefaulttimeout() is None  # the global socket timeout is left alone


def test_cifar_synthetic_needs_no_data_and_no_network(tmp_path, no_network):
    data = CIFAR100DataModule(data_dir=str(tmp_path), synthetic=True, num_workers=0)
    data.prepare_data()
    data.setup()
    assert len(data.train_dataloader()) == 2  # 256 images, batches of 128
