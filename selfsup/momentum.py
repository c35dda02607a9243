"""Momentum (EMA) targets shared by MoCo, BYOL and DINO.

A target network is a frozen copy of an online network whose weights follow the online ones as an
exponential moving average, θ_t ← m·θ_t + (1 − m)·θ_o, with m rising from its base value to 1 on a
cosine schedule (BYOL, DINO). Buffers (BatchNorm statistics) are copied, not averaged, or left to
the target's own forward passes (DINO's teacher: its running statistics are then those of its own
weights on the global views, as in the paper's code).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def momentum_at(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """Cosine schedule from ``base`` at step 0 to ``final`` at ``total_steps`` (BYOL eq. in §3.2)."""
    progress = min(1.0, step / max(1, total_steps))
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with gradients off: the target starts equal to the online network."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float,
               copy_buffers: bool = True) -> None:
    """θ_t ← m·θ_t + (1 − m)·θ_o for parameters (one fused call); buffers copied when
    ``copy_buffers``, else left alone."""
    target_params = list(target.parameters())
    online_params = [p.detach() for p in online.parameters()]
    torch._foreach_lerp_(target_params, online_params, 1.0 - momentum)
    if copy_buffers:
        target_buffers, online_buffers = list(target.buffers()), list(online.buffers())
        if len(target_buffers) != len(online_buffers):
            raise ValueError(f"the target has {len(target_buffers)} buffers, the online network "
                             f"{len(online_buffers)}: it must be a copy of it")
        if target_buffers:  # _foreach ops refuse empty lists
            # one fused call; like copy_, it casts to each target buffer's dtype
            torch._foreach_copy_(target_buffers, online_buffers)


class MomentumTarget(nn.Module):
    """Holds the EMA copy of ``online`` and updates it on the cosine momentum schedule.

    Call ``update(step, total_steps)`` from a method's ``after_step``; ``momentum`` is the value
    used by the last update (logged by methods that want to show it). ``copy_buffers=False`` keeps
    the target's own buffers (see the module docstring).
    """

    def __init__(self, online: nn.Module, base_momentum: float, final_momentum: float = 1.0,
                 copy_buffers: bool = True) -> None:
        super().__init__()
        self.net = frozen_copy(online)
        self.base_momentum = base_momentum
        self.final_momentum = final_momentum
        self.copy_buffers = copy_buffers
        self.momentum = base_momentum

    @torch.no_grad()
    def update(self, online: nn.Module, step: int, total_steps: int) -> None:
        self.momentum = momentum_at(step, total_steps, self.base_momentum, self.final_momentum)
        ema_update(self.net, online, self.momentum, self.copy_buffers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
