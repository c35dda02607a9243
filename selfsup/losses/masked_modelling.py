"""The masked-modelling loss: cross-entropy over the chosen token positions only."""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from selfsup.tokenize.base import IGNORE_LABEL


def masked_token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                               sum_across_processes: Optional[Callable[[torch.Tensor], torch.Tensor]]
                               = None) -> torch.Tensor:
    """Mean of −log p(true token) over the positions whose label is not ``IGNORE_LABEL`` (-100).

    ``logits`` are (..., V) over the vocabulary and ``labels`` the matching (...) int64 ids, e.g.
    from ``selfsup.views.sequence.bert_mask``. The mean runs over chosen tokens of the whole batch
    (BERT's and ESM's convention), computed in float32 whatever the logits' dtype. A batch with
    no chosen position gives 0, still attached to the graph, rather than 0/0.

    Data-parallel: ``sum_across_processes`` (an in-place all-reduce sum, no gradient: the ``sum``
    of the collectives a method is built with, for shards that hold different numbers of chosen
    tokens) makes the whole batch the global one. The mean of the processes' own means would
    weight tokens differently (Hugging Face's and BERT's loops do that); instead one all-reduce
    gives the global sum S, count C and number of processes N, and each process returns a loss
    whose gradient is that of N·Sᵣ/C (its own tokens' sum Sᵣ) and whose value is the global mean
    S/C: DDP's gradient average (1/N Σᵣ) is then exactly the gradient of S/C, and every process
    logs the global loss (and perplexity). Without a graph (rank 0's held-out evaluation, which
    the others do not join) it is the process's own mean and never communicates.

    Gradient accumulation (k micro-batches a step, with or without processes): each micro-batch's
    loss is its own mean (global over the processes); the trainer weights micro-batch i by its
    share of the step's chosen tokens (``Method.loss_weight``,
    ``selfsup.train.trainer.micro_batch_weights``), which makes the step exactly one mean over
    all of them.
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
    if sum_across_processes is not None and total.requires_grad:
        # one collective: Σ of (sum, count, 1) over the processes is (S, C, N)
        global_total, global_chosen, processes = sum_across_processes(
            torch.stack([total.detach(), chosen.to(total.dtype), torch.ones_like(total)]))
        count = global_chosen.clamp(min=1)
        share = total * processes / count
        return share + (global_total / count - share).detach()
    return total / chosen.clamp(min=1)


def masked_token_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Share of the positions whose label is not ``IGNORE_LABEL`` where the most likely token is the
    label (0 when none is chosen). Sums rather than boolean indexing: no host-device sync.

    A log, not a loss: under data parallelism it covers this process's shard only (as the other
    methods' logs do), which saves a collective per step."""
    chosen = labels != IGNORE_LABEL
    correct = ((logits.argmax(dim=-1) == labels) & chosen).sum()
    return correct / chosen.sum().clamp(min=1)
