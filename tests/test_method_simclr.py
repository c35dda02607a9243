"""SimCLR learns on digits: its NT-Xent loss (tested against its formula in test_losses.py) falls
over a few steps, as every other method's does."""

from __future__ import annotations

from method_helpers import assert_learns_on_digits


def test_simclr_loss_falls_on_digits():
    # About 5.23 → 4.75 (means of the first and last 3 steps); chance is log(2 · 64 − 1) = 4.84.
    # Frozen weights on the same batches and views end about 0.6 higher.
    assert_learns_on_digits({"name": "simclr"})
