"""Weighted k-nearest-neighbour classification on frozen features (InstDisc / DINO protocol).

Every query votes with its k most cosine-similar training features, each weighted by
exp(similarity / T); the class with the largest summed weight wins. Queries are processed in
chunks, so memory stays O(chunk_size × N_train) and the whole thing runs on the features' device.

k = 200, the protocol's usual value, suits large data sets; on a few thousand items with small
classes it lets other classes outvote a query's true class-mates. So evaluation chooses k from the
training labels alone (:func:`choose_knn_k`): leave-one-out accuracy over ``KNN_K_GRID``, capped at
``KNN_K_CLASS_FACTOR`` × the smallest class's count.

Also home of :func:`check_labelled_features`, the input check every evaluation protocol shares.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from selfsup.errors import ConfigError, DataError
from selfsup.evaluate.sampling import at_most_per_class

# k is chosen from these by leave-one-out on the training labels (choose_knn_k); 200 is the
# InstDisc/DINO default on large data sets, the small ones suit data sets of a few thousand items
KNN_K_GRID = (5, 10, 20, 50, 100, 200)
KNN_K_CLASS_FACTOR = 2  # k ≤ this × the smallest class's training count
KNN_SELECTION_QUERIES = 5000  # training rows classified by their neighbours to choose k


def check_labelled_features(
    feats: torch.Tensor, labels: torch.Tensor, num_classes: int, name: str = "features"
) -> None:
    """Raise DataError unless ``feats`` is (N, D) with N ≥ 1 and ``labels`` holds N class ids in
    [0, num_classes)."""
    if feats.dim() != 2 or feats.shape[0] == 0:
        raise DataError(
            f"{name} must be a non-empty (N, D) matrix, got shape {tuple(feats.shape)}; flatten "
            "the features first (feats.flatten(1))"
        )
    if labels.shape != (feats.shape[0],):
        raise DataError(
            f"{name} has {feats.shape[0]} rows but its labels have shape {tuple(labels.shape)}: "
            "pass one integer label per row"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise DataError(f"labels of {name} must be integer class ids, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(
            f"labels of {name} range over [{int(labels.min())}, {int(labels.max())}] but "
            f"num_classes is {num_classes}: labels must lie in [0, num_classes)"
        )


@torch.no_grad()
def knn_predict(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    query_feats: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Predicted class of each query row by temperature-weighted k-NN on cosine similarity.

    A ``k`` larger than the training bank uses the whole bank. Ties in the class scores go to the
    lowest class id. Returns a LongTensor of shape (N_query,) on ``query_feats``' device.
    """
    check_labelled_features(train_feats, train_labels, num_classes, "train_feats")
    if query_feats.dim() != 2 or query_feats.shape[1] != train_feats.shape[1]:
        raise DataError(
            f"query_feats must be (N, {train_feats.shape[1]}) like train_feats, got "
            f"{tuple(query_feats.shape)}"
        )
    _check_settings(k, temperature, chunk_size)
    device = query_feats.device
    bank = F.normalize(train_feats.to(device, torch.float32), dim=1)
    bank_labels = train_labels.to(device, torch.long)
    k = min(k, bank.shape[0])

    predictions = []
    for queries in query_feats.split(chunk_size):
        similarity = F.normalize(queries.to(torch.float32), dim=1) @ bank.T
        top_similarity, top_index = similarity.topk(k, dim=1)
        predictions.append(_vote(top_similarity, bank_labels[top_index], temperature, num_classes))
    return torch.cat(predictions)


def _check_settings(k: int, temperature: float, chunk_size: int) -> None:
    if k < 1 or temperature <= 0 or chunk_size < 1:
        raise ConfigError(
            f"k-NN needs k >= 1, temperature > 0 and chunk_size >= 1, got k={k}, "
            f"temperature={temperature}, chunk_size={chunk_size}"
        )


def _vote(top_similarity: torch.Tensor, top_labels: torch.Tensor, temperature: float,
          num_classes: int) -> torch.Tensor:
    """The class each row's neighbours (similarities in descending order, their labels) vote for,
    each weighted by exp(similarity / T)."""
    # Shifting by each row's best similarity leaves the vote unchanged and keeps exp() finite
    # for small temperatures (exp(1 / 0.01) overflows float32).
    weights = ((top_similarity - top_similarity[:, :1]) / temperature).exp()
    scores = torch.zeros(len(top_labels), num_classes, device=top_labels.device)
    scores.scatter_add_(1, top_labels, weights)
    return scores.argmax(dim=1)


