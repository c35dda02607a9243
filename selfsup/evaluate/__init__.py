"""Evaluation protocols on frozen features: weighted k-NN, linear probes, label fractions, t-SNE."""

from selfsup.evaluate.knn import check_labelled_features, choose_knn_k, knn_accuracy, knn_predict
from selfsup.evaluate.linear import linear_probe
from selfsup.evaluate.protocol import (
    evaluate_feature_sets,
    evaluate_features,
    fraction_key,
    stratified_subset,
)
from selfsup.evaluate.tsne import tsne_embedding

__all__ = [
    "check_labelled_features",
    "choose_knn_k",
    "evaluate_feature_sets",
    "evaluate_features",
    "fraction_key",
    "knn_accuracy",
    "knn_predict",
    "linear_probe",
    "stratified_subset",
    "tsne_embedding",
]
