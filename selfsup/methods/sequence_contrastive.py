"""Contrastive learning on token sequences (proteins, DNA, text): SimCLR's objective, sequence views.

Two views of each sequence go through the encoder and a projection MLP; NT-Xent (InfoNCE over the
2B views, in-batch negatives; ``selfsup.losses.nt_xent``) pulls the two views of a sequence
together and pushes the other sequences away. What a view is depends on the data
(``selfsup.views.sequence_recipes``, one view maker with each modality's defaults):

* DNA (``dna-contrastive`` views): a random window, jitter, the reverse complement half the
  time, sequencer-like substitutions and masking. Since a view is the other strand half the time,
  the encoder learns that a read and its reverse complement are the same molecule;
* proteins (``protein-contrastive``): two windows of at least half the chain, homologue-like
  substitutions and masking;
* text (``text-contrastive``): two spans of the post, random-token substitutions and masking.

The method picks the recipe from the data's modality (``view_recipe_for``); ``views.recipe``
overrides it. A backbone with dropout (the Transformer's ``dropout``) adds SimCSE's noise on top
(Gao et al. 2021: dropout alone makes two different views of one sentence).

``rc_invariant=true`` (DNA) builds strand symmetry in instead of learning it: the encoder's pooled
features become the average over both strands (``TokenEncoder.make_rc_invariant``), identical for
a read and its reverse complement by construction, at twice the encoder cost. The encoder keeps
the setting, so evaluation embeds strand-invariantly too.

Any token backbone works (the Transformer, the dilated CNN, the bag of n-grams): the loss reads
pooled features only. ``dna-contrastive`` is the same method with DNA's defaults (16s-reads).

Options: temperature 0.2 and a 2-layer projector to 128 dimensions as our SimCLR; optimiser as
the other sequence methods (AdamW, see ``selfsup.methods.mlm``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones.token_encoder import as_token_encoder
from selfsup.losses import nt_xent
from selfsup.methods.base import NO_CONTEXT, BuildContext, StepOutput
from selfsup.methods.mlm import SEQUENCE_OPTIM
from selfsup.methods.simclr import SimCLR, SimCLROptions
from selfsup.registry import METHODS, VIEW_RECIPES
from selfsup.tokenize import DnaTokenizer, make_tokenizer
from selfsup.tokenize.base import Tokenizer
from selfsup.views.sequence_recipes import contrastive_recipe_name


@dataclass
class SequenceContrastiveOptions(SimCLROptions):
    rc_invariant: bool = False  # strand-averaged encoder, invariant to reverse complements (DNA)


@METHODS.register("seq-contrastive", "contrastive (NT-Xent) on proteins, DNA or text: two views by "
                                     "crops, substitutions, masking (+ reverse complement for DNA)")
class SequenceContrastive(SimCLR):
    """SimCLR's projector and loss over sequence views; its own forward pads the two views to one
    width and passes the attention mask."""

    Options = SequenceContrastiveOptions
    name = "seq-contrastive"  # in error messages
    view_recipe = "protein-contrastive"  # the recipe when no tokeniser says otherwise
    config_defaults = {"optim": SEQUENCE_OPTIM, "backbone": {"name": "transformer-small"},
                       "data": {"dataset": "swissprot-loc"}}

    def __init__(self, encoder: nn.Module, options: SequenceContrastiveOptions | None = None,
                 context: BuildContext = NO_CONTEXT) -> None:
        """``context.tokenizer``: the data's DNA tokeniser, whose reverse complement an
        ``rc_invariant`` encoder uses (default: the one the encoder's options name, else single
        nucleotides)."""
        as_token_encoder(encoder, self.name)
        super().__init__(encoder, options or SequenceContrastiveOptions(), context)
        if self.options.rc_invariant and not encoder.rc_invariant:
            encoder.make_rc_invariant(context.tokenizer or _data_tokenizer(encoder))

    @classmethod
    def view_recipe_for(cls, modality: str) -> str:
        """The contrastive recipe of the data's modality, where it registered one."""
        recipe = contrastive_recipe_name(modality)
        return recipe if recipe in VIEW_RECIPES else cls.view_recipe

    def forward(self, views: list[torch.Tensor]) -> StepOutput:
        # Both views in one forward pass (one larger batch; BatchNorm in the projector sees both).
        both = torch.cat(_same_width(views[:2], self.encoder.pad_id))
        z = self.projector(self.encoder(both, both != self.encoder.pad_id))
        z1, z2 = z.chunk(2)
        loss = nt_xent(z1, z2, self.options.temperature, self.gather, self.rank)
        positive_cosine = F.cosine_similarity(z1.float(), z2.float(), dim=1).mean()
        return StepOutput(loss=loss, embeddings=z1, logs={"positive_cosine": positive_cosine.detach()})


@METHODS.register("dna-contrastive", "seq-contrastive with DNA's defaults (16s-reads): crop, jitter, "
                                     "reverse complement, substitutions; option rc_invariant")
class DnaContrastive(SequenceContrastive):
    name = "dna-contrastive"
    view_recipe = "dna-contrastive"
    config_defaults = {"optim": SEQUENCE_OPTIM, "backbone": {"name": "transformer-small"},
                       "data": {"dataset": "16s-reads"}}


def _data_tokenizer(encoder: nn.Module) -> Tokenizer:
    """The tokeniser the encoder's options name (the trainer records the data's), else single
    nucleotides."""
    named = encoder.options.tokenizer
    return make_tokenizer(**named) if isinstance(named, dict) else DnaTokenizer()


def _same_width(views: list[torch.Tensor], pad_id: int) -> list[torch.Tensor]:
    """The views right-padded to the widest one, so they stack into one batch."""
    width = max(view.shape[1] for view in views)
    return [F.pad(view, (0, width - view.shape[1]), value=pad_id) for view in views]
