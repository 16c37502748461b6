"""Files replaced whole, so that a reader sees the old one or the new one, never half.

The run's checkpoint, the run report and the sinks' finished files are all
written this way: to a temporary file beside the target, synced, then renamed
onto it, and the rename made durable.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["replace_atomically", "write_atomically"]


def write_atomically(path: Path, data: bytes, *, mode: int = 0o666) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old file or the new one.

    The data goes to a temporary file beside ``path``, created with ``mode``
    less the umask (the kernel applies it: no process-wide umask juggling),
    synced, then renamed onto ``path`` with :func:`replace_atomically`. On any
    failure the temporary file is removed and ``path`` is left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        replace_atomically(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def replace_atomically(source: Path, target: Path) -> None:
    """Rename ``source`` onto ``target`` and make the rename durable."""
    os.replace(source, target)
    try:
        fd = os.open(target.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
