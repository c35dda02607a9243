"""Contrastive learning on DNA reads: SimCLR's objective with sequence views.

Two views of each read (the "dna-contrastive" recipe: random window, jitter, reverse complement,
substitution noise, masking) go through the Transformer and a projection MLP; NT-Xent (InfoNCE
over the 2B views, in-batch negatives; ``selfsup.losses.nt_xent``) pulls the two views of a read
together and pushes the other reads away. Since a view is the other strand half the time, the
encoder learns that a read and its reverse complement are the same molecule.

``rc_invariant=true`` builds that in instead of learning it: the encoder's pooled features become
the average over both strands (``TransformerEncoder.make_rc_invariant``), identical for a read and
its reverse complement by construction, at twice the encoder cost. The encoder keeps the setting,
so evaluation embeds strand-invariantly too.

Options: temperature 0.2 and a 2-layer projector to 128 dimensions as our SimCLR; optimiser as
the other sequence methods (AdamW, see ``selfsup.methods.mlm``); not yet tuned on reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones.token_encoder import as_token_encoder
from selfsup.heads import MLPHead
from selfsup.losses import nt_xent
from selfsup.methods.base import Method, StepOutput
from selfsup.methods.mlm import SEQUENCE_OPTIM
from selfsup.registry import METHODS
from selfsup.tokenize import DnaTokenizer, make_tokenizer
from selfsup.tokenize.base import Tokenizer


@dataclass
class DnaContrastiveOptions:
    temperature: float = 0.2
    proj_hidden_dim: int = 0  # 0: the encoder's width
    proj_dim: int = 128
    proj_layers: int = 2
    rc_invariant: bool = False  # strand-averaged encoder, invariant to reverse complements


@METHODS.register("dna-contrastive", "contrastive (NT-Xent) on DNA reads: crop, jitter, reverse "
                                     "complement, substitutions; option rc_invariant")
class DnaContrastive(Method):
    Options = DnaContrastiveOptions
    view_recipe = "dna-contrastive"
    config_defaults = {"optim": SEQUENCE_OPTIM, "backbone": {"name": "transformer-small"},
                       "data": {"dataset": "16s-reads"}}

    def __init__(self, encoder: nn.Module, options: DnaContrastiveOptions | None = None,
                 tokenizer: Optional[Tokenizer] = None) -> None:
        """``tokenizer``: the data's DNA tokeniser, whose reverse complement an ``rc_invariant``
        encoder uses (default: the one the encoder's options name, else single nucleotides)."""
        super().__init__(encoder)
        self.options = o = options or DnaContrastiveOptions()
        as_token_encoder(encoder, "dna-contrastive")
        if o.rc_invariant and not encoder.rc_invariant:
            encoder.make_rc_invariant(tokenizer or _data_tokenizer(encoder))
        width = encoder.out_dim
        self.projector = MLPHead(width, o.proj_hidden_dim or width, o.proj_dim, o.proj_layers)
        self.gather = None  # set by the distributed trainer
        self.rank = 0

    def forward(self, views: list[torch.Tensor]) -> StepOutput:
        # Both views in one forward pass (one larger batch; BatchNorm in the projector sees both).
        both = torch.cat(_same_width(views[:2], self.encoder.pad_id))
        z = self.projector(self.encoder(both, both != self.encoder.pad_id))
        z1, z2 = z.chunk(2)
        loss = nt_xent(z1, z2, self.options.temperature, self.gather, self.rank)
        positive_cosine = F.cosine_similarity(z1.float(), z2.float(), dim=1).mean()
        return StepOutput(loss=loss, embeddings=z1, logs={"positive_cosine": positive_cosine.detach()})


def _data_tokenizer(encoder: nn.Module) -> Tokenizer:
    """The tokeniser the encoder's options name (the trainer records the data's), else single
    nucleotides."""
    named = encoder.options.tokenizer
    return make_tokenizer(**named) if isinstance(named, dict) else DnaTokenizer()


def _same_width(views: list[torch.Tensor], pad_id: int) -> list[torch.Tensor]:
    """The views right-padded to the widest one, so they stack into one batch."""
    width = max(view.shape[1] for view in views)
    return [F.pad(view, (0, width - view.shape[1]), value=pad_id) for view in views]
