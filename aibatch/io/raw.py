"""An input file's bytes: compressed or not, told by their first bytes.

Each read of an input is one :class:`RawPass`: it opens the file and tells gzip, zstd
and bz2 apart by their first bytes, so a ``.csv`` that is really gzip reads too, and
so does compressed standard input.
"""

from __future__ import annotations

import bz2
import gzip
import io
import zlib
from pathlib import PurePath
from types import TracebackType
from typing import IO

import pyarrow as pa

__all__ = ["COMPRESSION_SUFFIXES", "READ_ERRORS", "RawPass", "format_suffix"]

COMPRESSION_SUFFIXES = {
    ".gz": "gzip",
    ".gzip": "gzip",
    ".zst": "zstd",
    ".zstd": "zstd",
    ".bz2": "bz2",
}
# What a damaged or cut compressed stream raises.
READ_ERRORS = (OSError, EOFError, zlib.error, pa.ArrowException)
_BUFFER = 1 << 20
_BZ2_BLOCKS = (b"1AY&SY", b"\x17rE8P\x90")  # a first block, or the end of an empty stream


def format_suffix(path: str) -> str:
    """The suffix naming the format, before any compression suffix: ``a.csv.gz`` -> ``.csv``."""
    pure = PurePath(path)
    if pure.suffix.lower() in COMPRESSION_SUFFIXES:
        pure = pure.with_suffix("")
    return pure.suffix.lower()


def compression_of(head: bytes) -> str | None:
    """The compression the first bytes of a file show, if aibatch reads it."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"(\xb5/\xfd"):
        return "zstd"
    if head[:3] == b"BZh" and head[3:4].isdigit() and head[4:10] in _BZ2_BLOCKS:
        return "bz2"
    return None


class RawPass:
    """One read of a file from its start, decompressed as its first bytes say.

    The bytes stream through: memory stays flat however large the file.

    Attributes:
        compression: ``gzip``, ``zstd``, ``bz2`` or ``None``.
        stream: the decompressed bytes.

    Raises:
        OSError: the file cannot be opened.
    """

    def __init__(self, path: str) -> None:
        self._file = io.BufferedReader(io.FileIO(path, "rb"), _BUFFER)
        try:
            self.compression = compression_of(self._file.peek(16)[:16])
        except BaseException:
            self._file.close()
            raise
        self.stream: IO[bytes]
        if self.compression == "gzip":
            self.stream = gzip.GzipFile(fileobj=self._file, mode="rb")  # type: ignore[assignment]
        elif self.compression == "bz2":
            self.stream = bz2.BZ2File(self._file, mode="rb")
        elif self.compression == "zstd":
            stream = pa.CompressedInputStream(self._file, "zstd")
            self.stream = io.BufferedReader(stream, _BUFFER)
        else:
            self.stream = self._file

    def close(self) -> None:
        """Close the file."""
        if self.stream is not self._file:
            self.stream.close()
        self._file.close()

    def __enter__(self) -> RawPass:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
