"""Files written whole or not at all, and never writable by everyone.

:class:`AtomicFile` (and :func:`atomic_write` around it) is the one way aibatch writes a
file a later run or another program reads: the checkpoint's parts, the Parquet output,
staged Dask partitions and ``--summary-json``. It writes a private temporary file in
the same folder, fsyncs it, renames it over the target and fsyncs the folder, so a
crash leaves the old file or the new one, never half of one. A target that is a
symbolic link is written through: the file the link points at is replaced, the link
stays.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "AtomicFile",
    "atomic_write",
    "fsync_dir",
    "open_private",
    "write_file",
]

FILE_MODE = 0o664  # less the user's umask: never writable by everyone
DIR_MODE = 0o775


def open_private(path: Path) -> BinaryIO:
    """Create ``path`` for writing with the user's umask, but never world-writable."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE), "wb")


def fsync_dir(path: Path) -> None:
    """Make a rename in the folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicFile:
    """A file that appears at ``path`` whole on :meth:`commit`, or not at all.

    Args:
        path: the target; a symbolic link is followed, so its target is replaced.
        temp: the temporary file's path [default: ``.NAME.PID.tmp`` beside the target].

    Attributes:
        file: the open temporary file to write.
    """

    def __init__(self, path: Path, *, temp: Path | None = None) -> None:
        self.path = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
        self.temp = temp or self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.file = open_private(self.temp)

    def commit(self) -> None:
        """Flush, fsync, rename into place and fsync the folder.

        Raises:
            OSError: any step failed; the temporary file is removed.
        """
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.temp, self.path)
            fsync_dir(self.path.parent)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Drop what was written; the target is untouched."""
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError):
            self.temp.unlink()

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


@contextlib.contextmanager
def atomic_write(path: Path, *, temp: Path | None = None) -> Iterator[BinaryIO]:
    """Write ``path`` whole or not at all (see :class:`AtomicFile`).

    Raises:
        OSError: the file could not be written; the target is untouched.
    """
    with AtomicFile(path, temp=temp) as atomic:
        yield atomic.file


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``: a regular file whole or not at all (:func:`atomic_write`).

    A device or a pipe (``/dev/stdout``, a FIFO) cannot be replaced by a file: it is
    written to as it is.

    Raises:
        OSError: the file could not be written (a folder, no permission, a full disk).
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        raise IsADirectoryError(21, "is a directory", str(path))
    if mode is not None and not stat.S_ISREG(mode):
        with open(path, "wb") as handle:
            handle.write(data)
        return
    with atomic_write(path) as handle:
        handle.write(data)
