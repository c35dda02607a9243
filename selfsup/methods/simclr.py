"""SimCLR (Chen et al. 2020): two views, a projection head, NT-Xent over the batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.heads import MLPHead
from selfsup.losses import nt_xent
from selfsup.methods.base import BuildContext, Method, NO_CONTEXT, StepOutput
from selfsup.registry import METHODS


@dataclass
class SimCLROptions:
    temperature: float = 0.2
    proj_hidden_dim: int = 0  # 0: the encoder's width
    proj_dim: int = 128
    proj_layers: int = 2


@METHODS.register("simclr", "SimCLR: contrastive, NT-Xent (InfoNCE) over 2 views, in-batch negatives")
class SimCLR(Method):
    Options = SimCLROptions
    view_recipe = "simclr"
    # Starting point: solo-learn's CIFAR-10 ResNet-18 recipe (lr per 256 images); not yet
    # tuned on Fashion-MNIST.
    config_defaults = {"optim": {"name": "lars", "lr": 0.4, "weight_decay": 1e-4}}

    compares_samples = True

    def __init__(self, encoder: nn.Module, options: SimCLROptions | None = None,
                 context: BuildContext = NO_CONTEXT) -> None:
        super().__init__(encoder, context)
        self.options = o = options or SimCLROptions()
        width = encoder.out_dim
        self.projector = MLPHead(width, o.proj_hidden_dim or width, o.proj_dim, o.proj_layers)

    def forward(self, views: list[torch.Tensor]) -> StepOutput:
        # Both views in one forward pass: one large batch is faster and BatchNorm sees both views.
        z = self.projector(self.encoder(torch.cat(views[:2])))
        z1, z2 = z.chunk(2)
        loss = nt_xent(z1, z2, self.options.temperature, self.gather, self.rank)
        return StepOutput(loss=loss, embeddings=z1)
