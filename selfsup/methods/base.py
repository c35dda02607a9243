"""The method contract.

A method is an ``nn.Module`` that turns one batch of views into a loss. It knows nothing of files,
devices, loops or logging: the trainer owns those. Hooks that momentum encoders, queues and
teacher centres need run in ``after_step``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from selfsup.tokenize.base import Tokenizer


@dataclass
class StepOutput:
    """What one training step of a method returns.

    loss: the scalar to minimise.
    embeddings: a (B, D) batch of the representation the method shapes (e.g. projector output),
        detached by the trainer when it keeps them.
    logs: extra scalars to log (tensors are fine; the trainer syncs them only when it logs).
    """

    loss: torch.Tensor
    embeddings: torch.Tensor | None = None
    logs: dict[str, Any] = field(default_factory=dict)


class Method(nn.Module):
    """Base class of self-supervised methods.

    Subclasses set ``view_recipe`` (the default recipe name) and implement ``forward``.
    ``encoder`` is the backbone the optimiser trains; ``export_encoder`` is the one evaluation,
    health checks and the exported ``encoder.safetensors`` use (the same module, except where a
    method's paper evaluates another: DINO's EMA teacher); ``embed`` maps inputs to its features.

    Under torchrun (see :mod:`selfsup.train.distributed`): a method whose loss compares samples
    across the batch has a ``gather`` attribute (``None`` for one process; the trainer sets it to
    an all-gather that keeps gradients) and reads it in ``forward``; having one also turns
    SyncBatchNorm on by default (``train.sync_bn``), so BatchNorm sees the global batch the loss
    sees. ``may_skip_parameters`` is True while some trainable parameters get no gradient (e.g.
    DINO's frozen prototypes), so DDP looks for unused parameters only then.
    """

    may_skip_parameters: bool = False

    view_recipe: str = "simclr"
    # Config sections this method sets by default, below anything the user writes: mostly the
    # optimiser, which differs between methods more than any other setting (e.g. SimSiam trains
    # with plain SGD, BYOL with LARS at a high rate).
    config_defaults: dict = {}

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    @classmethod
    def view_recipe_for(cls, tokenizer: Optional[Tokenizer]) -> str:
        """The default recipe for data read by ``tokenizer`` (None: images); methods whose views
        depend on the modality override it. Default: ``view_recipe``."""
        return cls.view_recipe

    def forward(self, views: list[torch.Tensor]) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """Called after every optimiser step (EMA updates, queues, centres). Default: nothing."""

    @property
    def export_encoder(self) -> nn.Module:
        """The backbone evaluated and exported: ``encoder`` unless a method says otherwise."""
        return self.encoder

    def loss_weight(self, views: list[torch.Tensor]) -> Optional[torch.Tensor]:
        """How much a micro-batch's loss counts when a step accumulates several, for losses that
        are means over a data-dependent number of terms (the masked tokens of MLM): a 0-dim
        tensor, e.g. the number of terms in ``views``. The trainer then weights micro-batch i by
        its share of the step's terms (summed over processes), which makes the step's loss the
        mean over all its terms, as one big batch gives. None (default): micro-batches of equal
        size count equally, exact for the per-sample means of the image methods."""
        return None

    def fixed_lr_modules(self) -> list[nn.Module]:
        """Modules trained at their base learning rate throughout, with no warm-up and no decay
        (SimSiam's predictor). Default: none."""
        return []

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features of ``export_encoder``, used by evaluation and the health monitor."""
        return self.export_encoder(x)

    def health_embeddings(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named embeddings the health monitor watches: the encoder's, and the projector's when the
        method has one (collapse usually shows in the projector first)."""
        h = self.embed(x)
        projector = getattr(self, "projector", None)
        if projector is None:
            return {"encoder": h}
        return {"encoder": h, "projector": projector(h)}
