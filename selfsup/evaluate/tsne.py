"""Two-dimensional t-SNE map of features, for the report's picture of the representation."""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

from selfsup.errors import ConfigError, DataError

ArrayLike = Union[torch.Tensor, np.ndarray]
PCA_DIMS = 50  # the usual step before t-SNE: removes noise dimensions and makes it faster
MAX_PERPLEXITY = 30.0


def _to_numpy(values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def stratified_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` rows drawn so each class keeps its share of ``labels``.

    Class quotas are n × share rounded down, the leftover rows going to the classes with the
    largest remainders. All rows when n ≥ len(labels). Deterministic under ``seed``.
    """
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = n * counts / len(labels)
    quotas = np.floor(exact).astype(int)
    leftover = n - quotas.sum()
    quotas[np.argsort(-(exact - quotas), kind="stable")[:leftover]] += 1
    chosen = [
        rng.choice(np.flatnonzero(labels == cls), size=quota, replace=False)
        for cls, quota in zip(classes, quotas)
    ]
    return np.sort(np.concatenate(chosen))


def tsne_embedding(
    feats: ArrayLike, labels: ArrayLike, n: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """t-SNE coordinates of a class-stratified sample of ``n`` feature rows.

    The sample is reduced to 50 dimensions with PCA, then mapped by scikit-learn's TSNE
    (init="pca", learning_rate="auto", perplexity 30 or less for small samples). Returns
    (coords of shape (n, 2), the sampled rows' labels); deterministic under ``seed``.
    """
    x = _to_numpy(feats).astype(np.float32, copy=False)
    y = _to_numpy(labels)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise DataError(f"t-SNE needs (N, D) features and N labels, got {x.shape} and {y.shape}")
    if n < 3:
        raise ConfigError(f"t-SNE needs at least 3 points, got n={n}")
    keep = stratified_sample(y, n, seed)
    x, y = x[keep], y[keep]
    if len(x) < 3:
        raise DataError(f"t-SNE needs at least 3 feature rows, got {len(x)}")
    components = min(PCA_DIMS, x.shape[0], x.shape[1])
    # imported here: scikit-learn costs ~1 s, and the trainer imports this package for its k-NN
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = PCA(n_components=components, random_state=seed).fit_transform(x)
    # Barnes-Hut t-SNE looks at 3 × perplexity neighbours of each point: keep them in the sample.
    perplexity = min(MAX_PERPLEXITY, (len(x) - 1) / 3)
    coords = TSNE(
        n_components=2, init="pca", learning_rate="auto", perplexity=perplexity, random_state=seed
    ).fit_transform(x)
    return coords, y
