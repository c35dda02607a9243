"""A folder of PNG/JPEG images as an image source.

Layouts understood:

- ``root/<class>/…/*.png``: the sorted sub-folder names are the classes (labels 0, 1, …);
- ``root/*.png``: unlabelled images;
- ``root/train/…`` and ``root/test/…``, each in one of the layouts above: the two splits.

Without ``train/`` and ``test/`` sub-folders a seeded 10% of the images is held out as "test",
the rest is "train", and "all" is every image. Folders of modest size are decoded into memory
(errors show up at once); larger ones are decoded lazily by DataLoader workers.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image

from selfsup.data.base import FileImages, ImageSource, TensorImages
from selfsup.data.splits import check_split, holdout_indices
from selfsup.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
TEST_FRACTION = 0.1
# Beyond either limit the folder streams from disk instead of being decoded into memory.
MAX_IN_MEMORY_IMAGES = 20_000
MAX_IN_MEMORY_BYTES = 2 * 10**9

_GRAY_MODES = {"1", "L", "LA", "La"}


def load_folder(
    root: Union[str, Path], split: str, max_in_memory: int = MAX_IN_MEMORY_IMAGES
) -> ImageSource:
    """The ``split`` ("train", "test" or "all") of the images under ``root``.

    Returns a ``TensorImages`` when the split has at most ``max_in_memory`` images (and fits in
    ``MAX_IN_MEMORY_BYTES``), else a lazily decoding ``FileImages``.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    check_split(split, str(root))
    if (root / "train").is_dir() and (root / "test").is_dir():
        scans = {name: _scan(root / name) for name in ("train", "test")}
        # Classes from both splits, so that train and test number them alike.
        classes = sorted(set(scans["train"].by_class) | set(scans["test"].by_class))
        chosen = ["train", "test"] if split == "all" else [split]
        paths, labels = _flatten([scans[name] for name in chosen], classes)
        every_path = _flatten(list(scans.values()), classes)[0]
    else:
        scan = _scan(root)
        classes = sorted(scan.by_class)
        paths, labels = _flatten([scan], classes)
        every_path = paths
        chosen_indices = holdout_indices(
            len(paths), split, TEST_FRACTION, str(root), labels=labels
        )
        paths = [paths[i] for i in chosen_indices]
        labels = None if labels is None else labels[chosen_indices]
    return _make_source(paths, labels, classes or None, root.name or str(root), max_in_memory,
                        every_path)


def decode_image(path: str, channels: Optional[int] = None) -> torch.Tensor:
    """Decode one image file into a uint8 (C, H, W) tensor.

    Grayscale images give C = 1 and every other mode (RGB, RGBA, palette, CMYK) C = 3; with
    ``channels=3`` grayscale images are repeated into three channels. Raises ``DataError`` naming
    the file when it cannot be decoded or is colour where ``channels=1`` is asked for.
    """
    try:
        with Image.open(path) as image:
            image.load()
            array = _to_uint8_array(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise DataError(
            f"{path}: cannot decode the image ({error}); remove or replace the file"
        ) from error
    tensor = torch.from_numpy(array.transpose(2, 0, 1).copy())  # copy: Pillow's is read-only
    if channels == 3 and tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1).contiguous()
    elif channels == 1 and tensor.shape[0] == 3:
        raise DataError(
            f"{path}: colour image in a data set of grayscale images; convert the images to "
            "one mode first"
        )
    return tensor


def _to_uint8_array(image: Image.Image) -> np.ndarray:
    """(H, W, C) uint8 pixels with C = 1 for grayscale modes, else 3."""
    if image.mode in _GRAY_MODES:
        return np.asarray(image.convert("L"))[:, :, None]
    if image.mode.startswith("I"):  # 16-bit grayscale (PNG): keep the 8 high bits
        wide = np.asarray(image).astype(np.int64).clip(0, 65535)
        return (wide >> 8).astype(np.uint8)[:, :, None]
    return np.asarray(image.convert("RGB"))


