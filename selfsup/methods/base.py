"""The method contract.

A method is an ``nn.Module`` that turns one batch of views into a loss. It knows nothing of files,
devices, loops or logging: the trainer owns those. Hooks that momentum encoders, queues and
teacher centres need run in ``after_step``.

What a method may know of its surroundings comes in one object when it is built, a
:class:`BuildContext`: the data's image shape or tokeniser, the size of the training set, and the
:class:`Collectives` of the processes it trains in. What the trainer and the report may know of a
method is declared on its class as typed capability attributes (``compares_samples``,
``held_out_logs``, ``may_skip_parameters``, ``view_recipe``, ``config_defaults``) and, for the
pictures of the report, by the optional protocols :class:`Reconstructs` and :class:`Generates`.
Nothing is patched into a method after it is built, and nothing is probed with ``hasattr``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional, Protocol, runtime_checkable

import torch
from torch import nn

from selfsup.tokenize.base import Tokenizer

TensorFn = Callable[[torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass(frozen=True)
class Collectives:
    """What a method's loss may ask of the other processes of a data-parallel run.

    gather: (N·B, ...) from every process's (B, ...), in rank order, keeping gradients.
    sum: in-place Σ over processes of a tensor without gradient (token counts).
    rank, world_size: this process's place. The defaults are one process's: identities.
    """

    gather: TensorFn = _identity
    sum: TensorFn = _identity
    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE_PROCESS = Collectives()


@dataclass(frozen=True)
class BuildContext:
    """What a method is told when it is built (each field None where the caller does not know it).

    in_shape: the images' (C, H, W), for methods that generate images (decoders).
    tokenizer: the data's tokeniser, for methods whose heads or views depend on the alphabet.
    num_train: the number of training samples (MoCo v2 sizes its queue from it).
    collectives: the processes it trains in; one process by default.
    """

    in_shape: Optional[tuple[int, int, int]] = None
    tokenizer: Optional[Tokenizer] = None
    num_train: Optional[int] = None
    collectives: Collectives = SINGLE_PROCESS


NO_CONTEXT = BuildContext()


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
    A method with a projection head assigns it to ``projector``: the health monitor watches it.

    Capabilities (class attributes; the defaults suit a per-sample loss):

    * ``compares_samples``: the loss compares each sample with the others of the batch (negatives,
      cross-correlations, a batch centre, BEiT's codebook). Under torchrun it reads the global batch through
      ``gather`` (see :mod:`selfsup.train.distributed`), and SyncBatchNorm is on by default
      (``train.sync_bn``), so BatchNorm sees the batch the loss sees.
    * ``held_out_logs``: the trainer logs the method's loss on held-out data each epoch (MLM's
      perplexity).
    * ``may_skip_parameters``: some trainable parameters get no gradient in a step (DINO's
      frozen prototypes), so DDP looks for unused parameters.
    """

    view_recipe: ClassVar[str] = "simclr"
    # Config sections this method sets by default, below anything the user writes: mostly the
    # optimiser, which differs between methods more than any other setting (e.g. SimSiam trains
    # with plain SGD, BYOL with LARS at a high rate).
    config_defaults: ClassVar[dict] = {}
    compares_samples: ClassVar[bool] = False
    held_out_logs: ClassVar[bool] = False
    may_skip_parameters: bool = False  # an instance's answer may depend on its options (DINO)

    def __init__(self, encoder: nn.Module, context: BuildContext = NO_CONTEXT) -> None:
        super().__init__()
        self.encoder = encoder
        self.collectives = context.collectives
        self.projector: Optional[nn.Module] = None  # a subclass's projection head replaces it

    @property
    def gather(self) -> Optional[TensorFn]:
        """The differentiable all-gather of the loss's inputs; None for one process (the losses
        then skip it)."""
        return self.collectives.gather if self.collectives.distributed else None

    @property
    def rank(self) -> int:
        """This process's place in a gathered batch."""
        return self.collectives.rank

    @property
    def sum_across_processes(self) -> Optional[TensorFn]:
        """In-place Σ over processes (token losses' global mean); None for one process."""
        return self.collectives.sum if self.collectives.distributed else None

    @classmethod
    def view_recipe_for(cls, modality: str) -> str:
        """The default recipe for data of ``modality`` (its name: "image", "protein", ...);
        methods whose views depend on the modality override it. Default: ``view_recipe``."""
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
        if self.projector is None:
            return {"encoder": h}
        return {"encoder": h, "projector": self.projector(h)}


@runtime_checkable
class Reconstructs(Protocol):
    """A method that rebuilds its input (MAE, the autoencoders): the report draws its
    reconstructions."""

    def reconstruction_panels(self, x: torch.Tensor, generator: Optional[torch.Generator] = None
                              ) -> dict[str, torch.Tensor]:
        """Columns of a reconstruction figure, name → (B, C, H, W) normalised images (the input
        normalisation), in display order; a ``"mask"`` entry (B, 1, H, W), 1 on hidden pixels,
        marks what the encoder did not see. ``x`` is a batch of normalised images."""
        ...

    def reconstruction_title(self, hidden: Optional[float] = None) -> str:
        """The figure's title; ``hidden``: the share of the input the encoder did not see (from
        the ``"mask"`` column, when there is one)."""
        ...


@runtime_checkable
class Generates(Protocol):
    """A generative method (the VAE): the report draws samples and interpolations."""

    def sample(self, n: int, size: Optional[tuple[int, int]] = None,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``n`` decoded draws from the prior, normalised images (at ``size`` if given)."""
        ...

    def interpolate(self, x_a: torch.Tensor, x_b: torch.Tensor, steps: int) -> torch.Tensor:
        """(B, steps, C, H, W) decoded points on the line between the codes of ``x_a`` and
        ``x_b``, normalised images."""
        ...

    def samples_title(self) -> str:
        """The title of the figure of prior samples."""
        ...
