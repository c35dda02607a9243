"""scikit-learn's bundled 8×8 handwritten digits (1,797 images, 10 classes): tiny and offline.

The data set comes unsplit; "train" and "test" are a fixed stratified 80/20 split, the same on
every call and machine, and "all" is every image.
"""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np
import torch

from selfsup.data.base import TensorImages
from selfsup.data.splits import holdout_indices
from selfsup.registry import DATASETS

NAME = "digits"
TEST_FRACTION = 0.2
# load_digits pixels count the ink pixels (0..16) in 4x4 blocks of the original 32x32 bitmaps.
MAX_PIXEL = 16


@DATASETS.register(NAME, "scikit-learn 8x8 digits, 10 classes (1,797 images; for quick tests)")
def digits(split: str, data_dir: Optional[str] = None) -> TensorImages:
    """The ``split`` ("train", "test" or "all") of the digits as uint8 (N, 1, 8, 8) images.

    ``data_dir`` is ignored: the data ship with scikit-learn.
    """
    images, labels = _all_digits()
    indices = holdout_indices(len(images), split, TEST_FRACTION, NAME, labels=labels)
    return TensorImages(images[indices], labels[indices], [str(d) for d in range(10)], NAME,
                        rows=torch.as_tensor(indices))  # ids: digits:ROW of the whole set


@functools.lru_cache(maxsize=1)
def _all_digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    scaled = np.rint(bunch.images * (255 / MAX_PIXEL)).astype(np.uint8)
    return torch.from_numpy(scaled).unsqueeze(1), torch.from_numpy(bunch.target).long()
