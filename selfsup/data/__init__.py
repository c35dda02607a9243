"""Image data: named built-in data sets, folders of images and NumPy arrays, and batching.

``load_split(name, split)`` is the one entry point: ``name`` is a registered data set
(``fashion-mnist``, ``digits``, …) or a path to a folder of images or a ``.npy``/``.npz`` file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from selfsup.data import digits, fashion_mnist  # noqa: F401  (modules register their data sets)
from selfsup.data import dna_datasets, protein_datasets  # noqa: F401  (sequence data sets too)
from selfsup.data import text_datasets  # noqa: F401  (and text: 20newsgroups)
from selfsup.data.arrays import load_arrays
from selfsup.data.base import FileImages, ImageSource, TensorImages
from selfsup.data.folder import load_folder
from selfsup.data.loader import BatchStream, iterate_in_order
from selfsup.errors import DataError
from selfsup.registry import DATASETS

ARRAY_SUFFIXES = (".npy", ".npz")

__all__ = [
    "BatchStream",
    "FileImages",
    "ImageSource",
    "TensorImages",
    "dataset_names",
    "iterate_in_order",
    "load_split",
]


def dataset_names() -> list[str]:
    """Names of the registered data sets."""
    return DATASETS.names()


def load_split(name: str, split: str, data_dir: Optional[str] = None) -> ImageSource:
    """The ``split`` ("train", "test"; "all" for folders, arrays and digits) of data set ``name``.

    ``name`` is a registered data set, a folder of images or a ``.npy``/``.npz`` file;
    ``data_dir`` tells registered data sets where their files are.
    """
    if name in DATASETS:
        return DATASETS.get(name)(split, data_dir)
    path = Path(name).expanduser()
    if path.is_dir():
        return load_folder(path, split)
    if path.suffix.lower() in ARRAY_SUFFIXES:
        return load_arrays(path, split)
    raise DataError(
        f"unknown data set {name!r}: not a registered data set ({', '.join(dataset_names())}) "
        f"and not a path to a folder of images or a {'/'.join(ARRAY_SUFFIXES)} file"
    )
