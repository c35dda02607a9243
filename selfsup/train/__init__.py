"""Training: the Trainer, optimisers, schedules, checkpoints.

``Trainer`` and ``pretrain`` load on first use, so that importing a light submodule (e.g.
:mod:`selfsup.train.process`) does not import the whole training stack.
"""

from typing import Any

__all__ = ["Trainer", "pretrain"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from selfsup.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
