"""Images stored as NumPy arrays: ``.npy`` (images only) or ``.npz`` (images and labels).

An ``.npz`` archive holds the images under ``images``, ``x`` or ``X`` and optional integer labels
under ``labels``, ``y`` or ``Y``; or ready-made splits under ``x_train``/``y_train`` and
``x_test``/``y_test`` (also ``X_…`` / ``Y_…`` or ``images_…`` / ``labels_…``). Without ready-made
splits a seeded 10% is held out as "test", the rest is "train", and "all" is every image.

Images may be (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3}: uint8, integers in
0..255, or floats in [0, 1] (scaled by 255) or [0, 255].
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from selfsup.data.base import TensorImages
from selfsup.data.splits import check_split, holdout_indices
from selfsup.errors import DataError

IMAGE_KEYS = ("images", "x", "X")
LABEL_KEYS = ("labels", "y", "Y")
TEST_FRACTION = 0.1
CHANNEL_COUNTS = (1, 3)


def load_arrays(path: Union[str, Path], split: str) -> TensorImages:
    """The ``split`` ("train", "test" or "all") of the images in a ``.npy`` or ``.npz`` file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    check_split(split, str(path))
    loaded = _load(path)
    if isinstance(loaded, np.ndarray):
        images, labels = to_image_tensor(loaded, str(path)), None
        return _holdout(images, labels, split, path)
    with loaded as archive:
        keys = set(archive.files)
        if _split_key(keys, IMAGE_KEYS, "train"):
            chosen = ["train", "test"] if split == "all" else [split]
            parts = [_read_split(archive, path, name) for name in chosen]
            shapes = {tuple(images.shape[1:]) for images, _ in parts}
            if len(shapes) > 1:
                raise DataError(f"{path}: the train and test images differ in shape: {shapes}")
            images = torch.cat([images for images, _ in parts])
            labels_parts = [labels for _, labels in parts]
            if any(labels is None for labels in labels_parts):
                labels = None
            else:
                labels = torch.cat(labels_parts)  # type: ignore[arg-type]
            return TensorImages(images, labels, None, path.stem)
        images_key = _first_present(keys, IMAGE_KEYS, path)
        labels_key = next((key for key in LABEL_KEYS if key in keys), None)
        images = to_image_tensor(_member(archive, images_key, path), f"{path}[{images_key}]")
        labels = _read_labels(archive, labels_key, len(images), path)
    return _holdout(images, labels, split, path)


def to_image_tensor(array: np.ndarray, where: str) -> torch.Tensor:
    """A uint8 (N, C, H, W) tensor from an image array of a supported layout and value range.

    Raises ``DataError`` naming ``where`` and what was found when the array is empty or its shape,
    dtype or value range is not one of those accepted.
    """
    if array.size == 0:
        raise DataError(f"{where}: the image array is empty (shape {array.shape})")
    return torch.from_numpy(_to_nchw(_to_uint8(array, where), where))


def _to_uint8(array: np.ndarray, where: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind in "iu":
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise DataError(
                f"{where}: integer pixel values must lie in 0..255, found {low}..{high}"
            )
        return array.astype(np.uint8)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise DataError(f"{where}: the images hold NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low >= 0 and high <= 1:
            return np.rint(array * 255).astype(np.uint8)
        if low >= 0 and high <= 255:
            return np.rint(array).astype(np.uint8)
        raise DataError(
            f"{where}: float pixel values must lie in [0, 1] or [0, 255], found "
            f"[{low:g}, {high:g}]; rescale the images first"
        )
    raise DataError(
        f"{where}: unsupported image dtype {array.dtype}; use uint8, or floats in [0, 1] or "
        "[0, 255]"
    )


def _to_nchw(array: np.ndarray, where: str) -> np.ndarray:
    if array.ndim == 3:
        return array[:, None]
    if array.ndim == 4:
        # Channels-last is NumPy's usual layout, so it wins when both readings are possible.
        if array.shape[3] in CHANNEL_COUNTS:
            return np.ascontiguousarray(array.transpose(0, 3, 1, 2))
        if array.shape[1] in CHANNEL_COUNTS:
            return np.ascontiguousarray(array)
    raise DataError(
        f"{where}: images of shape {array.shape} not understood; expected (N, H, W), "
        "(N, H, W, C) or (N, C, H, W) with C = 1 or 3"
    )


def _load(path: Path) -> Union[np.ndarray, "np.lib.npyio.NpzFile"]:
    # allow_pickle=False: unpickling a data file can run arbitrary code, so pickled or object
    # arrays are refused with a DataError instead.
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: {_load_problem(error)}") from error


def _member(archive: "np.lib.npyio.NpzFile", key: str, path: Path) -> np.ndarray:
    """``archive[key]``; members are decoded on access, so this can fail like ``_load``."""
    try:
        return archive[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}[{key}]: {_load_problem(error)}") from error


def _load_problem(error: Exception) -> str:
    if "pickle" in str(error):
        return (
            "holds pickled (object) data, which selfsup does not load because unpickling can "
            "run arbitrary code; save plain numeric arrays with numpy.save / numpy.savez"
        )
    return f"not a readable .npy/.npz file ({error})"


def _split_key(keys: set[str], stems: tuple[str, ...], split: str) -> Optional[str]:
    return next((f"{stem}_{split}" for stem in stems if f"{stem}_{split}" in keys), None)


def _read_split(
    archive: "np.lib.npyio.NpzFile", path: Path, split: str
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    images_key = _split_key(set(archive.files), IMAGE_KEYS, split)
    if images_key is None:
        raise DataError(
            f"{path}: has x_train-style splits but no images for split {split!r} "
            f"(keys: {', '.join(sorted(archive.files))})"
        )
    images = to_image_tensor(_member(archive, images_key, path), f"{path}[{images_key}]")
    labels_key = _split_key(set(archive.files), LABEL_KEYS, split)
    return images, _read_labels(archive, labels_key, len(images), path)


def _first_present(keys: set[str], candidates: tuple[str, ...], path: Path) -> str:
    for key in candidates:
        if key in keys:
            return key
    raise DataError(
        f"{path}: no images found under the keys {', '.join(candidates)} or x_train/x_test "
        f"(the archive holds: {', '.join(sorted(keys)) or 'nothing'})"
    )


def _read_labels(
    archive: "np.lib.npyio.NpzFile", key: Optional[str], count: int, path: Path
) -> Optional[torch.Tensor]:
    if key is None:
        return None
    labels = _member(archive, key, path)
    where = f"{path}[{key}]"
    if labels.dtype.kind not in "iu":
        raise DataError(f"{where}: labels must be integers, found {labels.dtype}")
    if labels.shape != (count,):
        raise DataError(f"{where}: labels of shape {labels.shape} for {count} images")
    if count and labels.min() < 0:
        raise DataError(f"{where}: negative label {labels.min()}; labels are 0, 1, 2, ...")
    return torch.from_numpy(labels.astype(np.int64))


def _holdout(
    images: torch.Tensor, labels: Optional[torch.Tensor], split: str, path: Path
) -> TensorImages:
    chosen = holdout_indices(len(images), split, TEST_FRACTION, str(path), labels=labels)
    return TensorImages(  # ids: STEM:ROW of the file, as the user numbers its rows
        images[chosen], None if labels is None else labels[chosen], None, path.stem,
        rows=torch.as_tensor(chosen),
    )
