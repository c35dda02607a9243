"""Weighted k-nearest-neighbour classification on frozen features (InstDisc / DINO protocol).

Every query votes with its k most cosine-similar training features, each weighted by
exp(similarity / T); the class with the largest summed weight wins. Queries are processed in
chunks, so memory stays O(chunk_size × N_train) and the whole thing runs on the features' device.

Also home of :func:`check_labelled_features`, the input check every evaluation protocol shares.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.errors import ConfigError, DataError


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
    if k < 1 or temperature <= 0 or chunk_size < 1:
        raise ConfigError(
            f"k-NN needs k >= 1, temperature > 0 and chunk_size >= 1, got k={k}, "
            f"temperature={temperature}, chunk_size={chunk_size}"
        )
    device = query_feats.device
    bank = F.normalize(train_feats.to(device, torch.float32), dim=1)
    bank_labels = train_labels.to(device, torch.long)
    k = min(k, bank.shape[0])

    predictions = []
    for queries in query_feats.split(chunk_size):
        similarity = F.normalize(queries.to(torch.float32), dim=1) @ bank.T
        top_similarity, top_index = similarity.topk(k, dim=1)
        # Shifting by each row's best similarity leaves the vote unchanged and keeps exp() finite
        # for small temperatures (exp(1 / 0.01) overflows float32).
        weights = ((top_similarity - top_similarity[:, :1]) / temperature).exp()
        scores = torch.zeros(len(queries), num_classes, device=device)
        scores.scatter_add_(1, bank_labels[top_index], weights)
        predictions.append(scores.argmax(dim=1))
    return torch.cat(predictions)


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
