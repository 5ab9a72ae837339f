"""Sources of rows: bounded, re-readable batches of Arrow rows, from a file or a table.

A source is re-iterable: the engine reads it once to check and key every row before
anything is sent, again to send, and a last time to write the output, each time in
batches of at most ``batch_rows`` rows, so memory stays flat however long the file is.

A file must stay as it is while a job reads it (rows are matched to answers by their
position): each read after the first compares the file's identity, size and time when
it opens it, and the hash of its bytes when it reaches the end, and raises
:class:`InputChanged` when they differ.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputChanged, InputError, shown
from .raw import Fingerprint, RawPass, new_hash

__all__ = ["Batch", "FileSource", "InputSource", "ParquetSource", "TableSource"]


@dataclass(frozen=True, slots=True)
class Batch:
    """Consecutive input rows.

    Attributes:
        data: the rows, every input column.
        start: 0-based position of the first row in its source.
        lines: the 1-based line each row starts on (text formats), for error messages.
        offset: position of the source's first row in the whole job (a partition's).
    """

    data: pa.RecordBatch
    start: int
    lines: list[int] | None = None
    offset: int = 0

    @property
    def first_row(self) -> int:
        """0-based position of the first row in the whole job."""
        return self.offset + self.start

    def line_of(self, index: int) -> tuple[int | None, int]:
        """``(line, row)`` of the batch's ``index``-th row, for an :class:`InputError`."""
        return (self.lines[index] if self.lines else None), self.first_row + index


class InputSource:
    """Rows of one input, readable several times in bounded batches.

    Attributes:
        path: the file to read.
        name: how messages name the input (the path, ``<stdin>``, ``<DataFrame>``).
        columns: the input's column names (for JSONL, complete after one full read).
        offset: position of the first row in the whole job, when this is one partition.
    """

    def __init__(
        self,
        path: str,
        *,
        name: str | None = None,
        batch_rows: int = 10_000,
        limit: int | None = None,
        offset: int = 0,
    ) -> None:
        self.path = path
        self.name = name or path
        self.offset = offset
        self.batch_rows = batch_rows
        self.limit = limit
        self.columns: list[str] = []

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def schema(self) -> pa.Schema:
        """The Arrow schema of the batches."""
        return pa.schema([(name, pa.string()) for name in self.columns])

    def check_unchanged(self) -> None:
        """Raise :class:`InputChanged` if the input is no longer what was first read.

        One ``stat`` of the file (its identity, size and time); an input that is not a
        file never changes. Each read checks this itself, and the hash of the bytes too.
        """

    def _rows(self) -> Generator[Batch]:
        raise NotImplementedError

    def batches(self) -> Iterator[Batch]:
        """Yield the input's rows in order, at most ``limit`` of them.

        Raises:
            InputError: the input is unreadable, empty or malformed.
            InputChanged: the file is not what an earlier read saw.
        """
        left = self.limit
        seen = 0
        stopped = False
        try:
            with contextlib.closing(self._rows()) as rows:
                for batch in rows:
                    seen += batch.data.num_rows
                    if left is not None:
                        if left <= 0:
                            stopped = True
                            break
                        if batch.data.num_rows > left:
                            batch = Batch(
                                batch.data.slice(0, left),
                                batch.start,
                                batch.lines[:left] if batch.lines else None,
                            )
                        left -= batch.data.num_rows
                    if self.offset:
                        batch = Batch(batch.data, batch.start, batch.lines, self.offset)
                    yield batch
                    if left is not None and left <= 0:
                        stopped = True
                        break
            if stopped:
                self._stopped()
                return
        except InputChanged:
            raise
        except InputError:
            # A file cut short or rewritten while it was read looks malformed: say what
            # really happened.
            self.check_unchanged()
            raise
        if seen == 0:
            raise InputError(self.name, self._no_rows_reason())

    def _no_rows_reason(self) -> str:
        return "has no rows"

    def _stopped(self) -> None:
        """A read that ``limit`` stopped before the end: check what it could."""


