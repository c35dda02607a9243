"""Class-stratified random samples of labelled rows, shared by the evaluation protocols: the label
subsets of the probes, the rows the linear probe chooses its settings on, the queries k-NN
chooses k with. Permutations are drawn on the CPU, so a seed gives the same rows on any device."""

from __future__ import annotations

from typing import Callable

import torch


def split_per_class(
    labels: torch.Tensor, take: Callable[[int], int], seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly split the indices of each class into ``take(class size)`` taken and the rest.

    Returns (taken, rest) as sorted CPU LongTensors. Deterministic under ``seed`` whatever the
    labels' device, because the permutations are drawn on the CPU.
    """
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    taken, rest = [], []
    for cls in torch.unique(labels).tolist():
        members = (labels == cls).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        count = take(len(members))
        taken.append(members[:count])
        rest.append(members[count:])
    return torch.cat(taken).sort().values, torch.cat(rest).sort().values


def at_most_per_class(labels: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    """Sorted CPU indices of every row, or of a stratified random ~``limit`` of them when there
    are more: each class keeps its share (at least one row)."""
    if len(labels) <= limit:
        return torch.arange(len(labels))
    share = limit / len(labels)
    return split_per_class(labels, lambda size: max(1, round(share * size)), seed)[0]
