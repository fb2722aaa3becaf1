"""Writing a file whole: to a temporary name in the target's directory, flushed to the
disk, then renamed over the target (``os.replace``, atomic on one file system). A
process killed mid-write, a full disk or an exception leaves the target as it was and no
temporary file behind.

Files kvchat keeps for the user (conversations, exports, cached model states, its
preferences) are private: created 0600 in a data dir created 0700. A directory that
exists already keeps its mode: it may be one the user chose.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
SHARED_FILE = 0o644
"""Reports meant to be read by others (benchmark results)."""


def private_dir(path: Path) -> Path:
    """``path`` as a directory, created 0700 where it does not exist yet (its missing
    parents as ``mkdir -p`` makes them). An existing one keeps its mode. Raises OSError."""
    path = Path(path)
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            path.mkdir(mode=PRIVATE_DIR)
            os.chmod(path, PRIVATE_DIR)  # mkdir's mode is filtered by the umask
    return path


def atomic_write(path: Path, data: str | bytes | Iterable[bytes | bytearray], *,
                 mode: int | None = None) -> None:
    """Write ``data`` (text as UTF-8, bytes, or parts written in order) to ``path``
    whole. ``mode``: the new file's permissions; None keeps those of the file it
    replaces, or else makes it private (0600). Raises OSError; the target is then as
    it was."""
    path = Path(path)
    if mode is None:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            mode = PRIVATE_FILE
    # mkstemp creates the file 0600 and under a name no one else can take.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            parts = [data.encode("utf-8")] if isinstance(data, str) else \
                [data] if isinstance(data, bytes | bytearray) else data
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        if mode != PRIVATE_FILE:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _sync_dir(path.parent)


def _sync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where directories cannot be
    opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
