"""The label-efficiency protocol: k-NN with all labels, linear probes with a fraction of them.

Smaller label fractions are noisy, so each is repeated on ``seeds`` different stratified subsets
(each class keeps the same fraction of its items, so class shares stay as in the training split)
and reported as mean and std; the full training set is probed once. k-NN's k is chosen from the
training labels (:func:`~selfsup.evaluate.knn.choose_knn_k`) unless a fixed k is given. All
accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import statistics
from typing import Any, Optional, Sequence

import torch

from selfsup.errors import ConfigError, DataError
from selfsup.evaluate.knn import check_labelled_features, choose_knn_k, knn_accuracy
from selfsup.evaluate.linear import linear_probe
from selfsup.evaluate.sampling import split_per_class


def stratified_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Indices of a stratified random subset of ``labels``: per-class proportional, not equal
    per class.

    Each class keeps round(fraction × its count) examples (Python's round, half to even), at least
    one, so the subset's class shares follow the labels'. Returns a sorted CPU LongTensor;
    deterministic under ``seed``.
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
    knn_k: int | str = "auto",
    knn_temperature: float = 0.1,
    train_groups: Optional[torch.Tensor] = None,
) -> dict[str, Any]:
    """k-NN accuracy with all labels and linear-probe accuracy per label fraction.

    Returns ``knn_top1`` (float) and ``knn_k`` (the k used: ``knn_k``, or with ``"auto"`` the one
    :func:`choose_knn_k` picks, whose leave-one-out accuracies are then in ``knn_k_selection``);
    ``linear_top1`` and ``linear_top1_std`` mapping :func:`fraction_key` → mean and population std
    over the runs; ``linear_runs`` mapping the same keys → the per-seed accuracies;
    ``linear_weight_decay`` and ``linear_scaling`` → the per-seed chosen decays and scalings.
    Fraction 1.0 is one run; each smaller fraction runs on ``seeds`` subsets (seeds 0, 1, …).
    Every probe scales with the statistics of all training features (no labels needed).
    ``train_groups`` (one int id per training row: a protein family, the reads of one gene) keep
    groups apart wherever k and the probe's settings are validated, as the test split does.
    """
    check_labelled_features(train_feats, train_labels, num_classes, "train_feats")
    check_labelled_features(test_feats, test_labels, num_classes, "test_feats")
    if seeds < 1:
        raise ConfigError(f"seeds must be at least 1, got {seeds}")

    result: dict[str, Any] = {}
    if knn_k == "auto":
        selection = choose_knn_k(train_feats, train_labels, num_classes, knn_temperature,
                                 groups=train_groups)
        knn_k = selection["k"]
        result["knn_k_selection"] = {str(k): acc for k, acc in selection["accuracy"].items()}
    elif not isinstance(knn_k, int) or isinstance(knn_k, bool) or knn_k < 1:
        raise ConfigError(f"knn_k must be a whole number >= 1 or 'auto', got {knn_k!r}")
    result.update({
        "knn_top1": knn_accuracy(
            train_feats, train_labels, test_feats, test_labels, num_classes, knn_k, knn_temperature
        ),
        "knn_k": knn_k,
        "linear_top1": {},
        "linear_top1_std": {},
        "linear_runs": {},
        "linear_weight_decay": {},
        "linear_scaling": {},
    })
    for fraction in fractions:
        key = fraction_key(fraction)
        accuracies, decays, scalings = [], [], []
        for seed in range(1 if fraction == 1 else seeds):
            subset = stratified_subset(train_labels, fraction, seed).to(train_feats.device)
            probe = linear_probe(
                train_feats[subset],
                train_labels[subset],
                test_feats,
                test_labels,
                num_classes,
                seed=seed,
                standardise_with=train_feats,  # needs no labels: use every training row
                groups=None if train_groups is None else train_groups[subset.cpu()],
            )
            accuracies.append(probe["accuracy"])
            decays.append(probe["weight_decay"])
            scalings.append(probe["scaling"])
        result["linear_top1"][key] = statistics.fmean(accuracies)
        result["linear_top1_std"][key] = statistics.pstdev(accuracies)
        result["linear_runs"][key] = accuracies
        result["linear_weight_decay"][key] = decays
        result["linear_scaling"][key] = scalings
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
    :func:`evaluate_features` (fractions, seeds, knn_k, knn_temperature, train_groups).
    """
    return {
        name: evaluate_features(train, train_labels, test, test_labels, num_classes, **protocol)
        for name, (train, test) in sets.items()
    }
