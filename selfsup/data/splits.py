"""Deterministic train/test hold-outs for data sets that do not come split.

The same (size, fraction, seed, labels) always gives the same split, so training and a later
evaluation agree on which samples were held out. When labels are given the split is stratified,
so every class keeps its share in both halves.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from selfsup.errors import DataError

SPLITS = ("train", "test", "all")
HOLDOUT_SEED = 0


def check_split(split: str, name: str, allowed: tuple[str, ...] = SPLITS) -> None:
    """Raise ``DataError`` unless ``split`` is one of ``allowed``."""
    if split not in allowed:
        raise DataError(f"{name}: unknown split {split!r}; choose one of {', '.join(allowed)}")


def holdout_indices(
    count: int,
    split: str,
    test_fraction: float,
    name: str,
    labels: Optional[torch.Tensor] = None,
    seed: int = HOLDOUT_SEED,
) -> torch.Tensor:
    """Sorted int64 indices of ``split`` ("train", "test" or "all") out of ``count`` samples.

    "test" is a seeded ``test_fraction`` of the samples (at least one), "train" the rest and "all"
    every sample. The split is stratified by ``labels`` where every class has two or more samples.
    """
    check_split(split, name)
    if split == "all":
        return torch.arange(count)
    if count < 2:
        raise DataError(
            f"{name}: {count} sample(s) cannot be split into train and test; add more data "
            "or use split 'all'"
        )
    test_size = max(1, round(count * test_fraction))
    stratify = None
    if labels is not None:
        class_counts = np.bincount(labels.numpy())
        class_counts = class_counts[class_counts > 0]
        if class_counts.min() >= 2 and len(class_counts) <= min(test_size, count - test_size):
            stratify = labels.numpy()
    # imported here, not at the top: scikit-learn costs ~1 s on every `import selfsup.data`
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(
        np.arange(count), test_size=test_size, random_state=seed, stratify=stratify
    )
    chosen = train if split == "train" else test
    return torch.from_numpy(np.sort(chosen)).long()
