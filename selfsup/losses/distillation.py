"""Self-distillation losses: DINO (Caron et al. 2021).

A student matches the output distribution of a momentum teacher across views. Collapse is avoided
by two opposite forces on the teacher's output: *centring* (subtracting a running mean of the
teacher's logits) keeps one prototype from dominating, *sharpening* (a low teacher temperature)
keeps the distribution from becoming uniform.

``update_center`` needs the mean over the whole batch, so it takes the ``gather`` hook of the
contrastive losses (see ``selfsup.losses.contrastive``); single-process use needs none.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from selfsup.errors import DataError
from selfsup.losses.contrastive import Gather


def dino_loss(student_logits: Sequence[torch.Tensor], teacher_logits: Sequence[torch.Tensor],
              center: torch.Tensor, student_temp: float = 0.1,
              teacher_temp: float | torch.Tensor = 0.04) -> torch.Tensor:
    """DINO's cross-view cross-entropy (eq. 3 of the paper).

    student_logits: V tensors (B, K), one per view (the global views first, then the local ones).
    teacher_logits: T tensors (B, K) for the teacher's views, which are student views 0..T−1.
    center: (K,) running mean of the teacher's logits.

    Returns the mean over pairs (teacher view i, student view j ≠ i) of
    mean_b −Σ_k P_t[i, b, k] · log P_s[j, b, k], with P_t = softmax((t − center) / τ_t) treated as
    a constant and log P_s = log_softmax(s / τ_s). Computed in float32 whatever the inputs' dtype:
    τ_t = 0.04 makes the teacher's softmax too sharp for bf16.
    """
    num_teacher, num_student = len(teacher_logits), len(student_logits)
    if num_teacher < 1 or num_student < max(num_teacher, 2):
        raise DataError(f"DINO needs at least one teacher view and a student view other than it, "
                         f"got {num_teacher} teacher and {num_student} student views")
    targets = F.softmax((torch.stack(list(teacher_logits)).float() - center.float()) / teacher_temp,
                        dim=-1).detach()  # (T, B, K)
    log_probs = F.log_softmax(torch.stack(list(student_logits)).float() / student_temp,
                              dim=-1)  # (V, B, K)
    # Σ_{j≠i} CE(t_i, s_j) = −t_i · (Σ_j log s_j − log s_i): one sum over the views instead of a
    # loop over the T·(V−1) pairs.
    others = log_probs.sum(0, keepdim=True) - log_probs[:num_teacher]  # (T, B, K)
    total = -(targets * others).sum(-1).mean(-1).sum()
    return total / (num_teacher * (num_student - 1))


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float = 0.9,
                  gather: Optional[Gather] = None) -> torch.Tensor:
    """m · center + (1 − m) · (mean of ``teacher_logits`` (N, K) over the global batch).

    With ``gather`` each process's row sum and row count are gathered together (one collective of
    K + 1 numbers rather than of the whole batch), so processes with unequal batches still give the
    exact global mean.
    """
    logits = teacher_logits.detach().float()
    sums = torch.cat([logits.sum(0), logits.new_full((1,), float(len(logits)))])[None]  # (1, K + 1)
    if gather is not None:
        sums = gather(sums)
    sums = sums.sum(0)
    batch_mean = sums[:-1] / sums[-1]
    return momentum * center + (1 - momentum) * batch_mean.to(center.dtype)
