"""Next-token prediction (GPT, Radford et al. 2018) on the same Transformer backbone.

Token t attends to tokens ≤ t only (a causal mask) and the LM head predicts token t + 1 from its
output: the logits of positions 0 … L−2 are scored against the ids of positions 1 … L−1, padding
ignored. The first target is thus the first residue after ``<cls>`` and the last the ``<eos>``,
so the model also learns where sequences end.

The encoder must be causal (``backbone.causal=true``, which this method's config defaults set):
evaluation embeds with the encoder alone, and an encoder trained causally but read bidirectionally
would be read in a way it never saw. Pooled features then average the causal token states.

Views: [ids] from the "tokens" recipe (no augmentation). Logs: ``perplexity`` = exp(loss) per
predicted token, and ``next_token_accuracy``. Options and optimiser: as MLM (see
``selfsup.methods.mlm``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.backbones.token_encoder import as_token_encoder
from selfsup.backbones.transformer import LanguageModelHead
from selfsup.errors import ConfigError
from selfsup.losses import masked_token_accuracy, masked_token_cross_entropy
from selfsup.methods.base import BuildContext, Method, NO_CONTEXT, StepOutput
from selfsup.methods.mlm import SEQUENCE_OPTIM
from selfsup.registry import METHODS
from selfsup.tokenize.base import IGNORE_LABEL


@dataclass
class NextTokenOptions:
    tie_embeddings: bool = True  # LM head output matrix = the token embedding (GPT-2)


def next_token_targets(ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L−1) targets: the id of each next position, ``IGNORE_LABEL`` where it is padding."""
    return ids[:, 1:].masked_fill(~attention_mask[:, 1:], IGNORE_LABEL)


@METHODS.register("next-token", "next-token prediction (GPT-style) with a causal Transformer")
class NextToken(Method):
    Options = NextTokenOptions
    view_recipe = "tokens"
    held_out_logs = True  # the trainer logs loss and perplexity on held-out sequences
    config_defaults = {"optim": SEQUENCE_OPTIM,
                       "backbone": {"name": "transformer-small", "causal": True},
                       "data": {"dataset": "swissprot-loc"}}

    def __init__(self, encoder: nn.Module, options: NextTokenOptions | None = None,
                 context: BuildContext = NO_CONTEXT) -> None:
        super().__init__(encoder, context)
        self.options = options or NextTokenOptions()
        encoder = as_token_encoder(encoder, "next-token", contextual=True)
        if not hasattr(encoder, "causal"):
            raise ConfigError(f"next-token needs a causal Transformer (transformer-tiny, "
                              f"transformer-small or esm2-8m with backbone.causal=true); the "
                              f"{encoder.preset} backbone has no causal mode")
        if not encoder.causal:
            raise ConfigError("next-token needs a causal encoder, so that evaluation reads it the "
                              "way it was trained: set backbone.causal=true")
        self.head = LanguageModelHead(encoder, self.options.tie_embeddings)

    def loss_weight(self, views: list[torch.Tensor]) -> torch.Tensor:
        """The micro-batch's number of predicted tokens (its loss is their mean)."""
        ids = views[0]
        return (next_token_targets(ids, ids != self.encoder.pad_id) != IGNORE_LABEL).sum()

    def forward(self, views: list[torch.Tensor]) -> StepOutput:
        ids = views[0]
        attention_mask = ids != self.encoder.pad_id
        tokens = self.encoder.forward_tokens(ids, attention_mask, causal=True)
        logits = self.head(tokens[:, :-1])
        targets = next_token_targets(ids, attention_mask)
        loss = masked_token_cross_entropy(logits, targets, self.sum_across_processes)
        return StepOutput(
            loss=loss,
            embeddings=self.encoder.pool_tokens(tokens, attention_mask),
            logs={"next_token_accuracy": masked_token_accuracy(logits, targets).detach(),
                  "perplexity": loss.detach().exp()},
        )
