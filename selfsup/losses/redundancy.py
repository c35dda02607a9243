"""Redundancy-reduction losses: Barlow Twins and VICReg.

Both compare two views' embeddings z1, z2 of shape (N, D) through per-dimension statistics of the
whole batch (means, variances, cross-correlations or covariances), so unlike a per-sample loss they
cannot be computed on part of a batch and averaged.

Distributed training: ``gather`` concatenates a tensor across processes in rank order *with*
gradients (the same hook as the contrastive losses: an all-gather whose backward sums the
gradient over processes and returns each process its own slice). What is gathered:

* Barlow Twins: z1 and z2 in full; the standardisation needs the global per-dimension mean and
  variance, and the cross-correlation is an average over the global batch.
* VICReg: z1 and z2 for the variance and covariance terms (global variances and covariances); the
  invariance term is a per-sample mean, so it stays local — averaged over processes of equal batch
  size it is the global mean (this is also what the reference implementation does).

Every process then holds the same global statistics. With ``gather=None`` the batch is the whole
batch and nothing changes.

Precision: the statistics are computed in float32 even under bf16 autocast. bf16 keeps 8 bits of
mantissa (about 3 significant digits): a cross-correlation C_ii ≈ 1 is then only known to ±0.004,
so (1 − C_ii)² is rounding noise, the many small off-diagonal entries (≈ 1/√N) lose most of their
digits, and a variance near the hinge at 1 flips sides. Casting the inputs is not enough because
autocast would cast the matmuls back to bf16, so autocast is switched off inside the losses.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from selfsup.errors import DataError
from selfsup.losses.contrastive import Gather


def off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    """The n(n − 1) off-diagonal entries of a square (n, n) matrix, as a flat vector.

    Dropping the last element and viewing the rest as (n − 1, n + 1) puts every diagonal entry in
    column 0, so slicing that column off leaves exactly the off-diagonal entries (no mask, no copy
    of the diagonal, and no cancellation as with ``sum(all²) − sum(diag²)``).
    """
    n = matrix.shape[0]
    return matrix.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def _checked_pair(z1: torch.Tensor, z2: torch.Tensor, loss: str) -> None:
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise DataError(f"{loss} needs two (N, D) embedding batches of the same shape, got "
                        f"{tuple(z1.shape)} and {tuple(z2.shape)}")


def _checked_batch(z: torch.Tensor, loss: str) -> None:
    if z.shape[0] < 2:
        raise DataError(f"{loss} estimates per-dimension variances over the batch and needs at least "
                        f"2 samples, got {z.shape[0]}; increase train.batch_size")


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambda_offdiag: float = 5e-3,
                      gather: Optional[Gather] = None, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins' redundancy-reduction loss (Zbontar et al. 2021, eq. 1–2).

    Each dimension is standardised over the batch (mean 0, biased variance 1, like a BatchNorm
    without affine parameters; ``eps`` is added to the variance), then with the cross-correlation
    C = z1ᵀ z2 / N (a D × D matrix)::

        L = Σ_i (1 − C_ii)² + λ Σ_i Σ_{j≠i} C_ij²

    The first sum makes each dimension invariant to the augmentation, the second decorrelates the
    dimensions. Because of the standardisation the loss does not change when a dimension of either
    input is shifted or multiplied by a positive number (as long as its variance stays well above
    ``eps``).

    Scale with D: the off-diagonal sum has D(D − 1) terms against D on the diagonal, and for
    uncorrelated dimensions each C_ij² ≈ 1/N, so the second term grows like λ·D²/N while the
    first grows like D. The paper's λ = 5e-3 was chosen for D = 8192; at other widths λ·D (not λ)
    is what keeps the balance, though the paper found results insensitive over a wide range.
    """
    _checked_pair(z1, z2, "barlow_twins_loss")
    with torch.autocast(z1.device.type, enabled=False):
        z1, z2 = z1.float(), z2.float()
        if gather is not None:
            z1, z2 = gather(z1), gather(z2)
        _checked_batch(z1, "barlow_twins_loss")
        batch = z1.shape[0]
        c = _standardise(z1, eps).T @ _standardise(z2, eps) / batch
        on_diagonal = (1 - c.diagonal()).pow(2).sum()
        return on_diagonal + lambda_offdiag * off_diagonal(c).pow(2).sum()


def _standardise(z: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-dimension batch standardisation with the biased variance, as BatchNorm does."""
    return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + eps)


class VICRegTerms(NamedTuple):
    """VICReg's weighted total and its three unweighted terms (all scalars)."""

    total: torch.Tensor
    invariance: torch.Tensor
    variance: torch.Tensor
    covariance: torch.Tensor


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim_coeff: float = 25.0, std_coeff: float = 25.0,
                cov_coeff: float = 1.0, eps: float = 1e-4,
                gather: Optional[Gather] = None) -> VICRegTerms:
    """VICReg's variance-invariance-covariance loss (Bardes et al. 2022, eq. 1–6).

    With Var the unbiased per-dimension variance over the batch and Cov(Z) the unbiased D × D
    covariance matrix of the centred embeddings::

        invariance s = (1 / (N·D)) Σ_n Σ_d (z1_nd − z2_nd)²                 (mean squared error)
        v(Z)         = (1 / D) Σ_d max(0, 1 − sqrt(Var(Z_d) + eps))           (hinge on the std)
        c(Z)         = (1 / D) Σ_{i≠j} Cov(Z)_ij²
        variance     = (v(Z1) + v(Z2)) / 2
        covariance   = c(Z1) + c(Z2)
        total        = sim_coeff·s + std_coeff·variance + cov_coeff·covariance

    The halving of the variance term follows the authors' reference code (main_vicreg.py), which
    produced the paper's results with the coefficients 25/25/1; the paper's Algorithm 1 sums the
    two views' variance terms instead, which is the same as std_coeff twice as large.
    """
    _checked_pair(z1, z2, "vicreg_loss")
    with torch.autocast(z1.device.type, enabled=False):
        z1, z2 = z1.float(), z2.float()
        invariance = F.mse_loss(z1, z2)
        if gather is not None:
            z1, z2 = gather(z1), gather(z2)
        _checked_batch(z1, "vicreg_loss")
        variance = (_std_hinge(z1, eps) + _std_hinge(z2, eps)) / 2
        covariance = _offdiagonal_covariance(z1) + _offdiagonal_covariance(z2)
        total = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
        return VICRegTerms(total, invariance, variance, covariance)


def _std_hinge(z: torch.Tensor, eps: float) -> torch.Tensor:
    """Mean over dimensions of max(0, 1 − std): pushes every dimension's std up to at least 1.

    ``eps`` keeps the gradient of the square root finite when a dimension has collapsed."""
    return F.relu(1 - torch.sqrt(z.var(dim=0) + eps)).mean()


def _offdiagonal_covariance(z: torch.Tensor) -> torch.Tensor:
    """Sum of squared off-diagonal covariances, divided by D."""
    centred = z - z.mean(dim=0)
    covariance = centred.T @ centred / (z.shape[0] - 1)
    return off_diagonal(covariance).pow(2).sum() / z.shape[1]
