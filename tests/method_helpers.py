"""Checks that several method test files share."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from selfsup.momentum import momentum_at
from selfsup.views import make_views


def digit_step_losses(method: nn.Module, pool: torch.Tensor, optimizer: torch.optim.Optimizer,
                      steps: int = 15, batch: int = 32, seed: int = 0) -> list[float]:
    """Per-step losses of ``steps`` optimiser steps on random batches of ``pool`` (uint8 images),
    each with fresh views of the method's own recipe; batches and views share one seeded generator."""
    views = make_views(method.view_recipe, tuple(pool.shape[1:]), {})
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        images = pool[torch.randint(len(pool), (batch,), generator=generator)]
        loss = method(views(images, generator)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def assert_ema_step(method: nn.Module, online: Sequence[torch.Tensor], target: Sequence[torch.Tensor],
                    base_momentum: float) -> None:
    """The target starts as a copy of the online weights and, after ``after_step(3, 10)``, sits at
    exactly m·before + (1 − m)·online with m = momentum_at(3, 10, base) strictly inside (base, 1)."""
    online, target = list(online), list(target)
    assert len(online) == len(target)
    assert all(torch.equal(o, t) for o, t in zip(online, target))
    with torch.no_grad():
        for o in online:
            o.add_(torch.randn_like(o))
    before = [t.clone() for t in target]
    method.after_step(3, 10)
    m = momentum_at(3, 10, base_momentum)
    assert base_momentum < m < 1.0  # mid-schedule: neither the base nor the final value
    for b, t, o in zip(before, target, online):
        torch.testing.assert_close(t, m * b + (1 - m) * o)
