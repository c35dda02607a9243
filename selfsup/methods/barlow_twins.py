"""Barlow Twins (Zbontar et al. 2021): make the cross-correlation of two views' embeddings the identity.

    x → encoder → projector (Linear-BN-ReLU, Linear-BN-ReLU, Linear) → z

The loss (``selfsup.losses.barlow_twins_loss``) pulls each standardised dimension of z₁ and z₂ to
correlate perfectly (invariance) and different dimensions to not correlate at all (redundancy
reduction). Collapse is avoided by the decorrelation term itself: no negatives, no momentum
target, no predictor. The views are BYOL's asymmetric ones, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.heads import MLPHead
from selfsup.losses import barlow_twins_loss
from selfsup.methods.base import BuildContext, Method, NO_CONTEXT, StepOutput
from selfsup.registry import METHODS


@dataclass
class BarlowTwinsOptions:
    """Barlow Twins' projector and loss weight.

    Width: the paper uses 8192-8192-8192 on a 2048-d ResNet-50 (4× the encoder) and its ablation
    shows accuracy still rising with the projector's width. 2048 keeps that 4× for a 512-d
    ResNet-18 (8× for the 256-d small CNN), and at batch 512 the 2048 × 2048 cross-correlation
    costs about 2 GFLOP a step, small next to a ResNet-18 on 28×28 images (≈ 0.56 GFLOP per image
    per forward pass); 8192 would make the projector larger than the encoder.

    λ: the paper's 5e-3 is tuned for D = 8192. The off-diagonal term has D(D − 1) entries, so at
    D = 2048 the same λ weighs decorrelation 4× less relative to invariance; the paper found the
    result flat over a wide range of λ, and CIFAR-scale reproductions keep 5e-3 at 2048-d, so we
    keep it. Raise it (e.g. 0.02 = 5e-3 × 8192/2048, the same λ·D) if the health monitor reports
    dimensional collapse of the projector.
    """

    proj_hidden_dim: int = 2048
    proj_dim: int = 2048
    proj_layers: int = 3
    lambda_offdiag: float = 5e-3


@METHODS.register("barlow-twins", "Barlow Twins: cross-correlation of 2 views' embeddings → identity")
class BarlowTwins(Method):
    Options = BarlowTwinsOptions
    view_recipe = "byol"
    # Starting point: solo-learn's CIFAR-10 ResNet-18 recipe (lr per 256 images); not yet
    # tuned on Fashion-MNIST.
    config_defaults = {"optim": {"name": "lars", "lr": 0.3, "weight_decay": 1e-4}}

    compares_samples = True

    def __init__(self, encoder: nn.Module, options: BarlowTwinsOptions | None = None,
                 context: BuildContext = NO_CONTEXT) -> None:
        super().__init__(encoder, context)
        self.options = o = options or BarlowTwinsOptions()
        # No final BatchNorm: the loss standardises every dimension itself.
        self.projector = MLPHead(encoder.out_dim, o.proj_hidden_dim, o.proj_dim, o.proj_layers)

    def forward(self, views: list[torch.Tensor]) -> StepOutput:
        # Both views in one pass: one large batch is faster, and BatchNorm sees both views. The
        # loss standardises each view's dimensions separately, so shared BN statistics do not leak
        # an offset between the views into it.
        z1, z2 = self.projector(self.encoder(torch.cat(views[:2]))).chunk(2)
        loss = barlow_twins_loss(z1, z2, self.options.lambda_offdiag, self.gather)
        return StepOutput(loss=loss, embeddings=z1)
