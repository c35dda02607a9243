"""BEiT (Bao et al. 2022): masked image modelling with discrete visual tokens.

About 40% of the patches are masked in rectangular blocks. Unlike MAE, the ViT encoder sees every
position: a masked patch's embedding is replaced by a learned [MASK] embedding before the position
embeddings are added. A head (LayerNorm + linear) reads each output token and predicts the *visual
token* of the patch there, one of K words of a codebook; the loss is the cross-entropy on masked
positions only. BEiT's tokens come from a discrete VAE pretrained on ImageNet, which we do not have;
here they are the nearest codewords of a k-means codebook over per-patch normalised pixel patches,
learnt online inside the method (``selfsup.codebook.PatchCodebook``, where the choice is argued)
for ``codebook_warmup_steps`` steps and then frozen, so that the targets stop moving once the
encoder has started to learn them; a frozen codebook also makes the losses of later epochs
comparable. The codebook takes one update per training forward, so one per micro-batch under
gradient accumulation; the warm-up counts optimiser steps.

Masking. ``block_masking`` follows BEiT's Algorithm 1: blocks of s ≥ ``min_block_patches`` patches
with a log-uniform aspect ratio in [0.3, 1/0.3] at random places, a block being accepted only if it
adds between 1 and the still-missing number of patches. Every sample gets exactly
``num_masked(N, mask_ratio) = N − max(1, round(N·(1 − mask_ratio)))`` masked patches (the number
random masking hides too): blocks are proposed for ``BLOCK_ROUNDS`` rounds, and what is still
missing then (about 0.5% of the masked patches on a 7×7 grid at 40%) is topped up with uniformly
random visible patches. On Fashion-MNIST (28×28, patch 4: a 7×7 grid) that is 20 of 49 patches.
``masking="random"`` masks the same number uniformly at random instead.

Options against the paper's (ViT-B/16 on 224² ImageNet, a 14×14 grid): mask ratio 0.4 (75 of 196
patches in the paper's code, "about 40%" in its text); ``min_block_patches`` 4 instead of 16, the
paper's 16/196 of the grid scaled to a 7×7 grid; 128 visual words instead of 8192, since the words
describe 4×4 gray patches (16 values) rather than 8×8 RGB dVAE cells: on Fashion-MNIST (a 4-block
64-wide ViT, 400 steps of 128 images, codebook frozen after 200) the k-NN accuracy was 0.62-0.66
with 64 or 128 words (5 runs) but 0.56 with 512, whose near-duplicate words make the targets
noisy (random masking instead of blocks: 0.64, no difference); AdamW with betas (0.9, 0.999),
weight decay 0.05 and gradient clipping at 3.0 (the paper's) and a base lr of 1.5e-4 per 256 images
(the paper's 1.5e-3 at a batch of 2048 would be 1.9e-4; not yet tuned on Fashion-MNIST). Views: the
"crop-flip" recipe (random resized crop and flip; the paper adds colour jitter, which on gray
28×28 images would mostly change the tokens' contrast).

Distributed runs: the codebook takes its update step on the patches of every process (the
``gather`` hook) and never draws from the global random numbers, so all processes keep the same
codebook (the trainer does not re-broadcast buffers) while each predicts its own patches' tokens.

Backbone: a ViT (``vit-tiny`` by default) with mean pooling: the loss only ever reaches the patch
tokens, so BEiT's class-token output is barely trained and the paper's linear probes average the
patch tokens instead. Evaluation, the health monitor and the online probe all use the encoder's
own pooling, which is why the default is set on the backbone rather than inside this method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from selfsup.backbones.vit import INIT_STD, VisionTransformer
from selfsup.codebook import PatchCodebook, code_perplexity
from selfsup.errors import ConfigError, DataError
from selfsup.losses import masked_token_accuracy, masked_token_cross_entropy
from selfsup.masking import normalize_patches, num_kept, patchify, random_masking
from selfsup.methods.base import BuildContext, Method, NO_CONTEXT, StepOutput
from selfsup.registry import METHODS
from selfsup.tokenize.base import IGNORE_LABEL

MIN_ASPECT = 0.3  # BEiT's block aspect ratios lie in [0.3, 1/0.3]
BLOCK_ROUNDS = 10  # block proposals per batch before the random top-up (BEiT gives up after 10 tries)


@dataclass
class BEiTOptions:
    mask_ratio: float = 0.4
    masking: str = "block"  # block | random
    min_block_patches: int = 4  # smallest block; BEiT's 16 of a 14×14 grid, scaled to 7×7
    num_codes: int = 128  # visual words K
    codebook_decay: float = 0.99  # EMA decay d of the k-means statistics
    codebook_warmup_steps: int = 500  # optimiser steps the codebook learns for, then it is frozen
    dead_code_threshold: float = 1.0  # re-seed codes winning fewer patches per batch (EMA)
    patch_norm_eps: float = 0.01  # ε of the per-patch standardisation the codebook clusters


# ------------------------------------------------------------------------------------ masking


def num_masked(num_patches: int, mask_ratio: float) -> int:
    """Patches masked per sample: N − max(1, round(N·(1 − ratio))), as ``random_masking`` hides."""
    return num_patches - num_kept(num_patches, mask_ratio)


def block_masking(batch: int, grid: tuple[int, int], count: int, min_block: int = 4,
                  generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """BEiT's blockwise masking with exactly ``count`` masked patches per sample: (B, h·w) bool.

    Each of ``BLOCK_ROUNDS`` rounds proposes one block per sample: a target area s uniform in
    [``min_block``, missing] (missing = patches still to mask), an aspect ratio r log-uniform in
    [0.3, 1/0.3], a block of round(√(s·r)) × round(√(s/r)) patches at a uniformly random place.
    A sample accepts it if it fits in the grid and adds between 1 and ``missing`` new patches, so
    no sample ever passes ``count``. Samples still short after the rounds get uniformly random
    visible patches. All samples are drawn together, on ``device``, without host synchronisation.
    """
    h, w = grid
    if not 0 < count < h * w:
        raise DataError(f"block masking of a {h}×{w} grid must mask between 1 and {h * w - 1} "
                        f"patches, got {count}; change method.mask_ratio")
    mask = torch.zeros(batch, h, w, dtype=torch.bool, device=device)
    rows = torch.arange(h, device=mask.device).view(1, h, 1)
    cols = torch.arange(w, device=mask.device).view(1, 1, w)
    log_aspect = math.log(1 / MIN_ASPECT)
    for _ in range(BLOCK_ROUNDS):
        missing = count - mask.sum(dim=(1, 2))
        u = torch.rand(4, batch, generator=generator, device=mask.device)
        area = (min_block + u[0] * (missing - min_block)).clamp(min=1)
        aspect = torch.exp((2 * u[1] - 1) * log_aspect)
        height = (area * aspect).sqrt().round().clamp(min=1)
        width = (area / aspect).sqrt().round().clamp(min=1)
        top = (u[2] * (h - height + 1)).floor().view(-1, 1, 1)
        left = (u[3] * (w - width + 1)).floor().view(-1, 1, 1)
        block = ((rows >= top) & (rows < top + height.view(-1, 1, 1))
                 & (cols >= left) & (cols < left + width.view(-1, 1, 1)))
        added = (block & ~mask).sum(dim=(1, 2))
        accept = (height <= h) & (width <= w) & (added > 0) & (added <= missing)
        mask |= block & accept.view(-1, 1, 1)
    mask = mask.view(batch, h * w)
    # Top up: rank the visible patches in random order and mask the first `missing` of them.
    missing = count - mask.sum(dim=1, keepdim=True)
    noise = torch.rand(batch, h * w, generator=generator, device=mask.device) + mask  # masked last
    rank = noise.argsort(dim=1).argsort(dim=1)
    return mask | (rank < missing)


# ------------------------------------------------------------------------------------ method


@METHODS.register("beit", "BEiT: predict the visual tokens (k-means codebook) of ~40% block-masked "
                          "patches (ViT only)")
class BEiT(Method):
    """Masked image modelling on discrete visual tokens; the health monitor watches the encoder's
    features of unmasked images (the inherited ``health_embeddings``: there is no projector)."""

    Options = BEiTOptions
    view_recipe = "crop-flip"
    config_defaults = {
        "backbone": {"name": "vit-tiny", "pool": "mean"},
        "optim": {"name": "adamw", "lr": 1.5e-4, "weight_decay": 0.05, "betas": [0.9, 0.999],
                  "clip_grad": 3.0},
    }

    # the codebook's update step learns from the global batch (gathered), so the method is
    # one of those that need every process's samples (its ViT has no BatchNorm to sync)
    compares_samples = True

    def __init__(self, encoder: nn.Module, options: BEiTOptions | None = None,
                 context: BuildContext = NO_CONTEXT) -> None:
        if not isinstance(encoder, VisionTransformer):
            raise ConfigError(
                f"method.name=beit needs a Vision Transformer encoder that can take a [MASK] "
                f"embedding per patch; set backbone.name to vit-tiny, vit-small or vit-base "
                f"(got {type(encoder).__name__})"
            )
        super().__init__(encoder, context)
        self.options = o = options or BEiTOptions()
        patch_dim = encoder.patch_size ** 2 * encoder.patch_embed.in_channels
        _check_options(o, encoder.num_patches, patch_dim)
        self.mask_token = nn.Parameter(torch.zeros(encoder.out_dim))
        self.head = nn.Sequential(nn.LayerNorm(encoder.out_dim), nn.Linear(encoder.out_dim, o.num_codes))
        self.codebook = PatchCodebook(o.num_codes, patch_dim, o.codebook_decay, o.dead_code_threshold)
        self.codebook.frozen = o.codebook_warmup_steps == 0  # seeded from the first batch only
        nn.init.trunc_normal_(self.mask_token, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)
        nn.init.trunc_normal_(self.head[1].weight, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)
        nn.init.zeros_(self.head[1].bias)

    def _grid(self, x: torch.Tensor) -> tuple[int, int]:
        p = self.encoder.patch_size
        return x.shape[-2] // p, x.shape[-1] // p

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """What the codebook clusters: the encoder's patches of ``x`` (it ignores a partial last
        row/column), each standardised by its own mean and variance, (B, N, p·p·C).

        ε = ``patch_norm_eps`` in the normalised input's units (pixels span [−2, 2]) lets patches
        whose contrast is a few grey levels shrink towards the flat patch instead of being blown
        up to full-contrast noise, as MAE's ε = 1e-6 would."""
        h, w = self._grid(x)
        p = self.encoder.patch_size
        return normalize_patches(patchify(x[..., : h * p, : w * p].float(), p), self.options.patch_norm_eps)

    def mask_patches(self, batch: int, grid: tuple[int, int], device: torch.device,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, h·w) bool, exactly ``num_masked(h·w, mask_ratio)`` True per sample."""
        o = self.options
        if o.masking == "random":
            return random_masking(batch, grid[0] * grid[1], o.mask_ratio, generator, device).mask
        count = num_masked(grid[0] * grid[1], o.mask_ratio)
        return block_masking(batch, grid, count, o.min_block_patches, generator, device)

    def forward(self, views: list[torch.Tensor]) -> StepOutput:
        x = views[0]
        mask = self.mask_patches(x.shape[0], self._grid(x), x.device)
        targets = self.targets(self.patches(x))
        tokens = self.encoder.forward_tokens(x, mask=mask, mask_token=self.mask_token)
        logits = self.head(tokens[:, 1:]).float()
        labels = targets.masked_fill(~mask, IGNORE_LABEL)  # visible patches take no part
        loss = masked_token_cross_entropy(logits, labels)
        logs = {"token_accuracy": masked_token_accuracy(logits.detach(), labels),
                "codebook_perplexity": code_perplexity(targets, self.options.num_codes)}
        return StepOutput(loss=loss, embeddings=self.encoder.pool_tokens(tokens), logs=logs)

    @torch.no_grad()
    def targets(self, patches: torch.Tensor) -> torch.Tensor:
        """Token ids (B, N) of this process's patches (B, N, P). In training the codebook first
        takes its update step on the patches of all processes (``gather``), so every process keeps
        the same codebook; the ids are those of the codebook before the step (the assignment the
        update computes anyway)."""
        if not self.training:
            return self.codebook.assign(patches)
        everyone = patches if self.gather is None else self.gather(patches)
        return self.codebook.update(everyone).narrow(0, self.rank * patches.shape[0], patches.shape[0])

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        if step + 1 >= self.options.codebook_warmup_steps:
            self.codebook.frozen = True


def _check_options(o: BEiTOptions, num_patches: int, patch_dim: int) -> None:
    if o.masking not in ("block", "random"):
        raise ConfigError(f"method.masking must be 'block' or 'random', got {o.masking!r}")
    if not 0.0 < o.mask_ratio < 1.0:
        raise ConfigError(f"method.mask_ratio must be in (0, 1), got {o.mask_ratio}")
    if num_masked(num_patches, o.mask_ratio) < 1:
        raise ConfigError(f"method.mask_ratio={o.mask_ratio} masks no patch of the encoder's "
                          f"{num_patches}; raise it")
    if o.min_block_patches < 1:
        raise ConfigError(f"method.min_block_patches must be ≥ 1, got {o.min_block_patches}")
    if o.codebook_warmup_steps < 0:
        raise ConfigError(f"method.codebook_warmup_steps must be ≥ 0, got {o.codebook_warmup_steps}")
    if patch_dim < 2:
        raise ConfigError("the codebook clusters per-patch standardised pixels, which needs at least "
                          "2 values per patch; raise backbone.patch_size")
