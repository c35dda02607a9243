"""The masked-modelling loss: cross-entropy over the chosen token positions only."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from selfsup.tokenize.base import IGNORE_LABEL


def masked_token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of −log p(true token) over the positions whose label is not ``IGNORE_LABEL`` (-100).

    ``logits`` are (..., V) over the vocabulary and ``labels`` the matching (...) int64 ids, e.g.
    from ``selfsup.views.sequence.bert_mask``. The mean runs over chosen tokens of the whole batch
    (BERT's and ESM's convention), computed in float32 whatever the logits' dtype. A batch with
    no chosen position gives 0, still attached to the graph, rather than 0/0.

    Data-parallel (a process group of N > 1 processes, in a pass that builds a graph): the whole
    batch is the global one. Shards hold different numbers of chosen tokens, so the mean of the
    processes' own means would weight tokens differently (Hugging Face's and BERT's loops do that).
    Instead one all-reduce (no gradient) gives the global sum S and count C, and each process
    returns a loss whose gradient is that of N·Sᵣ/C (its own tokens' sum Sᵣ) and whose value is the
    global mean S/C: DDP's gradient average (1/N Σᵣ) is then exactly the gradient of S/C, and every
    process logs the global loss (and perplexity). Without a graph (rank 0's held-out evaluation,
    which the others do not join) it is the process's own mean and never communicates.

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
    if total.requires_grad and dist.is_available() and dist.is_initialized():
        # Imported here: selfsup.train imports the methods, which import this module; a process
        # group exists only when training has loaded it already.
        from selfsup.train.distributed import _world_size, all_reduce_sum_

        processes = _world_size()
        if processes > 1:
            global_total, global_chosen = all_reduce_sum_(
                torch.stack([total.detach(), chosen.to(total.dtype)]))
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
