"""Batches of uint8 images on the training device, in an order fixed by (seed, epoch).

Small in-memory data sets are copied to the device once and each batch is gathered there by
index: no DataLoader, no host-to-device copy per step. Larger or file-backed data sets stream
through a DataLoader whose workers only decode whole batches; augmentation runs later, on the
device. Either way the batches of an epoch depend only on (seed, epoch), so a resumed run sees
exactly the batches the interrupted one would have.

Data-parallel training: every process draws the same permutation of the epoch and cuts the same
global batches from it; process r of N keeps the r-th of N equal slices of each batch. So the N
processes together see exactly the batches one process would see, each sample once per epoch.
"""

from __future__ import annotations

import math
from typing import Iterator, Optional, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from selfsup.data.base import ImageSource, TensorImages
from selfsup.errors import ConfigError, DataError

Batch = tuple[torch.Tensor, Optional[torch.Tensor]]


def check_batching(name: str, size: int, unit: str, batch_size: int, drop_last: bool,
                   rank: int, world_size: int) -> None:
    """The checks every batch stream makes of its batch size and process slot, with named errors.

    ``size`` samples (``unit``: "images", "sequences") of the data set ``name`` are cut into
    global batches of ``batch_size`` that ``world_size`` processes share.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} must lie in [0, world size {world_size})")
    if drop_last and batch_size % world_size:
        raise ConfigError(f"the batch size {batch_size} must be a multiple of the number of "
                          f"processes ({world_size}) so that each gets an equal share")
    if drop_last and size < batch_size:
        raise DataError(f"{name}: {size} {unit} are fewer than one batch of {batch_size}; "
                        f"use a smaller --batch-size (at most {size})")


class BatchStream:
    """Epochs of (images, labels) batches: uint8 (B, C, H, W) and int64 (B,) or None, on ``device``.

    Args:
        source: the images (and labels) to batch.
        batch_size: images per global batch (over all processes).
        device: where the batches are delivered.
        seed: with the epoch number, fixes the order of the samples.
        shuffle: a fresh permutation each epoch; else the source's order.
        drop_last: leave out the last, partial batch (training wants equal-sized batches).
        device_max_gb: in-memory sources up to this many GB (uint8) are kept on the device whole.
        num_workers: decoding processes for file-backed sources.
        rank, world_size: this process's share of each batch: slice ``rank`` of ``world_size``
            (``batch_size / world_size`` images; only that slice is decoded).
    """

    def __init__(
        self,
        source: ImageSource,
        batch_size: int,
        device: torch.device,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = True,
        device_max_gb: float = 4.0,
        num_workers: int = 4,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        check_batching(source.name, len(source), "images", batch_size, drop_last, rank, world_size)
        self.source = source
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank, self.world_size = rank, world_size
        self.on_device = False
        if isinstance(source, TensorImages) and _fits_on_device(source, self.device, device_max_gb):
            self.on_device = True
            self._images = source.images.to(self.device)
            self._labels = None if source.labels is None else source.labels.to(self.device)
        else:
            self._sampler = _BatchSampler()
            # In-memory sources have nothing to decode: gathering them in-process is cheapest.
            workers = 0 if source.in_memory else num_workers
            self._loader = DataLoader(
                _BatchFetcher(source),
                sampler=self._sampler,
                batch_size=None,  # the sampler yields whole batches of indices
                num_workers=workers,
                persistent_workers=workers > 0,
                pin_memory=self.device.type == "cuda",
                collate_fn=_unchanged,
            )

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return len(self.source) // self.batch_size
        return math.ceil(len(self.source) / self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """The sample indices of ``epoch`` in the order they are served (before batching)."""
        count = len(self.source)
        if not self.shuffle:
            return torch.arange(count)
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        return torch.randperm(count, generator=generator)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """This process's part of each batch of ``epoch``: (uint8 images, int64 labels or None)."""
        order = self.order(epoch)[: len(self) * self.batch_size]
        if self.on_device:
            for indices in order.to(self.device).split(self.batch_size):
                indices = self._own_slice(indices)
                labels = None if self._labels is None else self._labels[indices]
                yield self._images.index_select(0, indices), labels
            return
        self._sampler.batches = [self._own_slice(b) for b in order.split(self.batch_size)]
        for images, labels in self._loader:
            if isinstance(images, DataError):
                raise images
            images = images.to(self.device, non_blocking=True)
            if labels is not None:
                labels = labels.to(self.device, non_blocking=True)
            yield images, labels

    def _own_slice(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.tensor_split(self.world_size)[self.rank] if self.world_size > 1 else batch


def iterate_in_order(
    source: ImageSource,
    batch_size: int,
    device: torch.device,
    device_max_gb: float = 4.0,
    num_workers: int = 4,
) -> Iterator[Batch]:
    """Every sample once, in the source's order, the last batch possibly smaller (for features)."""
    stream = BatchStream(
        source, batch_size, device, seed=0, shuffle=False, drop_last=False,
        device_max_gb=device_max_gb, num_workers=num_workers,
    )
    yield from stream.epoch(0)


def _fits_on_device(source: TensorImages, device: torch.device, device_max_gb: float) -> bool:
    # On the CPU "moving to the device" copies nothing, so any in-memory source qualifies.
    return device.type == "cpu" or source.images.numel() <= device_max_gb * 1e9


def epoch_seed(seed: int, epoch: int, *streams: int) -> int:
    """A well-mixed 64-bit seed from (seed, epoch, *streams): nearby tuples give unrelated seeds.

    ``streams`` tell random streams of the same epoch apart (e.g. the views of each process)."""
    if epoch < 0 or min(streams, default=0) < 0:
        raise ValueError(f"epoch and streams must be >= 0, got {epoch}, {streams}")
    state = np.random.SeedSequence([seed % 2**64, epoch, *streams]).generate_state(1, np.uint64)
    return int(state[0])


class _BatchSampler(Sampler):
    """Yields the batches of index tensors the stream sets before each epoch.

    A DataLoader iterates its sampler in the main process, so the persistent workers need not be
    restarted when the batches change from one epoch to the next.
    """

    def __init__(self) -> None:
        self.batches: list[torch.Tensor] = []

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _BatchFetcher(Dataset):
    """Maps a batch of indices to (uint8 images, labels or None): the workers' only job."""

    def __init__(self, source: ImageSource) -> None:
        self.source = source

    def __getitem__(self, indices: torch.Tensor) -> Union[Batch, tuple[DataError, None]]:
        try:
            images = self.source.get(indices)
        except DataError as error:
            # Raised in a worker, it would reach the user wrapped in the worker's traceback;
            # returned, the stream re-raises it with its own one-line message.
            return error, None
        labels = None if self.source.labels is None else self.source.labels[indices]
        return images, labels

    def __len__(self) -> int:
        return len(self.source)


def _unchanged(batch: Batch) -> Batch:
    """Collate function: the fetcher already returns a whole batch (top-level for pickling)."""
    return batch
