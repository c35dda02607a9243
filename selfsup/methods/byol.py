"""BYOL (Grill et al. 2020): an online network predicts a slowly moving target network's projection.

online:  x → encoder → projector → predictor → p
target:  x → EMA(encoder) → EMA(projector) → t        (no gradient; updated in ``after_step``)

The loss is symmetric over the two views, L = ||p̂₁ − t̂₂||² + ||p̂₂ − t̂₁||² with unit vectors
(eq. 2 and the sum L + L̃ of §3.1), so it lies in [0, 8]. Collapse is avoided by the predictor
together with the slow target, not by negatives.

Data parallel: the loss is a mean of per-sample terms, so it needs no gather; BatchNorm keeps
per-process statistics unless ``train.sync_bn=true`` (worth it when each process holds few
images: BatchNorm's statistics then become noisy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.heads import MLPHead
from selfsup.losses import normalized_mse
from selfsup.methods.base import BuildContext, Method, NO_CONTEXT, StepOutput
from selfsup.momentum import MomentumTarget
from selfsup.registry import METHODS


@dataclass
class BYOLOptions:
    """BYOL's heads and target schedule.

    The paper pairs a 2048-d ResNet-50 with 4096-wide hidden layers, twice the encoder's width;
    the 0 defaults keep that ratio (1024 for a 512-d ResNet-18, 512 for the 256-d small CNN)
    instead of a 4096 that would cost more than the small encoders themselves. The 256-d output is
    the paper's. The paper's base momentum 0.996 suits ImageNet's ~300k steps; a Fashion-MNIST run
    of ~100 epochs has ~10k steps, and with 0.996 the target would average over a large share of the
    whole run, so 0.99 (the usual CIFAR choice) lets the target follow the online network.
    """

    proj_dim: int = 256
    proj_hidden_dim: int = 0  # 0: twice the encoder's width
    pred_hidden_dim: int = 0  # 0: the projector's hidden width
    proj_layers: int = 2
    pred_layers: int = 2
    base_momentum: float = 0.99  # rises to 1 on a cosine schedule over the run


@METHODS.register("byol", "BYOL: predict a momentum target's projection of the other view (no negatives)")
class BYOL(Method):
    Options = BYOLOptions
    view_recipe = "byol"
    # Starting point: solo-learn's CIFAR-10 ResNet-18 recipe (lr per 256 images); not yet
    # tuned on Fashion-MNIST.
    config_defaults = {"optim": {"name": "lars", "lr": 1.0, "weight_decay": 1e-5}}

    def __init__(self, encoder: nn.Module, options: BYOLOptions | None = None,
                 context: BuildContext = NO_CONTEXT) -> None:
        super().__init__(encoder, context)
        self.options = o = options or BYOLOptions()
        hidden = o.proj_hidden_dim or 2 * encoder.out_dim
        self.projector = MLPHead(encoder.out_dim, hidden, o.proj_dim, o.proj_layers)
        self.predictor = MLPHead(o.proj_dim, o.pred_hidden_dim or hidden, o.proj_dim, o.pred_layers)
        self.target = MomentumTarget(self._online_branch(), o.base_momentum)

    def _online_branch(self) -> nn.Sequential:
        """encoder → projector, the part of the online network the target follows.

        Built on demand (it only groups the existing modules) so the state dict holds each online
        weight once.
        """
        return nn.Sequential(self.encoder, self.projector)

    def forward(self, views: list[torch.Tensor]) -> StepOutput:
        # Both views in one pass: one large batch is faster, and BatchNorm sees both views.
        x = torch.cat(views[:2])
        z = self.projector(self.encoder(x))
        p1, p2 = self.predictor(z).chunk(2)
        with torch.no_grad():
            t1, t2 = self.target(x).chunk(2)
        loss = normalized_mse(p1, t2) + normalized_mse(p2, t1)
        return StepOutput(loss=loss, embeddings=z.chunk(2)[0], logs={"momentum": self.target.momentum})

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        self.target.update(self._online_branch(), step, total_steps)
