"""Collapse diagnostics: pure functions of a batch of embeddings ``z`` of shape (N, D).

Every function computes in float64 on the tensor's own device (the batches the monitor looks at are
small, and the extra precision keeps the entropy and cosine identities exact enough to test), and
returns plain Python numbers so the results go straight into ``metrics.jsonl``.

References:
  RankMe: Garrido et al., "RankMe: Assessing the downstream performance of pretrained
    self-supervised representations by their rank", ICML 2023.
  Std of normalised embeddings: Chen & He, "Exploring Simple Siamese Representation Learning",
    CVPR 2021, section 4.1.
  Alignment and uniformity: Wang & Isola, "Understanding Contrastive Representation Learning
    through Alignment and Uniformity on the Hypersphere", ICML 2020.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F

from selfsup.errors import DataError

# RankMe's epsilon: keeps log p finite for zero singular values; it adds only about
# D · 1.6e-6 to the entropy, so the rank of k equal singular values stays k to five digits.
RANKME_EPS = 1e-7
# health_metrics estimates uniformity on at most this many rows: its pairwise distances grow with
# the square of the rows (4,096 rows of 4,096-d features: 18 s on two cores), and 1,024 rows
# already give 523,776 pairs
UNIFORMITY_MAX_ROWS = 1024


def _as_batch(z: torch.Tensor, name: str = "z", min_rows: int = 1) -> torch.Tensor:
    """Check that ``z`` is a finite (N, D) batch of at least ``min_rows`` rows; return float64."""
    if not isinstance(z, torch.Tensor):
        raise DataError(f"{name} must be a torch.Tensor of shape (N, D), got {type(z).__name__}")
    if z.dim() != 2:
        raise DataError(
            f"{name} must have shape (N, D), got {tuple(z.shape)}; flatten the features first "
            "(e.g. z.flatten(1))"
        )
    if z.shape[0] < min_rows or z.shape[1] < 1:
        raise DataError(
            f"{name} has shape {tuple(z.shape)}; these statistics need at least {min_rows} "
            "embeddings of at least 1 dimension: pass a larger batch"
        )
    z = z.detach().to(torch.float64)
    if not torch.isfinite(z).all():
        raise DataError(f"{name} contains NaN or infinite values; the model has diverged")
    return z


def singular_spectrum(z: torch.Tensor) -> torch.Tensor:
    """Singular values of the raw (uncentred) embedding matrix ``z``, in descending order.

    ``z`` is NOT centred: RankMe defines the rank of the embeddings as produced, so a batch that
    has collapsed onto one (non-zero) point shows a single dominant singular value. There are
    min(N, D) values, returned as float64 on ``z``'s device.
    """
    return torch.linalg.svdvals(_as_batch(z))


def effective_rank(z: torch.Tensor) -> float:
    """RankMe effective rank of the raw (uncentred) embeddings.

    With singular values σ_k, p_k = σ_k / Σσ + ε and rank = exp(−Σ p_k log p_k). The value lies in
    [1, min(N, D)] and equals k exactly when z has k equal non-zero singular values (up to ε);
    unequal singular values give less than the algebraic rank. An all-zero batch has rank 0.
    """
    return _rank_from_spectrum(singular_spectrum(z))


def _rank_from_spectrum(sigma: torch.Tensor) -> float:
    """RankMe's entropy of the normalised singular values, exponentiated."""
    total = sigma.sum()
    if total == 0:
        return 0.0
    p = sigma / total + RANKME_EPS
    return math.exp(float(-(p * p.log()).sum()))


def embedding_std(z: torch.Tensor) -> float:
    """Mean over dimensions of the per-dimension std of the L2-normalised embeddings.

    SimSiam's collapse metric: about 1/√D for healthy isotropic embeddings, 0 when every embedding
    points the same way. The std is the population std (no Bessel correction), so a single
    embedding gives 0 rather than NaN.
    """
    unit = F.normalize(_as_batch(z), dim=1)
    return float(unit.std(dim=0, correction=0).mean())


