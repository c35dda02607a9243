"""Masked language modelling (BERT, Devlin et al. 2019; for proteins ESM-2, Lin et al. 2023).

The "mlm" view recipe chooses 15% of the ordinary tokens of each sequence and hides them (80%
<mask>, 10% a random token, 10% unchanged); the Transformer reads the corrupted sequence and an LM
head predicts the original token at every chosen position, scored by cross-entropy there only
(``masked_token_cross_entropy``). For proteins this is masked amino-acid modelling.

Views: [inputs, labels] from the "mlm" recipe (``selfsup.views.sequence_recipes``).
Logs: ``masked_accuracy`` (top-1 on chosen positions) and ``perplexity`` = exp(loss), the
per-token perplexity over chosen positions (what ESM reports).

Options: ``tie_embeddings`` (default true) shares the LM head's output matrix with the token
embedding, as BERT and ESM do; with ~30 tokens it saves little but ties the input and output
meaning of a token. ``score_chosen_only`` runs the LM head at the chosen positions alone (default:
when the vocabulary is wider than the model, as with text; see ``scores_chosen_only``). Optimiser defaults follow ESM-2 / RoBERTa in kind — AdamW, betas (0.9, 0.98),
weight decay 0.01, gradient clipping at 1 — with a base lr of 2e-3 per 256 sequences, scaled by
√(batch / 256) (``SEQUENCE_OPTIM``), and one epoch of warm-up for the small models and short runs
here (ESM-2 used 4e-4 at ~2M tokens per batch and 2,000 warm-up steps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from selfsup.backbones.token_encoder import as_token_encoder
from selfsup.backbones.transformer import LanguageModelHead
from selfsup.losses import masked_token_accuracy, masked_token_cross_entropy
from selfsup.methods.base import BuildContext, Method, NO_CONTEXT, StepOutput
from selfsup.registry import METHODS
from selfsup.tokenize.base import IGNORE_LABEL
from selfsup.views import sequence_recipes  # noqa: F401  (registers the "mlm" recipe)

# The sequence methods' shared starting point (see the module docstring); "next-token" and
# "seq-contrastive" start from it too. The rate scales with √(batch / 256), Adam's rule: under the
# linear rule a user's batch of 32 turned 1e-3 into 1.25e-4, which barely trains a sequence model;
# now it is 7e-4, and batch 64 gets the 1e-3 that the small-budget runs trained well with.
SEQUENCE_OPTIM = {"name": "adamw", "lr": 2e-3, "lr_scaling": "sqrt", "weight_decay": 0.01,
                  "betas": [0.9, 0.98], "warmup_epochs": 1.0, "clip_grad": 1.0}


@dataclass
class MLMOptions:
    tie_embeddings: bool = True  # LM head output matrix = the token embedding (BERT, ESM)
    # run the LM head at the chosen positions only (None: when the vocabulary is wider than the
    # model, see ``MaskedLanguageModel.scores_chosen_only``)
    score_chosen_only: Optional[bool] = None


@METHODS.register("mlm", "masked language modelling (BERT/ESM): predict 15% masked tokens")
class MaskedLanguageModel(Method):
    Options = MLMOptions
    view_recipe = "mlm"
    held_out_logs = True  # the trainer logs loss and perplexity on held-out sequences
    config_defaults = {"optim": SEQUENCE_OPTIM, "backbone": {"name": "transformer-small"},
                       "data": {"dataset": "swissprot-loc"}}

    def __init__(self, encoder: nn.Module, options: MLMOptions | None = None,
                 context: BuildContext = NO_CONTEXT) -> None:
        super().__init__(encoder, context)
        self.options = options or MLMOptions()
        self.head = LanguageModelHead(as_token_encoder(encoder, "mlm", contextual=True), self.options.tie_embeddings)

    @property
    def scores_chosen_only(self) -> bool:
        """Whether the LM head runs at the chosen (~15 %) positions only.

        Only chosen positions enter the loss, so the logits elsewhere are wasted work; but picking
        the chosen positions out of the batch makes the host wait for the device once a step
        (their number is data-dependent). With a text vocabulary (8,192 tokens and more) the
        (B, L, V) logits dominate time and memory and picking pays; with ~30 amino-acid or
        nucleotide tokens the full logits cost less than one layer and the wait is not worth it.
        The default picks when the vocabulary is larger than the model width.
        """
        choice = self.options.score_chosen_only
        return self.encoder.vocab_size > self.encoder.out_dim if choice is None else choice

    def loss_weight(self, views: list[torch.Tensor]) -> torch.Tensor:
        """The micro-batch's number of chosen tokens: the loss is their mean."""
        return (views[1] != IGNORE_LABEL).sum()

    def forward(self, views: list[torch.Tensor]) -> StepOutput:
        inputs, labels = views[0], views[1]
        attention_mask = inputs != self.encoder.pad_id
        tokens = self.encoder.forward_tokens(inputs, attention_mask)
        if self.scores_chosen_only:
            chosen = labels != IGNORE_LABEL
            logits, labels = self.head(tokens[chosen]), labels[chosen]
        else:
            logits = self.head(tokens)
        loss = masked_token_cross_entropy(logits, labels, self.sum_across_processes)
        accuracy = masked_token_accuracy(logits, labels)
        return StepOutput(
            loss=loss,
            embeddings=self.encoder.pool_tokens(tokens, attention_mask),
            logs={"masked_accuracy": accuracy.detach(), "perplexity": loss.detach().exp()},
        )
