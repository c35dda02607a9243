"""The data contract: an image source yields uint8 (C, H, W) images and optional int64 labels.

Sources are either held in memory as one uint8 tensor (``TensorImages``; small data sets, which the
trainer moves to the training device whole) or decoded lazily from files (``FileImages``; large data
sets, which stream through a DataLoader whose workers only decode).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from selfsup.errors import DataError

KEY_CHUNK = 1024  # images hashed at a time by item_keys


class ImageSource:
    """Base class of image sources. Subclasses implement ``__len__`` and ``get``."""

    name: str = "images"
    modality: str = "image"  # the Modality that reads it (selfsup.modalities)
    labels: Optional[torch.Tensor] = None  # int64 (N,), or None when unlabelled
    classes: Optional[list[str]] = None  # class names, index = label
    groups: Optional[list[str]] = None  # images come without groups: each is its own

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width), the same for every image."""
        raise NotImplementedError

    def get(self, indices: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) images at ``indices`` (a 1-D int64 CPU tensor)."""
        raise NotImplementedError

    @property
    def in_memory(self) -> bool:
        return False

    def subset(self, indices: torch.Tensor) -> "ImageSource":
        """The images at ``indices`` (a 1-D int64 tensor), with their labels."""
        raise NotImplementedError

    def item_ids(self) -> list[str]:
        """One id per image, what the user knows it by: its file's path for images read from
        files, else ``NAME:ROW``, the row in the data set it was loaded from."""
        raise NotImplementedError

    def item_keys(self) -> list[str]:
        """One key per image, equal exactly when two images are identical: a hash of its bytes.
        Read ``KEY_CHUNK`` images at a time, so files are decoded a chunk at a time."""
        keys = []
        for start in range(0, len(self), KEY_CHUNK):
            images = self.get(torch.arange(start, min(start + KEY_CHUNK, len(self))))
            flat = images.contiguous().view(len(images), -1).numpy()
            keys += [hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest() for row in flat]
        return keys

    @property
    def num_classes(self) -> int:
        if self.labels is None:
            return 0
        if self.classes:  # a split may lack the last class; the names know them all
            return len(self.classes)
        return int(self.labels.max().item()) + 1 if len(self.labels) else 0


@dataclass
class TensorImages(ImageSource):
    """An in-memory image source: all images as one uint8 (N, C, H, W) tensor."""

    images: torch.Tensor
    labels: Optional[torch.Tensor] = None
    classes: Optional[list[str]] = None
    name: str = "images"
    ids: Optional[list[str]] = None  # one per image (file paths); None: NAME:ROW
    rows: Optional[torch.Tensor] = None  # the rows of the loaded data set, kept by subsets

    def __post_init__(self) -> None:
        if self.ids is not None and len(self.ids) != len(self.images):
            raise DataError(f"{self.name}: {len(self.ids)} ids for {len(self.images)} images")
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DataError(
                f"{self.name}: images must be a uint8 tensor of shape (N, C, H, W), "
                f"got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if len(self.images) == 0:
            raise DataError(f"{self.name}: the data set is empty (0 images)")
        if self.labels is not None:
            self.labels = torch.as_tensor(self.labels, dtype=torch.int64)
            if self.labels.shape != (len(self.images),):
                raise DataError(
                    f"{self.name}: {len(self.images)} images but labels of shape "
                    f"{tuple(self.labels.shape)}"
                )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def get(self, indices: torch.Tensor) -> torch.Tensor:
        return self.images[indices]

    @property
    def in_memory(self) -> bool:
        return True

    def subset(self, indices: torch.Tensor) -> "TensorImages":
        labels = None if self.labels is None else self.labels[indices]
        ids = None if self.ids is None else [self.ids[int(i)] for i in indices]
        return TensorImages(self.images[indices], labels, self.classes, self.name, ids,
                            self._rows()[indices])

    def item_ids(self) -> list[str]:
        if self.ids is not None:
            return list(self.ids)
        return [f"{self.name}:{row}" for row in self._rows().tolist()]

    def _rows(self) -> torch.Tensor:
        return torch.arange(len(self.images)) if self.rows is None else self.rows


@dataclass
class FileImages(ImageSource):
    """A lazily decoded image source: one file per image, decoded by ``decode(path)``.

    ``decode`` must return a uint8 (C, H, W) tensor of ``shape`` or raise ``DataError`` naming the
    file; it runs in DataLoader worker processes, so it must be a picklable top-level function.
    """

    paths: Sequence[str]
    decode: Callable[[str], torch.Tensor]
    image_shape: tuple[int, int, int]
    labels: Optional[torch.Tensor] = None
    classes: Optional[list[str]] = None
    name: str = "images"

    def __post_init__(self) -> None:
        if len(self.paths) == 0:
            raise DataError(f"{self.name}: the data set is empty (0 images)")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.image_shape

    def get(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.load(int(i)) for i in indices])

    def load(self, index: int) -> torch.Tensor:
        image = self.decode(self.paths[index])
        if tuple(image.shape) != tuple(self.image_shape):
            raise DataError(
                f"{self.paths[index]}: image of shape {tuple(image.shape)} but the data set's "
                f"images are {tuple(self.image_shape)}; resize the images to one size first"
            )
        return image

    def materialize(self) -> TensorImages:
        """Decode every file into memory (for evaluation of modest folders)."""
        images = torch.stack([self.load(i) for i in range(len(self))])
        return TensorImages(images, self.labels, self.classes, self.name, self.item_ids())

    def item_ids(self) -> list[str]:
        return [str(path) for path in self.paths]

    def subset(self, indices: torch.Tensor) -> "FileImages":
        """The files at ``indices``, still decoded lazily."""
        labels = None if self.labels is None else self.labels[indices]
        return dataclasses.replace(self, paths=[self.paths[int(i)] for i in indices], labels=labels)
