"""Rotation prediction (Gidaris et al. 2018, "RotNet"): classify which multiple of 90° an image
was turned by.

To tell an upright shirt from one on its side the encoder has to find the object and its
orientation, which needs the object's parts; a 4-way cross-entropy over the encoder's features
trains it. Rotations by 90° multiples are exact pixel permutations, so no interpolation artefact
gives the answer away.

Each step sees all four rotations of every image (``all_rotations``, the default), as Gidaris et
al. do (they report it trains better than one random rotation per image): every batch then holds
the four classes in equal numbers, and the same content at every orientation, so neither the
classifier nor BatchNorm's statistics can lean on an orientation imbalance. It costs four encoder
passes per image; ``all_rotations=false`` draws one random rotation per image instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import ConfigError
from selfsup.heads import MLPHead
from selfsup.methods.base import BuildContext, Method, NO_CONTEXT, StepOutput
from selfsup.pretext import all_rotations, rotate90
from selfsup.registry import METHODS

NUM_ROTATIONS = 4


@dataclass
class RotationOptions:
    all_rotations: bool = True  # all four rotations of each image per step; false: one random one
    head_hidden_dim: int = 0  # 0: the encoder's width
    head_layers: int = 2  # 1: a linear classifier on the encoder's features


@METHODS.register("rotation", "RotNet: predict the 0/90/180/270° rotation of each image (4-way CE)")
class RotationPrediction(Method):
    """Rotation prediction; the health monitor watches the encoder features (the inherited
    ``health_embeddings``: 4 logits are no embedding to judge for collapse)."""

    Options = RotationOptions
    # Crops and flips only: the rotation is the task, and colour carries no orientation.
    view_recipe = "crop-flip"

    def __init__(self, encoder: nn.Module, options: RotationOptions | None = None,
                 context: BuildContext = NO_CONTEXT) -> None:
        super().__init__(encoder, context)
        self.options = o = options or RotationOptions()
        if o.head_layers < 1 or o.head_hidden_dim < 0:
            raise ConfigError(f"method.head_layers must be ≥ 1 and method.head_hidden_dim ≥ 0, got "
                              f"{o.head_layers} and {o.head_hidden_dim}")
        width = encoder.out_dim
        self.classifier = MLPHead(width, o.head_hidden_dim or width, NUM_ROTATIONS, o.head_layers)

    def forward(self, views: list[torch.Tensor]) -> StepOutput:
        x = views[0]
        if self.options.all_rotations:
            inputs, labels = all_rotations(x)
        else:
            labels = torch.randint(0, NUM_ROTATIONS, (len(x),), device=x.device)
            inputs = rotate90(x, labels)
        h = self.encoder(inputs)
        logits = self.classifier(h).float()
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(1) == labels).float().mean()
        # With all rotations the first block is the images as they came (rotation 0).
        return StepOutput(loss=loss, embeddings=h[: len(x)], logs={"accuracy": accuracy.detach()})
