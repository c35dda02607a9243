"""VICReg (Bardes et al. 2022): variance, invariance and covariance terms on two views' embeddings.

    x → encoder → expander (Linear-BN-ReLU, Linear-BN-ReLU, Linear) → z

The loss (``selfsup.losses.vicreg_loss``) pulls the two views' embeddings together (invariance),
keeps every dimension's standard deviation over the batch at least 1 (variance: no collapse to a
point) and decorrelates the dimensions (covariance: no collapse to a few directions). No
negatives, no momentum target, no predictor, no normalisation of the embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.heads import MLPHead
from selfsup.losses import vicreg_loss
from selfsup.methods.base import BuildContext, Method, NO_CONTEXT, StepOutput
from selfsup.registry import METHODS


@dataclass
class VICRegOptions:
    """VICReg's expander and loss coefficients.

    The coefficients 25/25/1 and eps 1e-4 are the paper's (and its reference code's). The
    expander is the paper's 3-layer MLP at 2048 instead of 8192 wide, for the reason given in
    ``BarlowTwinsOptions``: the paper's width is 4× a 2048-d ResNet-50, 2048 is 4× a 512-d
    ResNet-18. The covariance term is divided by D, so its scale does not grow with the width.
    """

    proj_hidden_dim: int = 2048
    proj_dim: int = 2048
    proj_layers: int = 3
    sim_coeff: float = 25.0
    std_coeff: float = 25.0
    cov_coeff: float = 1.0
    eps: float = 1e-4


@METHODS.register("vicreg", "VICReg: variance-invariance-covariance regularisation of 2 views")
class VICReg(Method):
    Options = VICRegOptions
    view_recipe = "byol"
    # Starting point: solo-learn's CIFAR-10 ResNet-18 recipe (lr per 256 images); not yet
    # tuned on Fashion-MNIST.
    config_defaults = {"optim": {"name": "lars", "lr": 0.3, "weight_decay": 1e-4}}

    compares_samples = True

    def __init__(self, encoder: nn.Module, options: VICRegOptions | None = None,
                 context: BuildContext = NO_CONTEXT) -> None:
        super().__init__(encoder, context)
        self.options = o = options or VICRegOptions()
        # The paper calls this head the expander; "projector" keeps the health records uniform.
        self.projector = MLPHead(encoder.out_dim, o.proj_hidden_dim, o.proj_dim, o.proj_layers)

    def forward(self, views: list[torch.Tensor]) -> StepOutput:
        # Both views in one pass: one large batch is faster, and BatchNorm sees both views.
        z1, z2 = self.projector(self.encoder(torch.cat(views[:2]))).chunk(2)
        o = self.options
        terms = vicreg_loss(z1, z2, o.sim_coeff, o.std_coeff, o.cov_coeff, o.eps, self.gather)
        logs = {"invariance": terms.invariance.detach(), "variance": terms.variance.detach(),
                "covariance": terms.covariance.detach()}
        return StepOutput(loss=terms.total, embeddings=z1, logs=logs)
