"""Where this process sits in a torchrun launch, from the environment alone.

Kept free of torch so that the command line can ask "am I rank 0?" without loading the training
stack (``selfsup list`` or ``report`` under torchrun); :mod:`selfsup.train.distributed` builds on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from selfsup.errors import ConfigError


@dataclass(frozen=True)
class ProcessInfo:
    """Where this process sits in a (possibly single-process) data-parallel run."""

    rank: int = 0  # global rank, 0 … world_size − 1
    world_size: int = 1
    local_rank: int = 0  # rank on this node: which of the node's GPUs it uses

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, writes checkpoints and reports."""
        return self.rank == 0


def process_info() -> ProcessInfo:
    """This process's place in the run, from the variables torchrun sets (none: one process)."""
    values = {}
    for key, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        raw = os.environ.get(key, str(default))
        try:
            values[key] = int(raw)
        except ValueError:
            raise ConfigError(f"environment variable {key}={raw!r} is not an integer; launch "
                              "distributed runs with torchrun, which sets it") from None
    info = ProcessInfo(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
    if info.world_size < 1 or not 0 <= info.rank < info.world_size:
        raise ConfigError(f"RANK={info.rank} must lie in [0, WORLD_SIZE={info.world_size}); launch "
                          "distributed runs with torchrun, which sets both")
    return info


def is_main_process() -> bool:
    """True outside distributed runs and on rank 0 (for code that runs after training, e.g. the CLI's
    evaluation: only one process should write the report)."""
    return process_info().is_main
