"""Evaluation protocols on frozen features: weighted k-NN, linear probes, label fractions, t-SNE."""

from selfsup.evaluate.knn import check_labelled_features, knn_accuracy, knn_predict
from selfsup.evaluate.linear import linear_probe
from selfsup.evaluate.protocol import (
    balanced_subset,
    evaluate_feature_sets,
    evaluate_features,
    fraction_key,
)
from selfsup.evaluate.tsne import tsne_embedding

__all__ = [
    "balanced_subset",
    "check_labelled_features",
    "evaluate_feature_sets",
    "evaluate_features",
    "fraction_key",
    "knn_accuracy",
    "knn_predict",
    "linear_probe",
    "tsne_embedding",
]
