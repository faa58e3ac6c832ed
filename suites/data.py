"""Datasets of the accuracy suite: scikit-learn's bundled digits, and CIFAR-10 / ImageNet from ``--data-dir``.

Every loader returns a ``Data``: train and test splits as map-style datasets
of (image (C, H, W) float32, label int), the image shape and the class
count. Nothing is ever downloaded.

Layouts expected under ``--data-dir``:
- cifar10: torchvision's ``cifar-10-batches-py/`` folder (the extracted
  ``cifar-10-python.tar.gz``: data_batch_1..5, test_batch, batches.meta);
  ``--data-dir`` may also name that folder itself.
- imagenet: ``train/`` and ``val/``, each with one sub-folder of images per
  class (torchvision ImageFolder layout; the same class folders in both).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from dstbench.errors import UserError

DATASETS = ("digits", "cifar10", "imagenet")
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
CIFAR_LAYOUT = (f"a {CIFAR_FOLDER}/ folder (the extracted cifar-10-python.tar.gz) holding "
                f"{', '.join(CIFAR_FILES)}")
IMAGENET_LAYOUT = "train/ and val/ folders, each with one sub-folder of images per class (ImageFolder layout)"
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: the digits split is fixed, so every seed and method is tested on the same held-out images
DIGITS_SPLIT_SEED = 0


@dataclass
class Data:
    """Train and test splits of (image, label); ``shape`` is one image's (C, H, W)."""

    name: str
    train: Dataset
    test: Dataset
    shape: tuple[int, int, int]
    classes: int


def digits(test_fraction: float = 0.25) -> Data:
    """scikit-learn's 1797 8x8 digits as (1, 8, 8) images: stratified split, standardised per pixel by the train split."""
    from sklearn.datasets import load_digits  # noqa: PLC0415
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=DIGITS_SPLIT_SEED)
    x_tr, x_te = torch.tensor(x_tr, dtype=torch.float32), torch.tensor(x_te, dtype=torch.float32)
    mean, std = x_tr.mean(0), x_tr.std(0).clamp_min(1e-3)

    def split(x: torch.Tensor, y: np.ndarray) -> TensorDataset:
        return TensorDataset(((x - mean) / std).view(-1, 1, 8, 8), torch.tensor(y, dtype=torch.int64))

    return Data("digits", split(x_tr, y_tr), split(x_te, y_te), (1, 8, 8), 10)


def _data_dir(data_dir: Path | str | None, dataset: str, layout: str) -> Path:
    if data_dir is None:
        raise UserError(f"--dataset {dataset} needs --data-dir, a folder holding {layout}")
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise UserError(f"--data-dir {path} is not a folder; for {dataset} it must hold {layout}")
    return path


def _cifar_class():  # noqa: ANN202
    """torchvision's CIFAR10 with the md5 checks replaced by existence checks (``cifar10`` checks the layout itself)."""
    from torchvision.datasets import CIFAR10  # noqa: PLC0415  (torchvision takes a second to import)

    class CIFAR10Folder(CIFAR10):
        """CIFAR-10 read from an existing ``cifar-10-batches-py`` folder, without hashing its 170 MB each run."""

        train_list = [[name, None] for name in CIFAR_FILES[:5]]
        test_list = [["test_batch", None]]
        meta = {**CIFAR10.meta, "md5": None}

    return CIFAR10Folder


def cifar10(data_dir: Path | str | None, augment: bool = True) -> Data:
    """CIFAR-10 (50000 train, 10000 test, 3x32x32) through torchvision, download=False.

    Train images get the usual random crop (padding 4) and horizontal flip when ``augment``.
    """
    import torchvision.transforms as T  # noqa: PLC0415

    root = _data_dir(data_dir, "cifar10", CIFAR_LAYOUT)
    if root.name == CIFAR_FOLDER:
        root = root.parent
    folder = root / CIFAR_FOLDER
    if not folder.is_dir():
        raise UserError(f"--data-dir {root} has no {CIFAR_FOLDER}/ folder; expected {CIFAR_LAYOUT}")
    missing = [name for name in CIFAR_FILES if not (folder / name).is_file()]
    if missing:
        raise UserError(f"{folder} lacks {', '.join(missing)}; expected {CIFAR_LAYOUT}")
    norm = [T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)]
    aug = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if augment else []
    cls = _cifar_class()
    try:
        train = cls(str(root), train=True, download=False, transform=T.Compose(aug + norm))
        test = cls(str(root), train=False, download=False, transform=T.Compose(norm))
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise UserError(f"{folder} is malformed ({type(exc).__name__}: {exc}); each file must be a pickled dict "
                        "with 'data' (N x 3072 uint8) and 'labels', as in cifar-10-python.tar.gz; re-extract it") from None
    if len(train.classes) != 10 or len(train.data) != len(train.targets) or len(test.data) != len(test.targets):
        raise UserError(f"{folder} is malformed: batches.meta must name 10 classes and every batch one label per image")
    return Data("cifar10", train, test, (3, 32, 32), 10)


def imagenet(data_dir: Path | str | None, image: int = 224) -> Data:
    """ImageNet (or any ImageFolder dataset) from ``data_dir/train`` and ``data_dir/val``, as (3, image, image).

    Train: RandomResizedCrop + horizontal flip; test: resize to image * 256/224, center crop.
    """
    import torchvision.transforms as T  # noqa: PLC0415
    from torchvision.datasets import ImageFolder  # noqa: PLC0415

    root = _data_dir(data_dir, "imagenet", IMAGENET_LAYOUT)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise UserError(f"--data-dir {root} has no {split}/ folder; expected {IMAGENET_LAYOUT}")
    norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    train_tf = T.Compose([T.RandomResizedCrop(image), T.RandomHorizontalFlip()] + norm)
    test_tf = T.Compose([T.Resize(round(image * 256 / 224)), T.CenterCrop(image)] + norm)
    try:
        train = ImageFolder(str(root / "train"), train_tf)
        test = ImageFolder(str(root / "val"), test_tf)
    except FileNotFoundError as exc:  # no class folders, or class folders without images
        raise UserError(f"{root} is not in ImageFolder layout ({exc}); expected {IMAGENET_LAYOUT}") from None
    if train.classes != test.classes:
        only = sorted(set(train.classes) ^ set(test.classes))
        raise UserError(f"{root}/train and {root}/val have different class folders (e.g. {', '.join(only[:3])}); "
                        "val/ must also be sorted into one folder per class")
    return Data("imagenet", train, test, (3, image, image), len(train.classes))


def load(name: str, data_dir: Path | str | None = None, image: int = 224) -> Data:
    """The dataset ``name`` (one of DATASETS; ``image`` is ImageNet's crop size); UserError for a bad name or folder."""
    if name == "digits":
        return digits()
    if name == "cifar10":
        return cifar10(data_dir)
    if name == "imagenet":
        return imagenet(data_dir, image)
    raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
