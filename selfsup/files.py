"""Writing files so that a crash or a kill never leaves a torn one behind."""

from __future__ import annotations

import errno
import fcntl
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from selfsup.errors import DataError

_UMASK = os.umask(0o022)  # reading the umask means setting it: set it straight back
os.umask(_UMASK)
TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)$")  # what atomic_write names its file while writing


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
        # the mode a plain open() would give (some writers, safetensors' among them, make 0600)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except OSError as error:  # name the file meant, not its temporary (same errno, same class)
        if error.errno is None:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from error
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """``text`` (UTF-8) into ``path`` through :func:`atomic_write`."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporary files of :func:`atomic_write` in ``folder`` whose writer is no longer
    running (a process killed while writing leaves one behind); return them."""
    removed = []
    for path in Path(folder).glob(".*.tmp-*"):
        match = TEMPORARY.match(path.name)
        if match and not _is_running(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _is_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@contextmanager
def exclusive_lock(path: str | Path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold an OS lock on ``path`` (created if missing) while the block runs; DataError at once
    when another process holds it (``wait``: wait for it instead, for short critical sections).
    ``what`` names the locked thing in that error.

    ``flock`` locks belong to the open file, so the kernel releases them when the process ends,
    however it ends (``kill -9`` included): a dead writer never leaves a run locked. The file
    holds the holder's PID, for the message."""
    path = Path(path)
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise DataError(f"{what} is being written by another selfsup process (PID {holder}); "
                            "wait for it to finish, or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


def save_npy(path: str | Path, array) -> None:
    """``np.save`` of ``array`` to exactly ``path`` (given a name, numpy would append ``.npy``),
    through :func:`atomic_write`."""
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array)

    atomic_write(path, write)
