"""An input file's bytes: compressed or not, and in what encoding, told by their first bytes.

Each read of an input is one :class:`RawPass`: it opens the file and tells gzip, zstd
and bz2 apart by their first bytes, so a ``.csv`` that is really gzip reads too, and
so does compressed standard input. The first decompressed bytes tell a UTF-16 or
UTF-32 byte-order mark, and what bytes that fail to decode may really be.

A pass also hashes the bytes on disk as they go by, and a :class:`Fingerprint` is what
``stat`` says of the file: comparing two passes costs no extra read.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import os
import zlib
from dataclasses import dataclass
from pathlib import PurePath
from types import TracebackType
from typing import IO

import pyarrow as pa

from ..jobs.spec import COMPRESSION_SUFFIXES

__all__ = [
    "COMPRESSION_SUFFIXES",
    "READ_ERRORS",
    "Fingerprint",
    "RawPass",
    "bom_encoding",
    "format_suffix",
    "is_utf8",
    "new_hash",
    "undecodable_hint",
]

# What a damaged or cut compressed stream raises.
READ_ERRORS = (OSError, EOFError, zlib.error, pa.ArrowException)
_BUFFER = 1 << 20
_BZ2_BLOCKS = (b"1AY&SY", b"\x17rE8P\x90")  # a first block, or the end of an empty stream
# What aibatch does not decompress, named when such bytes fail to decode.
_FOREIGN = (
    (b"\xfd7zXZ\x00", "xz-compressed"),
    (b"\x04\x22\x4d\x18", "lz4-compressed"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"PK\x03\x04", "a zip archive (an Excel workbook?)"),
)
_BOMS = (  # UTF-32 first: its little-endian mark starts with UTF-16's
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)
# Where text that is mostly ASCII has its NUL bytes, by position modulo 4.
_NUL_SHAPES = {
    "utf-16-le": (False, True, False, True),
    "utf-16-be": (True, False, True, False),
    "utf-32-le": (False, True, True, True),
    "utf-32-be": (True, True, True, False),
}


def is_utf8(encoding: str) -> bool:
    """Whether ``encoding`` names UTF-8, the default (which a byte-order mark overrides)."""
    return encoding.lower().replace("_", "-") in ("utf-8", "utf8")


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


def bom_encoding(head: bytes) -> str | None:
    """``utf-16`` or ``utf-32`` when the text starts with that byte-order mark."""
    for mark, codec in _BOMS:
        if head.startswith(mark):
            return codec
    return None


def undecodable_hint(head: bytes) -> str | None:
    """What bytes that are not text in the encoding may be instead, from the text's start.

    Compressed data, an archive, or UTF-16/UTF-32 without a byte-order mark (NUL bytes
    every other byte): then trying another one-byte encoding would not help.
    """
    inner = compression_of(head)
    if inner:
        return f"it is {inner}-compressed twice: decompress it once first"
    for magic, kind in _FOREIGN:
        if head.startswith(magic):
            return f"it looks {kind}: decompress or export it to text first"
    sample = head[: len(head) // 4 * 4]
    if len(sample) < 8:
        return None
    nuls = [sample[i::4].count(0) * 4 / len(sample) for i in range(4)]
    for codec, shape in _NUL_SHAPES.items():
        if all(share > 0.5 if nul else share < 0.1 for share, nul in zip(nuls, shape, strict=True)):
            kind = codec[:6].upper()
            return f"it looks like {kind} without a byte-order mark: pass --encoding {codec}"
    return None


def new_hash() -> hashlib.blake2b:
    """The hash of a file's bytes that tells one pass from another."""
    return hashlib.blake2b(digest_size=32)


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What ``stat`` says of a file: which file it is, its size and its time."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, stat: os.stat_result) -> Fingerprint:
        """The fingerprint of a ``stat`` result."""
        return cls(stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def change(self, now: Fingerprint) -> str | None:
        """What changed from ``self`` to ``now``, in words, or ``None``."""
        if (now.device, now.inode) != (self.device, self.inode):
            return "another file now has its name"
        if now.size != self.size:
            return f"its size went from {self.size:,} to {now.size:,} bytes"
        if now.mtime_ns != self.mtime_ns:
            return "its modification time changed"
        return None


class _Hashing(io.RawIOBase):
    """A file's bytes, hashed as they are read."""

    def __init__(self, file: io.FileIO) -> None:
        super().__init__()
        self.file = file
        self.hash = new_hash()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        count = self.file.readinto(buffer)
        if count:
            self.hash.update(memoryview(buffer)[:count])
            self.count += count
        return count or 0

    def close(self) -> None:
        self.file.close()
        super().close()


class RawPass:
    """One read of a file from its start, decompressed as its first bytes say.

    The bytes stream through: memory stays flat however large the file.

    Attributes:
        stat: the opened file's ``fstat`` when the pass began.
        compression: ``gzip``, ``zstd``, ``bz2`` or ``None``.
        stream: the decompressed bytes.

    Raises:
        OSError: the file cannot be opened.
    """

    def __init__(self, path: str) -> None:
        file = io.FileIO(path, "rb")
        self._hashing = _Hashing(file)
        self._file = io.BufferedReader(self._hashing, _BUFFER)
        try:
            self.stat = os.fstat(file.fileno())
            self.compression = compression_of(self._file.peek(16)[:16])
        except BaseException:
            self._file.close()
            raise
        self._texts: list[IO[str]] = []
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

    def text(self, encoding: str, newline: str = "") -> IO[str]:
        """The bytes as text, strictly decoded.

        The text reader lives as long as the pass: dropped sooner, it would close the
        stream before :meth:`finish` reads the rest.
        """
        reader = io.TextIOWrapper(self.stream, encoding=encoding, errors="strict", newline=newline)
        self._texts.append(reader)
        return reader

    def finish(self) -> tuple[bytes, os.stat_result]:
        """Read what is left of the file: the digest of all its bytes, and its ``fstat`` now."""
        while self._file.read(_BUFFER):
            pass
        return self._hashing.hash.digest(), os.fstat(self._hashing.file.fileno())

    def consumed(self) -> tuple[int, bytes]:
        """How many bytes of the file were read so far, and their digest."""
        return self._hashing.count, self._hashing.hash.copy().digest()

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
