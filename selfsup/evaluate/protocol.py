"""The label-efficiency protocol: k-NN with all labels, linear probes with a fraction of them.

Smaller label fractions are noisy, so each is repeated on ``seeds`` different class-balanced
subsets and reported as mean and std; the full training set is probed once. All accuracies are
fractions in [0, 1].
"""

from __future__ import annotations

import statistics
from typing import Any, Sequence

import torch

from selfsup.errors import ConfigError, DataError
from selfsup.evaluate.knn import check_labelled_features, knn_accuracy
from selfsup.evaluate.linear import linear_probe, split_per_class


def balanced_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Indices of a class-balanced random subset of ``labels``.

    Each class keeps round(fraction × its count) examples (Python's round, half to even), at least
    one. Returns a sorted CPU LongTensor; deterministic under ``seed``.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"label fraction must be in (0, 1], got {fraction}")
    if labels.dim() != 1 or labels.numel() == 0:
        raise DataError(f"labels must be a non-empty 1-D tensor, got shape {tuple(labels.shape)}")
    subset, _ = split_per_class(labels, lambda size: max(1, round(fraction * size)), seed)
    return subset


def fraction_key(fraction: float) -> str:
    """The key a label fraction has in results: ``0.01 → "0.01"``, ``1 → "1.0"``."""
    return str(float(fraction))


def evaluate_features(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    seeds: int = 3,
    knn_k: int = 200,
    knn_temperature: float = 0.1,
) -> dict[str, Any]:
    """k-NN accuracy with all labels and linear-probe accuracy per label fraction.

    Returns ``knn_top1`` (float); ``linear_top1`` and ``linear_top1_std`` mapping
    :func:`fraction_key` → mean and population std over the runs; ``linear_runs`` mapping the same
    keys → the per-seed accuracies; and ``linear_weight_decay`` → the per-seed chosen decays.
    Fraction 1.0 is one run; each smaller fraction runs on ``seeds`` subsets (seeds 0, 1, …).
    Every probe standardises with the statistics of all training features (no labels needed).
    """
    check_labelled_features(train_feats, train_labels, num_classes, "train_feats")
    check_labelled_features(test_feats, test_labels, num_classes, "test_feats")
    if seeds < 1:
        raise ConfigError(f"seeds must be at least 1, got {seeds}")

    result: dict[str, Any] = {
        "knn_top1": knn_accuracy(
            train_feats, train_labels, test_feats, test_labels, num_classes, knn_k, knn_temperature
        ),
        "linear_top1": {},
        "linear_top1_std": {},
        "linear_runs": {},
        "linear_weight_decay": {},
    }
    for fraction in fractions:
        key = fraction_key(fraction)
        accuracies, decays = [], []
        for seed in range(1 if fraction == 1 else seeds):
            subset = balanced_subset(train_labels, fraction, seed).to(train_feats.device)
            probe = linear_probe(
                train_feats[subset],
                train_labels[subset],
                test_feats,
                test_labels,
                num_classes,
                seed=seed,
                standardise_with=train_feats,  # needs no labels: use every training row
            )
            accuracies.append(probe["accuracy"])
            decays.append(probe["weight_decay"])
        result["linear_top1"][key] = statistics.fmean(accuracies)
        result["linear_top1_std"][key] = statistics.pstdev(accuracies)
        result["linear_runs"][key] = accuracies
        result["linear_weight_decay"][key] = decays
    return result


def evaluate_feature_sets(
    sets: dict[str, tuple[torch.Tensor, torch.Tensor]],
    train_labels: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    **protocol: Any,
) -> dict[str, dict[str, Any]]:
    """:func:`evaluate_features` for each named (train_feats, test_feats) pair.

    For comparing the self-supervised encoder with baselines on the same labels, e.g.
    ``{"ssl": ..., "raw": ..., "random_init": ...}``. ``protocol`` holds the keyword arguments of
    :func:`evaluate_features` (fractions, seeds, knn_k, knn_temperature).
    """
    return {
        name: evaluate_features(train, train_labels, test, test_labels, num_classes, **protocol)
        for name, (train, test) in sets.items()
    }
