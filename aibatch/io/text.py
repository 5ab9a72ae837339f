"""CSV, TSV and JSONL files as rows of text, compressed or not, in whatever encoding.

Lines are counted in the decoded text, so every problem is an :class:`InputError`
naming the file, the line (as an editor shows it) and the column; bytes that fail to
decode are named for what they look like (compressed, an archive, UTF-16 without a
byte-order mark) when that is what they are.
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
import re
from collections.abc import Generator, Iterator
from typing import IO, Any

import pyarrow as pa

from ..errors import InputError, shown
from ..jobs.arrays import strings
from .raw import READ_ERRORS, RawPass, bom_encoding, is_utf8, undecodable_hint
from .sources import Batch, FileSource

log = logging.getLogger(__name__)

__all__ = ["CsvSource", "JsonlSource", "TextSource"]

_CSV_FIELD_LIMIT = 2**31 - 1
_CSV_QUOTED = re.compile(r'"(?:[^"]|"")*"', re.DOTALL)  # what a CSV writer quotes: "a ""b"""
_HEAD = 4096  # bytes read on opening: a byte-order mark, what undecodable bytes may be


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
        self._quoted_columns: set[int] = set()  # warned of: cells that look CSV-quoted
        self.columns, self._width = self._read_header()

    def _records(self, handle: IO[str]) -> Iterator[tuple[int, list[str]]]:
        """``(line, fields)`` of each record that is not a blank line, the header first."""
        if not self.quoting:
            delimiter = self.delimiter
            for number, text in enumerate(handle, 1):
                text = text.rstrip("\r\n")
                if text:
                    fields = text.split(delimiter)
                    if '"' in text:
                        self._warn_quoted(number, fields)
                    yield number, fields
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

    def _warn_quoted(self, line: int, fields: list[str]) -> None:
        """Say once per column when cells look CSV-quoted: their quotes are sent as text."""
        for position, field in enumerate(fields):
            if position not in self._quoted_columns and _CSV_QUOTED.fullmatch(field):
                self._quoted_columns.add(position)
                log.warning(
                    "%s, line %d, column %d: %s looks CSV-quoted, but this file is read"
                    " without quoting (TSV's default), so the quotes are part of the text;"
                    " pass --quoting csv if they are not",
                    self.name,
                    line,
                    position + 1,
                    field[:40],
                )

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
    return pa.record_batch([strings(col) for col in columns], names=names)


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
                        self.columns = list(keys)  # a read that limit stops still knows them
                        yield Batch(self._batch(list(keys), records, lines), start, lines)
                        start += len(records)
                        records, lines = [], []
            except UnicodeDecodeError as exc:
                raise self._decode_error(exc) from exc
            except READ_ERRORS as exc:
                raise self._read_error(exc, number) from exc
            if records and not keys:
                raise InputError(self.name, "holds only empty objects {}: no column to read")
            if records:
                self.columns = list(keys)
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
        [strings([_json_text(r.get(name)) for r in records]) for name in names],
        names=names,
    )