@dataclass
class _FolderScan:
    folder: Path
    loose: list[Path]  # images directly in the folder
    by_class: dict[str, list[Path]]  # images under each sub-folder, by sub-folder name


def _scan(folder: Path) -> _FolderScan:
    scan = _FolderScan(folder, [], {})
    for entry in _visible(folder):
        if entry.is_dir():
            found = _images_below(entry)
            if found:
                scan.by_class[entry.name] = found
        elif _is_image(entry):
            scan.loose.append(entry)
    return scan


def _flatten(
    scans: list[_FolderScan], classes: list[str]
) -> tuple[list[Path], Optional[torch.Tensor]]:
    """All image paths of ``scans`` and their labels (indices into ``classes``; None if flat)."""
    paths: list[Path] = []
    labels: list[int] = []
    for scan in scans:
        if scan.loose and classes:
            raise DataError(
                f"{scan.folder}: holds images ({scan.loose[0].name}, ...) outside the class "
                f"sub-folders ({', '.join(classes)}); move them into a class sub-folder"
            )
        paths += scan.loose
        for name, found in sorted(scan.by_class.items()):
            paths += found
            labels += [classes.index(name)] * len(found)
    if not paths:
        where = ", ".join(str(scan.folder) for scan in scans)
        raise DataError(
            f"{where}: no images found (accepted extensions: {', '.join(IMAGE_EXTENSIONS)}, "
            "directly in the folder or in one sub-folder per class)"
        )
    return paths, torch.tensor(labels, dtype=torch.int64) if classes else None


def _make_source(
    paths: list[Path],
    labels: Optional[torch.Tensor],
    classes: Optional[list[str]],
    name: str,
    max_in_memory: int,
    every_path: list[Path],
) -> ImageSource:
    first = decode_image(str(paths[0]))
    if len(paths) <= max_in_memory and len(paths) * first.numel() <= MAX_IN_MEMORY_BYTES:
        # The channels of the whole folder, not of this split: a folder that mixes grayscale and
        # colour gives both splits three channels (a split with grey images only would
        # otherwise come out with one, and the encoder would not read it).
        return TensorImages(_decode_all(paths, _folder_channels(every_path)), labels, classes,
                            name, [str(path) for path in paths])
    channels = int(first.shape[0])
    return FileImages(
        [str(p) for p in paths],
        functools.partial(decode_image, channels=channels),  # picklable for worker processes
        tuple(first.shape),  # type: ignore[arg-type]
        labels,
        classes,
        name,
    )


def _folder_channels(paths: list[Path]) -> int:
    """3 when any of the images is in colour, else 1: read from the files' headers alone, and
    only until the first colour image."""
    for path in paths:
        try:
            with Image.open(path) as image:
                mode = image.mode
        except (OSError, ValueError, SyntaxError):
            continue  # decoding names the file
        if mode not in _GRAY_MODES and not mode.startswith("I"):
            return 3
    return 1


def _decode_all(paths: list[Path], channels: int) -> torch.Tensor:
    """Every image as one uint8 (N, ``channels``, H, W) tensor; grayscale is promoted to three
    channels when ``channels`` is 3."""
    # Pillow releases the GIL while decoding, so threads speed this up.
    with ThreadPoolExecutor() as pool:
        images = list(pool.map(decode_image, map(str, paths)))
    first_size = images[0].shape[1:]
    for path, image in zip(paths, images):
        if image.shape[1:] != first_size:
            raise DataError(
                f"{path}: image size {_size(image)} differs from {_size(images[0])} of "
                f"{paths[0]}; resize the images to one size first"
            )
    channels = max([channels] + [image.shape[0] for image in images])
    return torch.stack([image.expand(channels, -1, -1) for image in images])


def _size(image: torch.Tensor) -> str:
    return f"{image.shape[2]}x{image.shape[1]} (width x height)"


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _images_below(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*")
        if _is_image(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
