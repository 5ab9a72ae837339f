"""Input files as bounded batches of Arrow rows: CSV, TSV, JSONL, Parquet, stdin.

:func:`open_input` picks the reader from the suffix (before any ``.gz``, ``.zst`` or
``.bz2``): :mod:`.text` for CSV, TSV and JSONL, :mod:`.sources` for Parquet, whose
:class:`InputSource` is what the engine reads, in bounded batches, as often as it
needs. A DataFrame becomes a source here too, and a file becomes partitions for Dask.
Every problem is an :class:`InputError` naming the file, the line and the column.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError, shown
from ..files import DIR_MODE, atomic_write
from ..jobs.spec import INPUT_FORMATS, QUOTINGS
from .raw import COMPRESSION_SUFFIXES, format_suffix
from .sources import Batch, InputSource, ParquetSource, TableSource
from .text import CsvSource, JsonlSource

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

    A column of Python objects that are not all of one plain type (text beside numbers,
    ints beside floats, decimals, lists) is sent as text, each value as it prints (an int
    stays ``1``, never ``1.0``), with a warning naming the column when the types are
    mixed; None and NaN stay null. The caller's frame is not changed.

    Raises:
        InputError: a column name used twice, or a column that cannot be sent even as text.
    """
    name = kwargs.get("name", "<DataFrame>")
    names = [str(column) for column in frame.columns]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(name, f"names a column twice: {', '.join(map(shown, duplicates))}")
    columns = [_frame_column(frame, i, names[i], name) for i in range(len(names))]
    return TableSource(pa.Table.from_arrays(columns, names=names), **kwargs)


_PLAIN_TYPES = frozenset({str, int, float, bool})


def _frame_column(frame: Any, position: int, column: str, name: str) -> pa.ChunkedArray:
    """One column of a DataFrame as Arrow; a column of mixed objects as text."""
    series = frame.iloc[:, position]
    failure: Exception | None = None
    if series.dtype == object:
        import pandas  # a frame's caller has it; reading files does not need it

        values = series.tolist()
        kinds = {type(v) for v in values if not (v is None or pandas.isna(v) is True)}
        if len(kinds) > 1 or not kinds <= _PLAIN_TYPES:
            try:
                texts = [_cell_text(value, pandas.isna) for value in values]
                array = pa.chunked_array([pa.array(texts, pa.string())])
            except (pa.ArrowException, ValueError, TypeError) as exc:
                failure = exc
            else:
                if len(kinds) > 1:
                    log.warning(
                        "column %s holds values of several types: sent as text", shown(column)
                    )
                return array
    if failure is None:
        try:
            frame_part = frame.iloc[:, [position]]
            return pa.Table.from_pandas(frame_part, preserve_index=False).column(0)
        except (pa.ArrowException, ValueError, TypeError) as exc:
            failure = exc
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
