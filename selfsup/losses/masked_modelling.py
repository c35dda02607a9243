"""The masked-modelling loss: cross-entropy over the chosen token positions only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.tokenize.base import IGNORE_LABEL


def masked_token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of −log p(true token) over the positions whose label is not ``IGNORE_LABEL`` (-100).

    ``logits`` are (..., V) over the vocabulary and ``labels`` the matching (...) int64 ids, e.g.
    from ``selfsup.views.sequence.bert_mask``. The mean runs over chosen tokens of the whole batch
    (BERT's and ESM's convention), computed in float32 whatever the logits' dtype. A batch with
    no chosen position gives 0, still attached to the graph, rather than 0/0.

    Under DDP or gradient accumulation each process (micro-batch) takes the mean over its own
    chosen tokens and those means are averaged, which weights tokens slightly differently from
    one mean over the global batch when shards hold different numbers of chosen tokens (as in
    BERT's and Hugging Face's training loops); the image methods' losses are exact there.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree: logits must "
            "be the labels' shape plus one vocabulary dimension"
        )
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()
    flat_labels = labels.reshape(-1)
    total = F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_LABEL, reduction="sum")
    chosen = (flat_labels != IGNORE_LABEL).sum()
    return total / chosen.clamp(min=1)


def masked_token_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Share of the positions whose label is not ``IGNORE_LABEL`` where the most likely token is the
    label (0 when none is chosen). Sums rather than boolean indexing: no host-device sync."""
    chosen = labels != IGNORE_LABEL
    correct = ((logits.argmax(dim=-1) == labels) & chosen).sum()
    return correct / chosen.sum().clamp(min=1)
