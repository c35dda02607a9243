"""Relative patch position (Doersch et al. 2015): given the centre patch of a 3×3 grid and one of
its 8 neighbours, classify where the neighbour sits.

Both patches go through the shared encoder; their features are concatenated and an MLP makes the
8-way decision. Saying that a patch is "above" another needs what the object is and how its parts
are laid out. The grid's gap and jitter (see ``selfsup.pretext.PatchGrid``) stop the network from
matching edges across patch borders. Doersch et al.'s guard against chromatic aberration (colour
dropping) is left out: the targeted data (Fashion-MNIST) are gray.

The encoder is applied to the patches at their own size (7×7 on 28×28 images): the CNN backbones
pool globally and accept any size, and an upsampled patch would cost (28/7)² = 16× the compute
for no new information. ``patch_input_size`` resizes patches (bilinearly) where an encoder needs a
minimum input size, or to train at the scale evaluation will see.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import ConfigError
from selfsup.heads import MLPHead
from selfsup.methods.base import BuildContext, Method, NO_CONTEXT, StepOutput
from selfsup.pretext import NEIGHBOUR_OFFSETS, PatchGrid, crop_patches
from selfsup.registry import METHODS


@dataclass
class PatchPositionOptions:
    # Unset: fitted to the image (PatchGrid.fit): 7, 3 and 1 pixels on 28×28 images.
    patch_size: Optional[int] = None
    gap: Optional[int] = None
    jitter: Optional[int] = None
    patch_input_size: int = 0  # 0: the encoder sees patches at their own size; N: resized to N×N
    head_hidden_dim: int = 0  # 0: the encoder's width
    head_layers: int = 2  # on the concatenated pair of features; 1: a linear classifier


@METHODS.register("patch-position", "relative patch position: which of 8 neighbours of a centre "
                                    "patch (8-way CE, Doersch et al.)")
class PatchPosition(Method):
    """Relative-position prediction; the health monitor watches the encoder features (the
    inherited ``health_embeddings``)."""

    Options = PatchPositionOptions
    # Doersch et al. use no augmentation besides the patch jitter.
    view_recipe = "none"

    def __init__(self, encoder: nn.Module, options: PatchPositionOptions | None = None,
                 context: BuildContext = NO_CONTEXT) -> None:
        super().__init__(encoder, context)
        self.options = o = options or PatchPositionOptions()
        if o.head_layers < 1 or o.head_hidden_dim < 0 or o.patch_input_size < 0:
            raise ConfigError(
                f"method.head_layers must be ≥ 1, method.head_hidden_dim and "
                f"method.patch_input_size ≥ 0, got {o.head_layers}, {o.head_hidden_dim} and "
                f"{o.patch_input_size}")
        width = encoder.out_dim
        self.classifier = MLPHead(2 * width, o.head_hidden_dim or width, len(NEIGHBOUR_OFFSETS),
                                  o.head_layers)

    def grid(self, height: int, width: int) -> PatchGrid:
        """The patch grid this method cuts from height × width images."""
        o = self.options
        return PatchGrid.fit(height, width, o.patch_size, o.gap, o.jitter)

    def forward(self, views: list[torch.Tensor]) -> StepOutput:
        x = views[0]
        grid = self.grid(x.shape[-2], x.shape[-1])
        pairs = grid.sample(len(x), x.device)
        patches = torch.cat([crop_patches(x, pairs.centre, grid.patch_size),
                             crop_patches(x, pairs.neighbour, grid.patch_size)])
        if self.options.patch_input_size:
            size = self.options.patch_input_size
            patches = F.interpolate(patches, size=(size, size), mode="bilinear", align_corners=False)
        # One encoder pass over both patches: a larger batch, and BatchNorm sees both kinds.
        centre, neighbour = self.encoder(patches).chunk(2)
        logits = self.classifier(torch.cat([centre, neighbour], dim=1)).float()
        loss = F.cross_entropy(logits, pairs.label)
        accuracy = (logits.argmax(1) == pairs.label).float().mean()
        return StepOutput(loss=loss, embeddings=centre, logs={"accuracy": accuracy.detach()})
