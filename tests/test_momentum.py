"""EMA targets move by exactly the scheduled amount."""

import math

import pytest
import torch
from torch import nn

from selfsup.momentum import MomentumTarget, ema_update, momentum_at


def test_momentum_schedule_endpoints_and_midpoint():
    assert momentum_at(0, 100, 0.99) == pytest.approx(0.99)
    assert momentum_at(100, 100, 0.99) == pytest.approx(1.0)
    assert momentum_at(50, 100, 0.99) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 2) + 1) / 2)


def test_ema_moves_the_target_by_exactly_one_minus_m():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    target = MomentumTarget(online, base_momentum=0.9)
    before = [p.clone() for p in target.net.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
        online[1].running_mean.fill_(5.0)
    target.update(online, step=0, total_steps=10)  # momentum 0.9 at step 0
    for b, t, o in zip(before, target.net.parameters(), online.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * o)
        assert not t.requires_grad
    assert torch.equal(target.net[1].running_mean, online[1].running_mean)  # buffers copied


def test_ema_update_with_momentum_one_is_frozen_and_zero_copies():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    w = a.weight.clone()
    ema_update(a, b, 1.0)
    assert torch.equal(a.weight, w)
    ema_update(a, b, 0.0)
    assert torch.equal(a.weight, b.weight)


def test_ema_update_copies_every_buffer_in_the_targets_dtype():
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.BatchNorm1d(4))
    target = MomentumTarget(online, base_momentum=0.9).net
    target[2].running_var = target[2].running_var.double()  # a target buffer of another dtype
    with torch.no_grad():
        for value, buffer in enumerate(online.buffers(), start=3):
            buffer.fill_(value)
    ema_update(target, online, 0.9)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        assert torch.equal(t, o.to(t.dtype))
    assert target[2].running_var.dtype == torch.float64
    assert target[1].num_batches_tracked.dtype == torch.int64


def test_ema_update_keeps_buffers_when_told_and_refuses_a_target_of_another_shape():
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    target = MomentumTarget(online, base_momentum=0.9).net
    with torch.no_grad():
        online[1].running_mean.fill_(2.0)
    ema_update(target, online, 0.9, copy_buffers=False)
    assert torch.equal(target[1].running_mean, torch.zeros(4))
    with pytest.raises(ValueError, match="buffers"):
        # the same parameters, but no BatchNorm statistics
        ema_update(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)), online, 0.9)
