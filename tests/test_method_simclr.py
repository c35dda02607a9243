"""SimCLR learns on digits: its NT-Xent loss (tested against its formula in test_losses.py) falls
over a few steps, as every other method's does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from method_helpers import TINY_CNN, assert_loss_falls, digit_step_losses
from selfsup.backbones import build_backbone
from selfsup.data import load_split
from selfsup.methods import build_method


def simclr_digits_losses(lr: float, steps: int = 15) -> list[float]:
    """Per-step losses of ``steps`` Adam steps at ``lr`` on digits (batches of 64, fresh views each
    step); the same seeds, hence the same initial weights, batches and views, for any ``lr``."""
    torch.manual_seed(0)
    images = load_split("digits", "train").get(torch.arange(512))
    method = build_method({"name": "simclr"}, build_backbone(TINY_CNN, 1, 8))
    optimizer = torch.optim.Adam(method.parameters(), lr=lr)
    return digit_step_losses(method, images, optimizer, steps=steps, batch=64)


def test_simclr_loss_falls_on_digits():
    learnt, frozen = simclr_digits_losses(1e-2), simclr_digits_losses(0.0)
    # About 5.23 → 4.75 (means of the first and last 3 steps); chance is log(2 · 64 − 1) = 4.84.
    assert_loss_falls(learnt)
    # Fresh views make the loss jump by ±0.15 from step to step even with frozen weights (5.43 →
    # 5.29, which alone would pass the check above), so compare with frozen weights on the very
    # same batches and views: about 0.6 lower over the last 5 steps.
    assert frozen[0] == pytest.approx(learnt[0])  # the same start: the comparison is paired
    assert np.mean(frozen[-5:]) - np.mean(learnt[-5:]) > 0.3, (learnt, frozen)