class FileSource(InputSource):
    """A source read from a file, which must stay as it is while a job reads it.

    The first open records the file's :class:`Fingerprint` (identity, size, time) and
    the first read to the end the hash of its bytes; each later read compares the
    fingerprint when it opens the file and the hash when it reaches the end. A read that
    ``limit`` stops early compares the fingerprint, and the hash of the bytes it had read
    when it stopped (every read of the same bytes stops at the same byte).
    """

    def __init__(self, path: str, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._fingerprint: Fingerprint | None = None
        self._digest: bytes | None = None
        self._consumed: tuple[int, bytes] | None = None  # of the last text read
        self._prefix: tuple[int, bytes] | None = None  # of the first read limit stopped

    def check_unchanged(self) -> None:
        """Raise :class:`InputChanged` if the file's identity, size or time changed."""
        if self._fingerprint is None:
            return
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            raise InputChanged(self.name, "it can no longer be read") from exc
        self._compare(stat)

    def _compare(self, stat: os.stat_result) -> None:
        now = Fingerprint.of(stat)
        if self._fingerprint is None:
            self._fingerprint = now
            return
        change = self._fingerprint.change(now)
        if change:
            raise InputChanged(self.name, change)

    def _finished(self, digest: bytes, stat: os.stat_result) -> None:
        """A read reached the end: the same file, still, with the same bytes."""
        self._compare(stat)
        if self._digest is None:
            self._digest = digest
        elif digest != self._digest:
            raise InputChanged(self.name, "its content changed, though not its size or time")

    def _opened(self, exc: OSError) -> InputError:
        """Why the file would not open: gone since an earlier read, or never readable."""
        if self._fingerprint is not None and isinstance(exc, FileNotFoundError):
            return InputChanged(self.name, "it was deleted or moved")
        return InputError(self.name, f"cannot read: {exc.strerror or exc}")

    @contextlib.contextmanager
    def _open_pass(self) -> Iterator[RawPass]:
        """The file's bytes, decompressed, for one read from its start."""
        try:
            raw = RawPass(self.path)
        except OSError as exc:
            raise self._opened(exc) from exc
        with raw:
            self._compare(raw.stat)
            try:
                yield raw
            finally:
                self._consumed = raw.consumed()

    def _stopped(self) -> None:
        """A read stopped by ``limit``: the same file, with the same bytes as far as it read."""
        self.check_unchanged()
        consumed, self._consumed = self._consumed, None
        if consumed is None:  # Parquet: read by column chunks, checked by fingerprint only
            return
        if self._prefix is None:
            self._prefix = consumed
        elif consumed != self._prefix:
            raise InputChanged(self.name, "its first rows changed, though not its size or time")


class ParquetSource(FileSource):
    """A Parquet file; its columns keep their types."""

    def __init__(self, path: str, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        try:
            with pa.OSFile(path) as handle:
                self._compare(os.fstat(handle.fileno()))
                self._schema = pq.read_schema(handle)
        except pa.ArrowException as exc:
            raise InputError(self.name, f"not a readable Parquet file: {exc}") from exc
        except OSError as exc:
            raise InputError(self.name, f"cannot read: {exc.strerror or exc}") from exc
        self.columns = list(self._schema.names)
        duplicates = sorted({n for n in self.columns if self.columns.count(n) > 1})
        if duplicates:
            raise InputError(
                self.name, f"names a column twice: {', '.join(map(shown, duplicates))}"
            )

    def schema(self) -> pa.Schema:
        """The file's own schema, without pandas metadata."""
        return self._schema.remove_metadata()

    def _rows(self) -> Generator[Batch]:
        start = 0
        try:
            file = pa.OSFile(self.path)
        except OSError as exc:
            raise self._opened(exc) from exc
        try:
            with file, pq.ParquetFile(file) as handle:
                self._compare(os.fstat(file.fileno()))
                for data in handle.iter_batches(batch_size=self.batch_rows):
                    if data.num_rows:
                        self._validate(data, start)
                        yield Batch(data.replace_schema_metadata(None), start, None, self.offset)
                        start += data.num_rows
        except pa.ArrowException as exc:
            raise InputError(self.name, f"not a readable Parquet file: {exc}") from exc
        # Parquet is read out of order, by column chunks: hash the file once read through.
        try:
            with open(self.path, "rb") as again:
                digest = hashlib.file_digest(again, new_hash).digest()
                stat = os.fstat(again.fileno())
        except OSError as exc:
            raise self._opened(exc) from exc
        self._finished(digest, stat)

    def _validate(self, data: pa.RecordBatch, start: int) -> None:
        """Refuse string cells that are not valid UTF-8, naming the row and column."""
        try:
            data.validate(full=True)
        except pa.ArrowInvalid as exc:
            for name, column in zip(data.schema.names, data.columns, strict=True):
                if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                    continue
                for index, value in enumerate(column.cast(pa.binary()).to_pylist()):
                    try:
                        (value or b"").decode("utf-8")
                    except UnicodeDecodeError:
                        row = self.offset + start + index
                        raise InputError(
                            self.name, f"row {row}: text that is not valid UTF-8", column=name
                        ) from exc
            raise InputError(self.name, f"not a readable Parquet file: {exc}") from exc


class TableSource(InputSource):
    """An in-memory Arrow table (``run_frame``)."""

    def __init__(self, table: pa.Table, *, name: str = "<DataFrame>", **kwargs: Any) -> None:
        super().__init__(name, name=name, **kwargs)
        self.table = table.replace_schema_metadata(None)
        self.columns = list(self.table.column_names)

    def schema(self) -> pa.Schema:
        """The table's schema."""
        return self.table.schema

    def _rows(self) -> Generator[Batch]:
        start = 0
        for data in self.table.to_batches(max_chunksize=self.batch_rows):
            if data.num_rows:
                yield Batch(data, start)
                start += data.num_rows
