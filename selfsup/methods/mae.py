"""Masked autoencoder (He et al. 2022): hide most patches, reconstruct their pixels.

A random 75% of the patches is dropped before the ViT encoder, so it only ever processes the
visible quarter. A light decoder gets the encoded visible tokens back in grid order, with a shared
learned mask token in every hidden slot and fixed 2-D sine-cosine position embeddings on all of
them, and predicts each patch's p·p·C pixels. The loss is the mean squared error on the masked
patches only, by default against pixels standardised per patch (``norm_pix_loss``), which the paper
found gives better representations. The targets are the view's pixels as the recipe gives them
(normalised floats).

Options, against the paper's ImageNet ViT-L values: mask ratio 0.75 (the same); decoder width
128, depth 2 and 4 heads instead of 512 / 8 / 16, since a 28×28 image has a few hundred pixels
and the encoders used here are ViT-Tiny sized (the paper shows that even a 1-block decoder works
for linear probing and fine-tuning); AdamW with betas (0.9, 0.95), base lr 1.5e-4 per 256 images
and weight decay 0.05 (the paper's), not yet tuned on Fashion-MNIST. Views: the "crop-flip"
recipe with one view (random resized crop and flip, as in the paper).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from selfsup.backbones.vit import INIT_STD, Block, VisionTransformer
from selfsup.errors import ConfigError
from selfsup.masking import (
    normalize_patches,
    patch_mean_std,
    patchify,
    random_masking,
    unpatchify,
)
from selfsup.methods.base import BuildContext, Method, NO_CONTEXT, StepOutput
from selfsup.registry import METHODS


@dataclass
class MAEOptions:
    mask_ratio: float = 0.75
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    decoder_mlp_ratio: float = 4.0
    norm_pix_loss: bool = True


def sincos_position_embedding(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings (MAE's), (h·w, dim), patches row-major.

    Half of the channels encode the row and half the column; each half is [sin(pos·ω), cos(pos·ω)]
    with frequencies ω_k = 1 / 10000^(k / (dim/4)), k = 0 … dim/4 − 1.
    """
    if dim % 4:
        raise ConfigError(f"method.decoder_dim={dim} must be a multiple of 4 (sine-cosine positions)")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid[0], dtype=torch.float64),
                                torch.arange(grid[1], dtype=torch.float64), indexing="ij")

    def encode(positions: torch.Tensor) -> torch.Tensor:
        angles = positions.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked patches of the per-patch mean squared error.

    pred, target: (B, N, P) patch pixels; mask: (B, N) bool, True where the loss applies.
    With nothing masked (mask_ratio 0, the baseline of the masking-speed benchmark) the model is
    a plain autoencoder of its patches and the loss covers every patch instead of being 0/0.
    """
    per_patch = (pred - target).pow(2).mean(dim=-1)
    weights = mask.to(per_patch.dtype)
    # With nothing masked every patch counts; chosen without a host sync or a graph break.
    weights = torch.where(weights.sum() > 0, weights, torch.ones_like(weights))
    return (per_patch * weights).sum() / weights.sum()


@METHODS.register("mae", "MAE: masked autoencoder, reconstruct the pixels of 75% hidden patches (ViT only)")
class MAE(Method):
    """Masked autoencoder; the health monitor watches the encoder's features of unmasked images
    (the inherited ``health_embeddings``: there is no projector)."""

    Options = MAEOptions
    view_recipe = "crop-flip"
    config_defaults = {"optim": {"name": "adamw", "lr": 1.5e-4, "weight_decay": 0.05,
                                 "betas": [0.9, 0.95]}}

    def __init__(self, encoder: nn.Module, options: MAEOptions | None = None,
                 context: BuildContext = NO_CONTEXT) -> None:
        if not isinstance(encoder, VisionTransformer):
            raise ConfigError(
                f"method.name=mae needs a Vision Transformer encoder that can skip masked patches; "
                f"set backbone.name to vit-tiny, vit-small or vit-base (got {type(encoder).__name__})"
            )
        super().__init__(encoder, context)
        self.options = o = options or MAEOptions()
        _check_options(o)
        channels = encoder.patch_embed.in_channels
        self.patch_dim = encoder.patch_size ** 2 * channels
        if o.norm_pix_loss and self.patch_dim < 2:
            raise ConfigError(
                f"method.norm_pix_loss standardises each patch, which needs at least 2 values; "
                f"1×1 patches of {channels} channel have one: raise backbone.patch_size or set "
                f"method.norm_pix_loss=false"
            )
        self.decoder_embed = nn.Linear(encoder.out_dim, o.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, o.decoder_dim))
        self.decoder_blocks = nn.ModuleList(
            Block(o.decoder_dim, o.decoder_heads, o.decoder_mlp_ratio) for _ in range(o.decoder_depth))
        self.decoder_norm = nn.LayerNorm(o.decoder_dim)
        self.decoder_pred = nn.Linear(o.decoder_dim, self.patch_dim)
        # Position embeddings for the grid the encoder was built for; other grids compute theirs.
        self.register_buffer("decoder_pos_embed", sincos_position_embedding(o.decoder_dim, encoder.grid),
                             persistent=False)
        self._init_decoder()

    def _init_decoder(self) -> None:
        nn.init.normal_(self.mask_token, std=INIT_STD)
        decoder = [self.decoder_embed, *self.decoder_blocks, self.decoder_norm, self.decoder_pred]
        for module in (m for part in decoder for m in part.modules()):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def _decoder_positions(self, grid: tuple[int, int]) -> torch.Tensor:
        if tuple(grid) == tuple(self.encoder.grid):
            return self.decoder_pos_embed
        return sincos_position_embedding(self.options.decoder_dim, grid).to(self.decoder_pos_embed.device)

    def decode(self, latent: torch.Tensor, restore: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Encoder output (B, 1 + n_keep, D), class token first and kept tokens in shuffled order →
        predicted pixels (B, N, p·p·C) for every patch in grid order."""
        tokens = self.decoder_embed(latent)
        cls, visible = tokens[:, :1], tokens[:, 1:]
        batch, num_patches = restore.shape
        hidden = self.mask_token.to(tokens.dtype).expand(batch, num_patches - visible.shape[1], -1)
        shuffled = torch.cat([visible, hidden], dim=1)
        in_grid_order = shuffled.gather(1, restore.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        # The class token has no position (a zero embedding, as in MAE).
        tokens = torch.cat([cls, in_grid_order + self._decoder_positions(grid).to(tokens.dtype)], dim=1)
        for block in self.decoder_blocks:
            tokens = block(tokens)
        return self.decoder_pred(self.decoder_norm(tokens))[:, 1:]

    def _grid(self, x: torch.Tensor) -> tuple[int, int]:
        p = self.encoder.patch_size
        return x.shape[-2] // p, x.shape[-1] // p

    def _patch_pixels(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The pixels the encoder's patches cover (it ignores a partial last row/column)."""
        p = self.encoder.patch_size
        return patchify(x[..., : grid[0] * p, : grid[1] * p], p)

    def _masked_forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        grid = self._grid(x)
        masking = random_masking(x.shape[0], grid[0] * grid[1], self.options.mask_ratio,
                                 generator=generator, device=x.device)
        latent = self.encoder.forward_tokens(x, masking.keep)
        return latent, self.decode(latent, masking.restore, grid), masking, grid

    def target(self, patches: torch.Tensor) -> torch.Tensor:
        """What the decoder learns to predict from the patch pixels (B, N, p·p·C)."""
        return normalize_patches(patches) if self.options.norm_pix_loss else patches

    def forward(self, views: list[torch.Tensor]) -> StepOutput:
        x = views[0]
        latent, pred, masking, grid = self._masked_forward(x)
        target = self.target(self._patch_pixels(x, grid))
        loss = mae_loss(pred.float(), target.float(), masking.mask)
        # The ratio actually used: n_keep is rounded, so it can differ slightly from the option.
        mask_ratio = 1.0 - masking.keep.shape[1] / masking.mask.shape[1]
        features = latent[:, 0] if self.encoder.pool == "cls" else latent[:, 1:].mean(dim=1)
        return StepOutput(loss=loss, embeddings=features, logs={"mask_ratio": mask_ratio})

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruct a batch under a random masking, for pictures.

        Returns ``(pred_images, mask_images)`` of the encoder's covered size (h·p, w·p):
        pred_images (B, C, h·p, w·p) holds the input's pixels on visible patches and the decoder's
        predictions on masked ones (with ``norm_pix_loss`` mapped back to pixels with each true
        patch's mean and variance, as the MAE paper's figures do); mask_images (B, 1, h·p, w·p) is
        1 on masked pixels and 0 on visible ones, so ``x * (1 - mask_images)`` is what the encoder saw.
        """
        _, pred, masking, grid = self._masked_forward(x, generator)
        pixels = self._patch_pixels(x, grid).to(pred.dtype)
        if self.options.norm_pix_loss:
            mean, std = patch_mean_std(pixels)
            pred = pred * std + mean
        mask = masking.mask.unsqueeze(-1)
        filled = torch.where(mask, pred, pixels)
        p = self.encoder.patch_size
        mask_images = unpatchify(mask.to(pred.dtype).expand(-1, -1, p * p), p, grid)
        return unpatchify(filled, p, grid), mask_images

    @torch.no_grad()
    def reconstruction_panels(self, x: torch.Tensor, generator: torch.Generator | None = None
                              ) -> dict[str, torch.Tensor]:
        """The :class:`~selfsup.methods.base.Reconstructs` columns: the input cut to the pixels
        the patch grid covers, the reconstruction (:meth:`reconstruct`) and its mask."""
        filled, mask = self.reconstruct(x, generator)
        covered = x[..., : filled.shape[-2], : filled.shape[-1]]
        return {"original": covered, "reconstruction": filled, "mask": mask}

    def reconstruction_title(self, hidden: Optional[float] = None) -> str:
        title = "MAE reconstructions" + ("" if hidden is None else f", {hidden:.0%} of the patches hidden")
        if self.options.norm_pix_loss:
            title += ("\n(patch-normalised predictions mapped back with each original patch's mean "
                      "and std)")
        return title


def _check_options(o: MAEOptions) -> None:
    if o.decoder_depth < 1 or o.decoder_heads < 1 or o.decoder_mlp_ratio <= 0:
        raise ConfigError(
            f"method.decoder_depth ({o.decoder_depth}), decoder_heads ({o.decoder_heads}) and "
            f"decoder_mlp_ratio ({o.decoder_mlp_ratio}) must be positive"
        )
    if o.decoder_dim % o.decoder_heads:
        raise ConfigError(f"method.decoder_dim={o.decoder_dim} must be a multiple of "
                          f"method.decoder_heads={o.decoder_heads}")
    if not 0.0 <= o.mask_ratio < 1.0:
        raise ConfigError(f"method.mask_ratio must be in [0, 1), got {o.mask_ratio}")