def mean_cosine(z: torch.Tensor) -> float:
    """Mean cosine similarity over the N(N−1) ordered pairs of distinct embeddings (i ≠ j).

    Uses ||Σ u_i||² = Σ_i ||u_i||² + Σ_{i≠j} u_i·u_j for the normalised rows u_i, so it costs
    O(N·D) instead of building the N×N similarity matrix. All-zero rows count as cosine 0.
    """
    unit = F.normalize(_as_batch(z, min_rows=2), dim=1)
    n = unit.shape[0]
    total = unit.sum(dim=0)
    off_diagonal = total.dot(total) - unit.pow(2).sum()
    return float(off_diagonal / (n * (n - 1)))


def mean_cosine_centred(z: torch.Tensor) -> float:
    """:func:`mean_cosine` of the batch after subtracting its mean embedding.

    Unlike the raw cosine it ignores a common offset, so non-negative (ReLU) features, whose raw
    cosines are high even when healthy, score near −1/(N−1) unless the batch is degenerate.
    """
    z = _as_batch(z, min_rows=2)
    return mean_cosine(z - z.mean(dim=0, keepdim=True))


def alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2) -> float:
    """Alignment E ||f(x) − f(y)||^α over positive pairs (row i of z1 with row i of z2).

    Both batches are L2-normalised first, so the value lies in [0, 2^α]; lower is better aligned.
    """
    a = _as_batch(z1, "z1")
    b = _as_batch(z2, "z2")
    if a.shape != b.shape:
        raise DataError(
            f"alignment needs paired embeddings of the same shape, got z1 {tuple(a.shape)} and "
            f"z2 {tuple(b.shape)}: pass the two views of the same inputs"
        )
    distance = (F.normalize(a, dim=1) - F.normalize(b, dim=1)).norm(dim=1)
    return float(distance.pow(alpha).mean())


def uniformity(z: torch.Tensor, t: float = 2) -> float:
    """Uniformity log E exp(−t ||f(x) − f(y)||²) over distinct pairs of normalised embeddings.

    Lower (more negative) is more uniform; a collapsed batch scores 0. Computed with logsumexp over
    the strict upper triangle of the pairwise squared distances, so it stays finite for large t.
    """
    unit = F.normalize(_as_batch(z, min_rows=2), dim=1)
    squared = torch.pdist(unit).pow(2)
    return float(torch.logsumexp(-t * squared, dim=0) - math.log(squared.numel()))


def health_metrics(z: torch.Tensor, z_pair: Optional[torch.Tensor] = None) -> dict[str, Any]:
    """All collapse diagnostics of one batch, as JSON-ready numbers.

    Keys: effective_rank (RankMe of the raw embeddings); effective_rank_centred (the same for the
    batch minus its mean: how many directions the embeddings vary in, blind to a common offset
    such as the positive mean of ReLU features); embedding_std; embedding_std_x_sqrt_dim (≈ 1 when
    healthy and isotropic, → 0 when collapsed); mean_cosine (raw); mean_cosine_centred;
    uniformity (of the first ``UNIFORMITY_MAX_ROWS`` rows); dim; num_samples; spectrum (raw
    singular values normalised to sum to 1,
    descending); and alignment when ``z_pair`` (a second view of the same inputs) is given.
    """
    z = _as_batch(z, min_rows=2)
    centred = z - z.mean(dim=0, keepdim=True)
    sigma = singular_spectrum(z)
    total = float(sigma.sum())
    dim = z.shape[1]
    std = embedding_std(z)
    metrics: dict[str, Any] = {
        "effective_rank": _rank_from_spectrum(sigma),
        "effective_rank_centred": effective_rank(centred),
        "embedding_std": std,
        "embedding_std_x_sqrt_dim": std * math.sqrt(dim),
        "mean_cosine": mean_cosine(z),
        "mean_cosine_centred": mean_cosine(centred),
        "uniformity": uniformity(z[:UNIFORMITY_MAX_ROWS]),
        "dim": dim,
        "num_samples": z.shape[0],
        "spectrum": (sigma / total).tolist() if total > 0 else sigma.tolist(),
    }
    if z_pair is not None:
        metrics["alignment"] = alignment(z, z_pair)
    return metrics
