"""NT-Xent against an independent computation from its formula."""

import math

import numpy as np
import torch

from selfsup.losses import info_nce, nt_xent


def nt_xent_by_formula(z1: np.ndarray, z2: np.ndarray, t: float) -> float:
    """ℓ(i, j) = −log exp(s_ij/τ) / Σ_{k≠i} exp(s_ik/τ), averaged over all 2N anchors (SimCLR eq. 1)."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denominator = sum(math.exp(z[i] @ z[k] / t) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(z[i] @ z[j] / t) / denominator)
    return total / (2 * n)


def test_nt_xent_matches_formula():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    for t in (0.1, 0.5, 1.0):
        expected = nt_xent_by_formula(z1.numpy(), z2.numpy(), t)
        assert abs(nt_xent(z1, z2, t).item() - expected) < 1e-5


def test_nt_xent_is_low_for_matching_views_and_high_for_swapped():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(8, 16, generator=g)
    aligned = nt_xent(z, z + 0.01 * torch.randn(8, 16, generator=g), 0.1)
    shuffled = nt_xent(z, z[torch.roll(torch.arange(8), 1)], 0.1)
    assert aligned < 0.1 < shuffled


def test_gathered_negatives_split_across_processes_equal_one_big_batch():
    """Two simulated processes, each gathering the whole batch, average to the one-process loss."""
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    per_rank = 4
    losses = []
    for rank in range(2):
        mine1 = z1[rank * per_rank:(rank + 1) * per_rank]
        mine2 = z2[rank * per_rank:(rank + 1) * per_rank]
        gathered = {id(mine1): z1, id(mine2): z2}  # what an all-gather would return
        losses.append(nt_xent(mine1, mine2, 0.2, gather=lambda t: gathered[id(t)], rank=rank))
    assert torch.allclose(torch.stack(losses).mean(), nt_xent(z1, z2, 0.2), atol=1e-6)


def test_info_nce_positive_index_and_exclusion():
    q = torch.tensor([[1.0, 0.0]])
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    t = 0.5
    loss = info_nce(q, keys, torch.tensor([1]), t, exclude_index=torch.tensor([0]))
    expected = -math.log(math.exp(0 / t) / (math.exp(0 / t) + math.exp(-1 / t)))
    assert abs(loss.item() - expected) < 1e-6
