"""Fashion-MNIST: 70,000 grayscale 28×28 images of clothing in 10 classes (60k train, 10k test).

The four IDX files are looked for, in order, in the ``data_dir`` argument, in ``$SELFSUP_DATA``
and in the folder of the Debian package ``dataset-fashion-mnist``; nothing is downloaded.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from selfsup.data.base import TensorImages
from selfsup.data.idx import read_idx
from selfsup.data.splits import check_split
from selfsup.errors import DataError
from selfsup.registry import DATASETS

NAME = "fashion-mnist"
CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
INSTALL_COMMAND = "sudo apt-get install dataset-fashion-mnist"
ENV_VAR = "SELFSUP_DATA"


@DATASETS.register(NAME, "Fashion-MNIST, 28x28 grayscale clothing, 10 classes (60k/10k)")
def fashion_mnist(split: str, data_dir: Optional[str] = None) -> TensorImages:
    """The ``split`` ("train" or "test") of Fashion-MNIST as uint8 (N, 1, 28, 28) images."""
    check_split(split, NAME, allowed=tuple(FILES))
    images_path, labels_path = find_files(split, data_dir)
    images, labels = _decode(images_path, labels_path)
    return TensorImages(images, labels, list(CLASSES), NAME)


def search_dirs(data_dir: Optional[str]) -> list[Path]:
    """The folders searched for the IDX files, in order."""
    dirs = []
    if data_dir:
        dirs += [Path(data_dir).expanduser(), Path(data_dir).expanduser() / NAME]
    if os.environ.get(ENV_VAR):
        root = Path(os.environ[ENV_VAR]).expanduser()
        dirs += [root, root / NAME]
    dirs.append(Path(SYSTEM_DIR))
    return dirs


def find_files(split: str, data_dir: Optional[str]) -> tuple[Path, Path]:
    """Paths of the images and labels files of ``split`` from the first folder holding both."""
    dirs = search_dirs(data_dir)
    for folder in dirs:
        found = [_existing(folder, stem) for stem in FILES[split]]
        if found[0] is not None and found[1] is not None:
            return found[0], found[1]
    looked = "\n  ".join(str(folder) for folder in dirs)
    names = ", ".join(f"{stem}[.gz]" for stem in FILES[split])
    raise DataError(
        f"{NAME} {split} files ({names}) not found; looked in:\n  {looked}\n"
        f"Install them with: {INSTALL_COMMAND}\n"
        f"or point --data-dir or ${ENV_VAR} at a folder holding the four IDX files."
    )


def _existing(folder: Path, stem: str) -> Optional[Path]:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _decode(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded (images, labels), cached per file version so a second load skips the gunzip.

    Every caller gets the same cached tensors: treat them as read-only.
    """
    return _decode_cached(
        images_path.resolve(), _version(images_path), labels_path.resolve(), _version(labels_path)
    )


def _version(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=4)
def _decode_cached(
    images_path: Path, images_version: tuple, labels_path: Path, labels_version: tuple
) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{images_path}: expected uint8 (N, H, W) images, got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected (N,) labels, got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} "
            "labels; the files belong to different splits or one is damaged"
        )
    if len(labels) and labels.max() >= len(CLASSES):
        raise DataError(f"{labels_path}: label {labels.max()} out of range 0..{len(CLASSES) - 1}")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long()
