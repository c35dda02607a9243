"""Training: the Trainer, optimisers, schedules, checkpoints."""

from selfsup.train.trainer import Trainer, pretrain

__all__ = ["Trainer", "pretrain"]
