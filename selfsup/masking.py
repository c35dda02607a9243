"""Patch masking helpers shared by masked-image-modelling methods (MAE, and others to come).

Patches are numbered row-major in the patch grid. ``patchify`` lays every patch out as a flat
vector of p·p·C values ordered (row, column, channel), MAE's layout, and ``unpatchify`` inverts it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from selfsup.errors import ConfigError, DataError


class Masking(NamedTuple):
    """One random masking of a batch.

    keep: (B, n_keep) indices of the visible patches, in shuffled order.
    restore: (B, N) the inverse permutation: ``shuffled.gather(1, restore)`` puts tokens laid out
        as [kept..., masked...] back into grid order.
    mask: (B, N) bool, True where the patch is masked (hidden from the encoder).
    """

    keep: torch.Tensor
    restore: torch.Tensor
    mask: torch.Tensor


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """Patches left visible: round(N · (1 − ratio)), at least one so the encoder has input."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ConfigError(f"method.mask_ratio must be in [0, 1), got {mask_ratio}")
    return max(1, round(num_patches * (1.0 - mask_ratio)))


def random_masking(batch: int, num_patches: int, mask_ratio: float,
                   generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> Masking:
    """Mask ``mask_ratio`` of the ``num_patches`` patches of each of ``batch`` samples at random.

    Each sample gets its own uniformly random permutation (the argsort of uniform noise, as in MAE);
    its first n_keep entries are the visible patches. ``generator`` must live on ``device``.
    """
    n_keep = num_kept(num_patches, mask_ratio)
    noise = torch.rand(batch, num_patches, generator=generator, device=device)
    shuffle = noise.argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    # In shuffled order the first n_keep tokens are visible; map that pattern back to grid order.
    shuffled_mask = torch.arange(num_patches, device=noise.device).expand(batch, -1) >= n_keep
    mask = shuffled_mask.gather(1, restore)
    return Masking(shuffle[:, :n_keep], restore, mask)


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) → (B, N, p·p·C), patches row-major, each flattened as (row, column, channel)."""
    if images.ndim != 4:
        raise DataError(f"patchify expects (B, C, H, W) images, got shape {tuple(images.shape)}")
    batch, channels, height, width = images.shape
    p = patch_size
    if p < 1 or height % p or width % p:
        raise DataError(
            f"patchify: image size {height}×{width} is not a multiple of patch_size={p}; crop the "
            f"images to a multiple of the patch size first"
        )
    h, w = height // p, width // p
    patches = images.reshape(batch, channels, h, p, w, p).permute(0, 2, 4, 3, 5, 1)
    return patches.reshape(batch, h * w, p * p * channels)


def unpatchify(patches: torch.Tensor, patch_size: int,
               grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Inverse of ``patchify``: (B, N, p·p·C) → (B, C, h·p, w·p); ``grid`` (h, w) defaults to square."""
    if patches.ndim != 3:
        raise DataError(f"unpatchify expects (B, N, p·p·C) patches, got shape {tuple(patches.shape)}")
    batch, num_patches, dim = patches.shape
    p = patch_size
    if grid is None:
        side = round(num_patches ** 0.5)
        grid = (side, side)
    h, w = grid
    if h * w != num_patches or dim % (p * p):
        raise DataError(
            f"unpatchify: {num_patches} patches of {dim} values do not fit a {h}×{w} grid of "
            f"{p}×{p} patches; pass the grid (h, w) the patches came from"
        )
    channels = dim // (p * p)
    images = patches.reshape(batch, h, w, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return images.reshape(batch, channels, h * p, w * p)


def patch_mean_std(patches: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Each patch's mean and √(unbiased variance + eps), both (..., 1), over its last dimension."""
    return patches.mean(dim=-1, keepdim=True), (patches.var(dim=-1, keepdim=True) + eps).sqrt()


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Standardise every patch by its own mean and (unbiased) variance: (x − μ) / √(σ² + eps).

    MAE's ``norm_pix_loss`` target; it stresses local contrast (edges) over absolute intensity.
    """
    mean, std = patch_mean_std(patches, eps)
    return (patches - mean) / std