def knn_k_limit(labels: torch.Tensor) -> int:
    """The largest k :func:`choose_knn_k` may pick: ``KNN_K_CLASS_FACTOR`` × the training count of
    the smallest class present. Past it, a query of that class is outvoted by other classes'
    neighbours even when all its class-mates are the nearest."""
    counts = torch.bincount(labels.cpu())
    return KNN_K_CLASS_FACTOR * int(counts[counts > 0].min())


@torch.no_grad()
def choose_knn_k(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    num_classes: int,
    temperature: float = 0.1,
    grid: Sequence[int] = KNN_K_GRID,
    seed: int = 0,
    chunk_size: int = 1024,
    groups: Optional[torch.Tensor] = None,
) -> dict[str, Any]:
    """Choose k for :func:`knn_predict` from the training labels alone, by leave-one-out.

    Up to ``KNN_SELECTION_QUERIES`` training rows (a class-stratified random sample drawn with
    ``seed``) are each classified by the other training rows (with ``groups``, one int id per
    row: by the rows of other groups, as the test split keeps groups apart), with every k of
    ``grid`` up to
    :func:`knn_k_limit`; the k of the highest accuracy wins, ties going to the larger k (the
    smoother vote). When no k of the grid is within the limit, the limit itself is used.
    Returns ``{"k": the chosen k, "accuracy": {k: leave-one-out accuracy}}``.
    """
    check_labelled_features(train_feats, train_labels, num_classes, "train_feats")
    _check_settings(min(grid, default=0), temperature, chunk_size)
    limit = knn_k_limit(train_labels)
    candidates = sorted({k for k in grid if k <= limit} or {limit})
    candidates = [k for k in candidates if k < len(train_feats)] or [max(1, len(train_feats) - 1)]
    if len(train_feats) < 2:  # no neighbour to leave one out for
        return {"k": candidates[0], "accuracy": {}}
    device = train_feats.device
    bank = F.normalize(train_feats.to(torch.float32), dim=1)
    bank_labels = train_labels.to(device, torch.long)
    queries = at_most_per_class(train_labels, KNN_SELECTION_QUERIES, seed).to(device)
    correct = {k: 0 for k in candidates}
    widest = max(candidates)
    group_of = None if groups is None else groups.to(device)
    for chunk in queries.split(chunk_size):
        similarity = bank[chunk] @ bank.T
        similarity[torch.arange(len(chunk), device=device), chunk] = -math.inf  # leave itself out
        if groups is not None:  # and its group
            similarity.masked_fill_(group_of[chunk, None] == group_of[None, :], -math.inf)
        top_similarity, top_index = similarity.topk(widest, dim=1)
        top_labels = bank_labels[top_index]
        for k in candidates:
            predicted = _vote(top_similarity[:, :k], top_labels[:, :k], temperature, num_classes)
            correct[k] += int((predicted == bank_labels[chunk]).sum())
    accuracy = {k: correct[k] / len(queries) for k in candidates}
    best = max(candidates, key=lambda k: (accuracy[k], k))
    return {"k": best, "accuracy": accuracy}


def knn_accuracy(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> float:
    """Fraction of ``test_feats`` that :func:`knn_predict` classifies correctly, in [0, 1]."""
    check_labelled_features(test_feats, test_labels, num_classes, "test_feats")
    predicted = knn_predict(
        train_feats, train_labels, test_feats, num_classes, k, temperature, chunk_size
    )
    return float((predicted == test_labels.to(predicted.device)).float().mean())


def online_knn_k(k: int | str, bank_labels: torch.Tensor) -> int:
    """The k of the trainer's online probe, one k for the whole run so its curve compares epochs:
    ``k`` itself, or for ``"auto"`` the largest of ``KNN_K_GRID`` capped by :func:`knn_k_limit` of
    the bank; never more than the bank holds."""
    if k == "auto":
        k = min(max(KNN_K_GRID), knn_k_limit(bank_labels))
    return max(1, min(int(k), len(bank_labels)))
