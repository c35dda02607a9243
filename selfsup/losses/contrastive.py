"""Contrastive losses: InfoNCE and NT-Xent.

Contrastive losses take a ``gather`` function so that, under torch.distributed, each process
compares its own queries against the keys of every process: ``gather`` must concatenate a tensor
across processes *with* gradients (an all-gather whose backward sends each process its slice of the
gradient); ``rank`` places this process's keys in the gathered batch. Single-process use needs
neither.

Precision: the similarities are computed in float32 with autocast switched off. Under bf16/fp16
autocast the matmul would otherwise run in half precision: cosines near 1 are then known to only
~3 digits, which τ = 0.2 magnifies five-fold inside the softmax.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

Gather = Callable[[torch.Tensor], torch.Tensor]


def info_nce(queries: torch.Tensor, keys: torch.Tensor, positive_index: torch.Tensor,
             temperature: float, exclude_index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """InfoNCE: mean over queries of −log softmax(q·k / τ) at the positive key.

    queries (Q, D) and keys (K, D) are L2-normalised here. ``positive_index[i]`` is the key that is
    query i's positive; ``exclude_index[i]`` (optional) is a key removed from query i's
    denominator (in NT-Xent, the query itself).
    """
    with torch.autocast(queries.device.type, enabled=False):
        queries = F.normalize(queries.float(), dim=1)
        keys = F.normalize(keys.float(), dim=1)
        logits = queries @ keys.T / temperature
        if exclude_index is not None:
            rows = torch.arange(len(queries), device=logits.device)
            logits = logits.index_put((rows, exclude_index),
                                      logits.new_full((), float("-inf")))
        return F.cross_entropy(logits, positive_index)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2,
            gather: Optional[Gather] = None, rank: int = 0) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy over 2B views (Chen et al. 2020).

    For view i of the batch its positive is the other view of the same image and its negatives are
    the other 2(N−1) views in the (possibly gathered, N-image) batch; the view itself is excluded.
    """
    batch = len(z1)
    local_queries = torch.cat([z1, z2])
    all1, all2 = (gather(z1), gather(z2)) if gather is not None else (z1, z2)
    total = len(all1)
    keys = torch.cat([all1, all2])
    own = torch.arange(batch, device=z1.device) + rank * batch  # this process's images in the gather
    self_index = torch.cat([own, own + total])
    positive_index = torch.cat([own + total, own])
    return info_nce(local_queries, keys, positive_index, temperature, exclude_index=self_index)


def queue_info_nce(queries: torch.Tensor, positive_keys: torch.Tensor, negatives: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    """MoCo's InfoNCE: each query against its own positive key and a shared bank of negatives.

    Mean over i of −log[exp(qᵢ·kᵢ/τ) / (exp(qᵢ·kᵢ/τ) + Σₙ exp(qᵢ·nₙ/τ))], with every vector
    L2-normalised. Unlike ``info_nce`` with keys = [batch keys; bank], the other queries' keys are
    not negatives: the logits are [l_pos, l_neg] exactly as in MoCo's pseudo-code. (MoCo v2's
    ``batch_negatives`` option, its default, is that ``info_nce`` form: queue + batch.)
    """
    with torch.autocast(queries.device.type, enabled=False):
        q = F.normalize(queries.float(), dim=1)
        k = F.normalize(positive_keys.float(), dim=1)
        n = F.normalize(negatives.float(), dim=1)
        logits = torch.cat([(q * k).sum(dim=1, keepdim=True), q @ n.T], dim=1) / temperature
        positive_first = torch.zeros(len(q), dtype=torch.long, device=q.device)
        return F.cross_entropy(logits, positive_first)
