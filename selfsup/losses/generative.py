"""Generative losses: reconstruction error, the VAE's KL term, and sparsity penalties."""

from __future__ import annotations

import torch


def reconstruction_error(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over each image's pixels and channels, averaged over the batch."""
    diff = reconstruction.float() - target.float()
    return diff.square().flatten(1).sum(1).mean()


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) per sample, in closed form: −½ Σ_j (1 + log σ²_j − μ_j² − σ²_j).

    ``mu`` and ``logvar`` are (B, latent); the result is (B,). It is 0 exactly at μ = 0, σ = 1.
    """
    mu, logvar = mu.float(), logvar.float()
    return -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(1)


def l1_sparsity(code: torch.Tensor) -> torch.Tensor:
    """Σ_j |code_j| per sample, averaged over the batch."""
    return code.float().abs().sum(1).mean()


def kl_sparsity(code: torch.Tensor, target_rate: float, eps: float = 1e-6) -> torch.Tensor:
    """Σ_j KL(ρ ‖ ρ̂_j) = Σ_j ρ log(ρ/ρ̂_j) + (1−ρ) log((1−ρ)/(1−ρ̂_j)), with ρ̂_j the batch mean
    of unit j of a code in (0, 1) (sigmoid activations) and ρ = ``target_rate`` (Ng 2011).

    ρ̂ is clamped to [eps, 1 − eps] so a saturated unit gives a large, finite penalty.
    """
    rho = target_rate
    rate = code.float().mean(0).clamp(eps, 1 - eps)
    return (rho * torch.log(rho / rate) + (1 - rho) * torch.log((1 - rho) / (1 - rate))).sum()
