"""Input files as bounded batches of Arrow rows: CSV, TSV, JSONL, Parquet, stdin.

A source is re-iterable: the engine reads it once to check and key every row before
anything is sent, again to send, and a last time to write the output, each time in
batches of at most ``batch_rows`` rows, so memory stays flat however long the file is.
Text files may be gzip, zstd or bz2 compressed, and UTF-16 or UTF-32 with a byte-order
mark. Every problem is an :class:`InputError` naming the file, the line and the column.

A file must stay as it is while a job reads it (rows are matched to answers by their
position): each read after the first compares the file's identity, size and time when
it opens it, and the hash of its bytes when it reaches the end, and raises
:class:`InputChanged` when they differ.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import glob
import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputChanged, InputError, shown
from ..files import DIR_MODE, atomic_write
from ..jobs.spec import INPUT_FORMATS, QUOTINGS
from .raw import (
    COMPRESSION_SUFFIXES,
    READ_ERRORS,
    Fingerprint,
    RawPass,
    bom_encoding,
    format_suffix,
    is_utf8,
    new_hash,
    undecodable_hint,
)

__all__ = [
    "Batch",
    "InputSource",
    "PartitionFile",
    "TableSource",
    "dataset_files",
    "dataset_partitions",
    "detect_format",
    "frame_source",
    "open_input",
    "spool_stdin",
    "stage_partitions",
]

log = logging.getLogger(__name__)

_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_DELIMITER_NAMES = {"\\t": "\t", "tab": "\t"}
_CSV_FIELD_LIMIT = 2**31 - 1
_HEAD = 4096  # bytes read on opening: a byte-order mark, what undecodable bytes may be


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
        with contextlib.closing(self._rows()) as rows:
            for batch in rows:
                seen += batch.data.num_rows
                if left is not None:
                    if left <= 0:
                        return
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
                    return
        if seen == 0:
            raise InputError(self.name, self._no_rows_reason())

    def _no_rows_reason(self) -> str:
        return "has no rows"


class FileSource(InputSource):
    """A source read from a file, which must stay as it is while a job reads it.

    The first open records the file's :class:`Fingerprint` (identity, size, time) and
    the first read to the end the hash of its bytes; each later read compares the
    fingerprint when it opens the file and the hash when it reaches the end.
    """

    def __init__(self, path: str, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._fingerprint: Fingerprint | None = None
        self._digest: bytes | None = None

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
            yield raw


class TextSource(FileSource):
    """A text file in ``encoding``, perhaps gzip, zstd or bz2 compressed.

    With the default UTF-8, a UTF-16 or UTF-32 byte-order mark says the encoding instead.

    Attributes:
        compression: ``gzip``, ``zstd``, ``bz2`` or ``None``, from the file's first bytes.
        head: the first decompressed bytes.
        codec: the encoding text is decoded with.
    """

    def __init__(self, path: str, *, encoding: str = "utf-8", **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.encoding = encoding
        try:
            codecs.lookup(encoding)
        except LookupError as exc:
            raise InputError(self.name, f"unknown encoding {encoding!r}") from exc
        with self._open_pass() as raw:
            self.compression = raw.compression
            try:
                self.head = raw.stream.read(_HEAD)
            except READ_ERRORS as exc:
                raise self._read_error(exc, 0) from exc
        if not self.head:
            raise InputError(self.name, f"is empty once {self.compression} decompressed")
        bom = bom_encoding(self.head) if is_utf8(encoding) else None
        # utf-8-sig: a UTF-8 byte-order mark is not part of the first column's name.
        self.codec = bom or ("utf-8-sig" if is_utf8(encoding) else encoding)
        self._label = bom.upper() if bom else encoding

    def _text(self, raw: RawPass, newline: str = "") -> IO[str]:
        return raw.text(self.codec, newline)

    def _read_error(self, exc: BaseException, line: int) -> InputError:
        """A read that failed: damaged compressed data, or the disk."""
        where = f" after line {line}" if line else ""
        if self.compression:
            reason = f"the {self.compression} data is damaged or cut short{where}: {exc}"
        else:
            reason = f"cannot read{where}: {getattr(exc, 'strerror', None) or exc}"
        return InputError(self.name, reason)

    def _decode_error(self, exc: UnicodeDecodeError) -> InputError:
        """The line and byte of the first undecodable byte, and what the file may be."""
        codec = "utf-8" if self.codec == "utf-8-sig" else self.codec
        fix = undecodable_hint(self.head) or "pass --encoding (e.g. --encoding latin-1)"
        if codecs.lookup(codec).name.startswith(("utf-16", "utf-32")):
            # Lines of two- and four-byte text cannot be found by splitting bytes on \n.
            return InputError(self.name, f"not valid {self._label}: {exc.reason}; {fix}")
        with self._open_pass() as raw:
            for number, line in enumerate(raw.stream, 1):
                try:
                    line.decode(codec)
                except UnicodeDecodeError as bad:
                    return InputError(
                        self.name,
                        f"bytes that are not valid {self._label} at byte {bad.start + 1} of"
                        f" the line; {fix}",
                        line=number,
                    )
        return InputError(self.name, f"not valid {self._label}: {exc.reason}; {fix}")


class CsvSource(TextSource):
    """A CSV or TSV file with a header row.

    With ``quoting=False`` (TSV's default) a quote is text like any other character and
    each line is a row: a field cannot hold the delimiter or a line break. Columns with
    no name at the end of the header (Excel writes ``prompt,id,,,``) are dropped, as
    long as every row leaves them empty.
    """

    def __init__(
        self,
        path: str,
        *,
        delimiter: str = ",",
        quoting: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(path, **kwargs)
        self.delimiter = delimiter
        self.quoting = quoting
        self.columns, self._width = self._read_header()

    def _records(self, handle: IO[str]) -> Iterator[tuple[int, list[str]]]:
        """``(line, fields)`` of each record that is not a blank line, the header first."""
        if not self.quoting:
            delimiter = self.delimiter
            for number, text in enumerate(handle, 1):
                text = text.rstrip("\r\n")
                if text:
                    yield number, text.split(delimiter)
            return
        reader = csv.reader(handle, delimiter=self.delimiter, strict=True)
        line = 1
        try:
            for record in reader:
                if record:
                    yield line, record
                line = reader.line_num + 1
        except csv.Error as exc:
            raise InputError(self.name, f"malformed CSV: {exc}", line=line) from exc

    def _open_records(self, raw: RawPass) -> Iterator[tuple[int, list[str]]]:
        # Without quoting only \n ends a line: a lone \r is text, as a tab-separated
        # field cannot be quoted to hold it.
        return self._records(self._text(raw, "" if self.quoting else "\n"))

    def _read_header(self) -> tuple[list[str], int]:
        """The column names, and how many fields the header has, trailing nameless ones too."""
        csv.field_size_limit(_CSV_FIELD_LIMIT)
        with self._open_pass() as raw:
            try:
                line, header = next(self._open_records(raw), (1, None))
            except UnicodeDecodeError as exc:
                raise self._decode_error(exc) from exc
            except READ_ERRORS as exc:
                raise self._read_error(exc, 0) from exc
        if header is None:
            raise InputError(self.name, "is empty (no header row)")
        names = [name.strip() for name in header]
        width = len(names)
        while len(names) > 1 and not names[-1]:
            names.pop()  # Excel ends rows with empty columns: prompt,id,,,
        for position, name in enumerate(names, 1):
            if not name:
                raise InputError(
                    self.name, "the header has a column with no name", line=line, column=position
                )
        hint = undecodable_hint(self.head) if any("\x00" in name for name in names) else None
        if hint:  # UTF-16 that is all ASCII decodes as UTF-8 with a NUL after each letter
            raise InputError(self.name, f"the header holds NUL characters: {hint}", line=line)
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise InputError(
                self.name,
                f"the header names a column twice: {', '.join(map(shown, duplicates))}",
                line=line,
            )
        return names, width

    def _no_rows_reason(self) -> str:
        return "has a header but no rows"

    def _trim(self, record: list[str], line: int) -> list[str]:
        """A row of the named columns: its fields under trailing nameless ones must be empty."""
        named, width = len(self.columns), self._width
        if not named < len(record) <= width:
            expected = str(width) if width == named else f"{named} to {width}"
            raise InputError(
                self.name,
                f"expected {expected} fields as in the header, found {len(record)}",
                line=line,
            )
        for position, value in enumerate(record[named:], named + 1):
            if value.strip():
                raise InputError(
                    self.name,
                    "a value under a column with no name in the header",
                    line=line,
                    column=position,
                )
        return record[:named]

    def _rows(self) -> Generator[Batch]:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
        named = len(self.columns)
        names = self.columns
        with self._open_pass() as raw:
            rows: list[list[str]] = []
            lines: list[int] = []
            start = 0
            line = 1
            try:
                records = self._open_records(raw)
                next(records, None)  # the header
                for line, record in records:
                    rows.append(record if len(record) == named else self._trim(record, line))
                    lines.append(line)
                    if len(rows) == self.batch_rows:
                        yield Batch(_string_batch(names, rows), start, lines)
                        start += len(rows)
                        rows, lines = [], []
            except UnicodeDecodeError as exc:
                raise self._decode_error(exc) from exc
            except READ_ERRORS as exc:
                raise self._read_error(exc, line) from exc
            if rows:
                yield Batch(_string_batch(names, rows), start, lines)
            self._finished(*raw.finish())


def _string_batch(names: list[str], rows: list[list[str]]) -> pa.RecordBatch:
    columns = zip(*rows, strict=True) if rows else [() for _ in names]
    return pa.record_batch([pa.array(col, type=pa.string()) for col in columns], names=names)


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(key)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return record


# json.loads would keep the last of two equal keys and drop the other value unseen.
_JSON = json.JSONDecoder(object_pairs_hook=_unique_keys)


class JsonlSource(TextSource):
    """One JSON object per line; other values than strings are kept as JSON text.

    A key twice in one object is an error: which value was meant cannot be known.
    """

    def __init__(self, path: str, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._complete = False

    def _rows(self) -> Generator[Batch]:
        keys: dict[str, None] = dict.fromkeys(self.columns)
        records: list[dict[str, Any]] = []
        lines: list[int] = []
        start = number = 0
        with self._open_pass() as raw:
            try:
                for number, text in enumerate(self._text(raw), 1):
                    if not text.strip():
                        continue
                    try:
                        record = _JSON.decode(text)
                    except _DuplicateKey as exc:
                        raise InputError(
                            self.name,
                            f"the key {exc.key!r} appears twice in one object",
                            line=number,
                        ) from exc
                    except ValueError as exc:
                        column = getattr(exc, "colno", None)
                        reason = f"invalid JSON: {getattr(exc, 'msg', exc)}"
                        hint = undecodable_hint(self.head) if "\x00" in text else None
                        raise InputError(
                            self.name,
                            f"{reason}; {hint}" if hint else reason,
                            line=number,
                            column=column,
                        ) from exc
                    if not isinstance(record, dict):
                        raise InputError(
                            self.name, "expected a JSON object {...} on each line", line=number
                        )
                    for key in record:
                        if key not in keys:
                            keys[key] = None
                    records.append(record)
                    lines.append(number)
                    if len(records) == self.batch_rows:
                        yield Batch(self._batch(list(keys), records, lines), start, lines)
                        start += len(records)
                        records, lines = [], []
            except UnicodeDecodeError as exc:
                raise self._decode_error(exc) from exc
            except READ_ERRORS as exc:
                raise self._read_error(exc, number) from exc
            if records:
                yield Batch(self._batch(list(keys), records, lines), start, lines)
            self._finished(*raw.finish())
        self.columns = list(keys)

    def _batch(
        self, names: list[str], records: list[dict[str, Any]], lines: list[int]
    ) -> pa.RecordBatch:
        try:
            return _json_batch(names, records)
        except (UnicodeEncodeError, pa.ArrowException):
            # JSON may escape lone surrogates (\ud800), which are not text: find the line.
            for record, line in zip(records, lines, strict=True):
                for key, value in record.items():
                    for text in (key, _json_text(value)):
                        try:
                            (text or "").encode("utf-8")
                        except UnicodeEncodeError as exc:
                            raise InputError(
                                self.name,
                                "text that is not valid Unicode (a lone surrogate such as \\ud800)",
                                line=line,
                                column=key,
                            ) from exc
            raise

    def _no_rows_reason(self) -> str:
        return "is empty (no JSON objects)"


def _json_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _json_batch(names: list[str], records: list[dict[str, Any]]) -> pa.RecordBatch:
    return pa.record_batch(
        [pa.array([_json_text(r.get(name)) for r in records], type=pa.string()) for name in names],
        names=names,
    )


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


def detect_format(path: str, name: str | None = None) -> str:
    """The input format of ``path`` from its extension (before ``.gz``, ``.zst``, ``.bz2``).

    Raises:
        InputError: the extension is not one aibatch reads.
    """
    suffix = format_suffix(path)
    fmt = _EXTENSIONS.get(suffix)
    if fmt is None:
        raise InputError(
            name or path,
            f"unknown file type {suffix or '(no extension)'!r}; use .csv, .tsv, .jsonl,"
            " .ndjson or .parquet (text ones may end in .gz, .zst or .bz2), or pass"
            " --input-format",
        )
    return fmt


def _delimiter(delimiter: str | None, fmt: str, label: str) -> str:
    value = _DELIMITER_NAMES.get((delimiter or "").lower(), delimiter)
    if value is None:
        return "\t" if fmt == "tsv" else ","
    if len(value) != 1 or value in '\r\n"':
        raise InputError(label, f"--delimiter takes one character (or tab), not {delimiter!r}")
    return value


def open_input(
    path: str,
    *,
    input_format: str | None = None,
    encoding: str = "utf-8",
    delimiter: str | None = None,
    quoting: str | None = None,
    batch_rows: int = 10_000,
    limit: int | None = None,
    name: str | None = None,
    offset: int = 0,
) -> InputSource:
    """Open ``path`` as a source of batches (``name`` is how messages call it).

    Args:
        path: the file; text formats may be gzip, zstd or bz2 compressed (told by the
            first bytes).
        input_format: ``csv``, ``tsv``, ``jsonl`` or ``parquet`` [default: the suffix].
        encoding: of text formats; a UTF-16 or UTF-32 byte-order mark overrides UTF-8.
        delimiter: CSV/TSV field separator, one character (``tab`` or backslash-t for a tab)
            [default: ``,`` for CSV, a tab for TSV].
        quoting: ``csv``: quotes group a field, which may then hold the delimiter, quotes
            and line breaks (the default for CSV); ``none``: quotes are text and each line
            is a row (the default for TSV).
        batch_rows: the most rows in one batch.
        limit: read only the first ``limit`` rows.
        name: how messages name the input [default: ``path``].
        offset: position of the first row in the whole job.

    Raises:
        InputError: missing, unreadable or empty file, unknown type, or a bad option.
    """
    label = name or path
    fmt = input_format or detect_format(path, label)
    if fmt not in INPUT_FORMATS:
        raise InputError(label, f"unknown input format {fmt!r}")
    file = Path(path)
    if not file.exists():
        raise InputError(label, "no such file")
    if file.is_dir():
        raise InputError(label, "is a directory, not a file")
    if file.stat().st_size == 0:
        raise InputError(label, "is empty")
    common: dict[str, Any] = {
        "batch_rows": batch_rows,
        "limit": limit,
        "name": name,
        "offset": offset,
    }
    if fmt in ("parquet", "jsonl") and (delimiter is not None or quoting is not None):
        option = "--delimiter" if delimiter is not None else "--quoting"
        raise InputError(label, f"{option} is for CSV and TSV input, not {fmt}")
    if fmt == "parquet":
        if Path(path).suffix.lower() in COMPRESSION_SUFFIXES:
            raise InputError(label, "a compressed Parquet file: decompress it first")
        return ParquetSource(path, **common)
    if fmt == "jsonl":
        return JsonlSource(path, encoding=encoding, **common)
    quoting = quoting or ("csv" if fmt == "csv" else "none")
    if quoting not in QUOTINGS:
        raise InputError(label, f"--quoting takes csv or none, not {quoting!r}")
    separator = _delimiter(delimiter, fmt, label)
    return CsvSource(
        path, delimiter=separator, quoting=quoting == "csv", encoding=encoding, **common
    )


def spool_stdin(directory: Path) -> Path:
    """Copy standard input to a file in ``directory`` so it can be read several times.

    Compressed input is told by its first bytes, as for any file.
    """
    target = directory / "stdin.csv"
    with open(target, "wb") as out:
        shutil.copyfileobj(sys.stdin.buffer, out)
    return target


def frame_source(frame: Any, **kwargs: Any) -> TableSource:
    """A pandas DataFrame as a source (its index is not kept).

    A column of mixed Python objects that Arrow cannot hold as one type (text beside
    numbers) is sent as text, with a warning naming it; None and NaN stay null. The
    caller's frame is not changed.

    Raises:
        InputError: a column name used twice, or a column that cannot be sent even as text.
    """
    name = kwargs.get("name", "<DataFrame>")
    names = [str(column) for column in frame.columns]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(name, f"names a column twice: {', '.join(map(shown, duplicates))}")
    try:
        table = pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowException, ValueError, TypeError):
        columns = [_frame_column(frame, i, names[i], name) for i in range(len(names))]
        table = pa.Table.from_arrays(columns, names=names)
    return TableSource(table, **kwargs)


def _frame_column(frame: Any, position: int, column: str, name: str) -> pa.ChunkedArray:
    """One column of a DataFrame as Arrow; a column of mixed objects as text."""
    try:
        return pa.Table.from_pandas(frame.iloc[:, [position]], preserve_index=False).column(0)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        failure: Exception = exc
    series = frame.iloc[:, position]
    if series.dtype == object:
        import pandas  # a frame's caller has it; reading files does not need it

        try:
            texts = [_cell_text(value, pandas.isna) for value in series.tolist()]
            array = pa.chunked_array([pa.array(texts, pa.string())])
        except (pa.ArrowException, ValueError, TypeError) as exc:
            failure = exc
        else:
            log.warning("column %s holds values of several types: sent as text", shown(column))
            return array
    reason = (str(failure).strip().splitlines() or [type(failure).__name__])[0]
    raise InputError(name, f"cannot be sent: {reason}", column=column) from failure


def _cell_text(value: Any, isna: Callable[[Any], Any]) -> str | None:
    """A cell as text: None, NaN, NA and NaT stay null; lists and dicts become JSON."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False, default=str)
    if isna(value) is True:
        return None
    return str(value)


@dataclass(frozen=True, slots=True)
class PartitionFile:
    """One partition of a job, as a Parquet file.

    Attributes:
        index: the partition's number; outputs are ordered by it.
        path: the Parquet file holding its rows.
        offset: position of its first row in the whole job.
        rows: how many rows it holds.
        digest: what identifies its rows (a content hash, or the file's size and time).
    """

    index: int
    path: str
    offset: int
    rows: int
    digest: str


def dataset_files(spec_input: str) -> list[str] | None:
    """The Parquet files of a dataset folder or glob, sorted; ``None`` for a single file.

    Raises:
        InputError: a folder or glob with no Parquet file in it.
    """
    path = Path(spec_input)
    if path.is_dir():
        files = sorted(str(f) for f in path.rglob("*.parquet") if not f.name.startswith("."))
    elif any(c in spec_input for c in "*?["):
        files = sorted(glob.glob(spec_input))
    else:
        return None
    if not files:
        raise InputError(spec_input, "holds no .parquet files")
    return files


def dataset_partitions(files: list[str]) -> list[PartitionFile]:
    """Each file of a Parquet dataset as a partition, identified by size and mtime."""
    partitions, offset = [], 0
    for index, name in enumerate(files):
        try:
            rows = pq.ParquetFile(name).metadata.num_rows
            stat = os.stat(name)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(name, f"not a readable Parquet file: {exc}") from exc
        digest = f"file:{stat.st_size}:{stat.st_mtime_ns}"
        partitions.append(PartitionFile(index, name, offset, rows, digest))
        offset += rows
    return partitions


def stage_partitions(
    source: InputSource, folder: Path, rows_per_partition: int, check: Callable[[Batch], None]
) -> list[PartitionFile]:
    """Split ``source`` into Parquet files of ``rows_per_partition`` rows under ``folder``.

    Every batch is passed to ``check`` first, so a bad row stops the job before any
    partition runs. A partition whose content is unchanged since the last split (same
    hash) is not written again.
    """
    folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    partitions: list[PartitionFile] = []
    pending: list[pa.RecordBatch] = []
    count = offset = 0

    def flush() -> None:
        nonlocal pending, count, offset
        table = pa.Table.from_batches(pending, schema=source.schema())
        digest = _table_digest(table)
        path = folder / f"part-{len(partitions):05d}.parquet"
        marker = path.with_suffix(".digest")
        if not (path.exists() and marker.exists() and marker.read_text() == digest):
            with atomic_write(path) as handle:
                pq.write_table(table, handle)
            with atomic_write(marker) as handle:
                handle.write(digest.encode())
        partitions.append(PartitionFile(len(partitions), str(path), offset, count, digest))
        offset += count
        pending, count = [], 0

    for batch in source.batches():
        check(batch)
        data = batch.data
        while data.num_rows:
            take = min(data.num_rows, rows_per_partition - count)
            pending.append(data.slice(0, take))
            count += take
            data = data.slice(take)
            if count == rows_per_partition:
                flush()
    if count:
        flush()
    return partitions


def _table_digest(table: pa.Table) -> str:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())
    return "sha256:" + hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()
