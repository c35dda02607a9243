"""Regression losses of the non-contrastive methods: a prediction regresses onto a target embedding.

Both are functions of the cosine between each prediction p_i and its target z_i, so they ignore
the embeddings' norms. Neither detaches anything: the caller decides which side is a target
(BYOL's target network already carries no gradient; SimSiam detaches ``z`` unless asked not to).
Each pair's loss is averaged over the batch; a pair loss needs no other sample, so these losses
stay exact under data parallelism without gathering the batch.

References:
  BYOL: Grill et al., "Bootstrap your own latent", NeurIPS 2020, eq. 2.
  SimSiam: Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021, eq. 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.errors import DataError


def _pair_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """cos(p_i, z_i) for each row i, computed in float32 whatever the autocast precision."""
    if p.dim() != 2 or p.shape != z.shape:
        raise DataError(
            f"a regression loss needs predictions and targets of the same shape (B, D), got "
            f"p {tuple(p.shape)} and z {tuple(z.shape)}: pair row i of p with row i of z"
        )
    # Normalising in bf16 loses about three digits of the cosine, which is all these losses see.
    return F.cosine_similarity(p.float(), z.float(), dim=1)


def normalized_mse(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's loss: mean over pairs of ||p̂_i − ẑ_i||² = 2 − 2·cos(p_i, z_i), in [0, 4]."""
    return (2 - 2 * _pair_cosine(p, z)).mean()


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's loss D(p, z): mean over pairs of −cos(p_i, z_i), in [−1, 1]."""
    return -_pair_cosine(p, z).mean()
