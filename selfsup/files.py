"""Writing files so that a crash or a kill never leaves a torn one behind."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)``, fsync the file, then atomically rename it to ``path``.

    The temporary file sits in ``path``'s folder, and ``os.replace`` is atomic on POSIX: a reader
    sees the old file or the new one, never half of one. A failing ``write`` leaves no temporary
    file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def save_npy(path: str | Path, array) -> None:
    """``np.save`` of ``array`` to exactly ``path`` (given a name, numpy would append ``.npy``),
    through :func:`atomic_write`."""
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array)

    atomic_write(path, write)
