"""Collapse diagnostics: embedding metrics and a monitor that turns them into warnings."""

from selfsup.health.metrics import (
    alignment,
    effective_rank,
    embedding_std,
    health_metrics,
    mean_cosine,
    mean_cosine_centred,
    singular_spectrum,
    uniformity,
)
from selfsup.health.monitor import HealthMonitor, LossProbeDivergence, collapse_warnings

__all__ = [
    "HealthMonitor",
    "LossProbeDivergence",
    "alignment",
    "collapse_warnings",
    "effective_rank",
    "embedding_std",
    "health_metrics",
    "mean_cosine",
    "mean_cosine_centred",
    "singular_spectrum",
    "uniformity",
]
