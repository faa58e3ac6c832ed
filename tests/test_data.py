"""The accuracy suite's data loading on real folders the tests write: digits, a tiny CIFAR-10, a tiny ImageFolder."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dstbench.errors import UserError
from dstbench.suites import data

CLASSES = [f"class{i}" for i in range(10)]


def write_cifar(root: Path, per_batch: int = 2, test: int = 3) -> np.ndarray:
    """A cifar-10-batches-py folder in the archive's pickle layout; returns the first train image (32, 32, 3)."""
    folder = root / data.CIFAR_FOLDER
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {f"data_batch_{i}": per_batch for i in range(1, 6)} | {"test_batch": test}
    first = None
    for name, count in batches.items():
        pixels = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        first = pixels[0] if first is None else first
        entry = {"batch_label": name, "labels": [int(v) for v in rng.integers(0, 10, count)], "data": pixels,
                 "filenames": [f"{name}_{i}.png" for i in range(count)]}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CLASSES, "num_cases_per_batch": per_batch}))
    return first.reshape(3, 32, 32).transpose(1, 2, 0)


def write_image_folder(root: Path, classes: dict[str, list[str]]) -> None:
    """root/<split>/<class>/<n>.png, 12x10 RGB images."""
    rng = np.random.default_rng(1)
    for split, names in classes.items():
        for name in names:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_digits_is_a_stratified_standardised_split():
    d = data.digits()
    x_train = torch.stack([d.train[i][0] for i in range(len(d.train))])
    y_test = torch.stack([d.test[i][1] for i in range(len(d.test))])
    y_train = torch.stack([d.train[i][1] for i in range(len(d.train))])
    assert (len(d.train), len(d.test)) == (1347, 450)
    assert d.shape == (1, 8, 8) and x_train.shape[1:] == (1, 8, 8) and d.classes == 10
    per_class = torch.bincount(y_test, minlength=10) + torch.bincount(y_train, minlength=10)
    assert ((torch.bincount(y_test, minlength=10) - 0.25 * per_class).abs() <= 1).all()  # stratified
    assert x_train.mean().abs() < 1e-4


def test_cifar10_loads_the_pickle_layout_through_torchvision(tmp_path):
    first = write_cifar(tmp_path)
    d = data.cifar10(tmp_path, augment=False)
    assert (len(d.train), len(d.test), d.shape, d.classes) == (10, 3, (3, 32, 32), 10)
    image, label = d.train[0]
    expected = (torch.tensor(first, dtype=torch.float32).permute(2, 0, 1) / 255 - torch.tensor(data.CIFAR_MEAN)[:, None, None]) \
        / torch.tensor(data.CIFAR_STD)[:, None, None]
    assert torch.allclose(image, expected, atol=1e-5)
    assert 0 <= label < 10
    assert len(data.cifar10(tmp_path / data.CIFAR_FOLDER).train) == 10  # the batches folder itself works too


def test_cifar10_errors_say_what_layout_is_expected(tmp_path):
    with pytest.raises(UserError, match="needs --data-dir"):
        data.cifar10(None)
    with pytest.raises(UserError, match="is not a folder"):
        data.cifar10(tmp_path / "nowhere")
    with pytest.raises(UserError, match="no cifar-10-batches-py/ folder"):
        data.cifar10(tmp_path)
    write_cifar(tmp_path)
    (tmp_path / data.CIFAR_FOLDER / "data_batch_3").unlink()
    with pytest.raises(UserError, match="lacks data_batch_3"):
        data.cifar10(tmp_path)
    (tmp_path / data.CIFAR_FOLDER / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="malformed"):
        data.cifar10(tmp_path)


def test_imagenet_loads_an_image_folder(tmp_path):
    write_image_folder(tmp_path, {"train": ["cat", "dog"], "val": ["cat", "dog"]})
    d = data.imagenet(tmp_path, image=16)
    assert (len(d.train), len(d.test), d.shape, d.classes) == (4, 4, (3, 16, 16), 2)
    image, label = d.test[3]
    assert image.shape == (3, 16, 16) and label == 1
    assert d.train[0][0].shape == (3, 16, 16)


def test_imagenet_errors_say_what_layout_is_expected(tmp_path):
    with pytest.raises(UserError, match="needs --data-dir"):
        data.imagenet(None)
    write_image_folder(tmp_path / "a", {"train": ["cat", "dog"]})
    with pytest.raises(UserError, match="no val/ folder"):
        data.imagenet(tmp_path / "a")
    (tmp_path / "b" / "train").mkdir(parents=True)
    (tmp_path / "b" / "val").mkdir()
    with pytest.raises(UserError, match="ImageFolder layout"):
        data.imagenet(tmp_path / "b")
    write_image_folder(tmp_path / "c", {"train": ["cat", "dog"], "val": ["cat", "eel"]})
    with pytest.raises(UserError, match="different class folders"):
        data.imagenet(tmp_path / "c")


def test_unknown_dataset():
    with pytest.raises(UserError, match="unknown dataset"):
        data.load("mnist")
