"""SimSiam (Chen & He 2021): a Siamese network with a predictor and a stop-gradient, no target network.

    x → encoder → projector → z → predictor → p

L = ½·D(p₁, sg(z₂)) + ½·D(p₂, sg(z₁)) with D the negative cosine (eqs. 1 and 4), in [−1, 1]. The
stop-gradient ``sg`` is what prevents collapse (§4.1, Fig. 2); ``stop_gradient=False`` removes it so
the collapse can be shown and the health monitor tested on a run that collapses.

Data parallel: the loss is per sample and needs no gather; BatchNorm keeps per-process statistics
unless ``train.sync_bn=true`` (worth it when each process holds few images: BatchNorm's
statistics then become noisy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.heads import MLPHead
from selfsup.losses import negative_cosine
from selfsup.methods.base import BuildContext, Method, NO_CONTEXT, StepOutput
from selfsup.registry import METHODS


@dataclass
class SimSiamOptions:
    """SimSiam's heads and the stop-gradient switch.

    The paper's projector is 3 layers of 2048 with BN on the output too, the same width as its
    2048-d ResNet-50; its predictor is a bottleneck 2048 → 512 → 2048 (hidden = output / 4, §3).
    The 512 default keeps the projector as wide as a ResNet-18 (twice the 256-d small CNN) rather
    than 2048, which on 28×28 images would cost more than the small encoder; the bottleneck ratio is
    the paper's.

    fix_predictor_lr: the predictor trains at the base learning rate throughout while the rest
    follows the warm-up and cosine schedule. The paper finds a predictor whose rate is not decayed
    works better (Table 1c, 68.1% vs 67.7%; the official code's ``--fix-pred-lr``, used in its
    recipes): the predictor has to keep adapting to the latest representation.
    """

    proj_dim: int = 512
    proj_hidden_dim: int = 0  # 0: proj_dim
    pred_hidden_dim: int = 0  # 0: proj_dim // 4, the paper's bottleneck
    proj_layers: int = 3
    stop_gradient: bool = True  # False: gradients flow into both branches and the run collapses
    fix_predictor_lr: bool = True


@METHODS.register("simsiam", "SimSiam: predict the other view's projection, stop-gradient (no negatives)")
class SimSiam(Method):
    Options = SimSiamOptions
    view_recipe = "simclr"  # SimSiam uses the SimCLR / MoCo v2 augmentations
    # Starting point: solo-learn's CIFAR-10 ResNet-18 recipe (lr per 256 images); not yet
    # tuned on Fashion-MNIST.
    config_defaults = {"optim": {"name": "sgd", "lr": 0.5, "weight_decay": 1e-5}}

    def __init__(self, encoder: nn.Module, options: SimSiamOptions | None = None,
                 context: BuildContext = NO_CONTEXT) -> None:
        super().__init__(encoder, context)
        self.options = o = options or SimSiamOptions()
        self.projector = MLPHead(encoder.out_dim, o.proj_hidden_dim or o.proj_dim, o.proj_dim,
                                 o.proj_layers, last_bn=True)
        self.predictor = MLPHead(o.proj_dim, o.pred_hidden_dim or max(1, o.proj_dim // 4), o.proj_dim,
                                 num_layers=2)

    def forward(self, views: list[torch.Tensor]) -> StepOutput:
        # Both views in one pass: one large batch is faster, and BatchNorm sees both views.
        z = self.projector(self.encoder(torch.cat(views[:2])))
        loss = self.loss(self.predictor(z), z)
        return StepOutput(loss=loss, embeddings=z.chunk(2)[0])

    def fixed_lr_modules(self) -> list[nn.Module]:
        """The predictor, when its learning rate is fixed (see ``SimSiamOptions``)."""
        return [self.predictor] if self.options.fix_predictor_lr else []

    def loss(self, p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """½·D(p₁, z₂) + ½·D(p₂, z₁) for the stacked views ``p = [p₁; p₂]``, ``z = [z₁; z₂]``.

        ``z`` is detached here when ``stop_gradient`` is on, so it acts only as a target.
        """
        p1, p2 = p.chunk(2)
        z1, z2 = (z.detach() if self.options.stop_gradient else z).chunk(2)
        return 0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1))
