"""The Parquet output: one row per input row, in input order, written atomically.

Columns: the input's own, then :data:`OUTPUT_SCHEMA`, then (with ``--schema``) one
typed column per property of the schema, parsed from the ``response`` of ``ok`` rows.
The file is written to a temporary name in the same folder, fsynced and renamed into
place, so a crash leaves either the previous output or the new one, never half a file.
File metadata (key ``aibatch``) records the aibatch version, the job's options (no
secrets), the schema and the counts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import OutputError, UsageError
from ..files import AtomicFile
from ..jobs.arrays import from_numpy, scalar
from ..jobs.checkpoint import RECORD_SCHEMA

if TYPE_CHECKING:
    from ..jobs.schema import StructuredOutput

__all__ = [
    "OUTPUT_SCHEMA",
    "OutputCounts",
    "OutputWriter",
    "assemble",
    "check_output",
    "output_schema",
    "read_metadata",
]

OUTPUT_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        *RECORD_SCHEMA,
        ("model", pa.string()),
        ("provider", pa.string()),
    ]
)
METADATA_KEY = "aibatch"
# Columns of few distinct values, dictionary-encoded. The others (prompts, answers,
# times) are nearly all distinct: trying a dictionary for them doubles the writing
# time, and the fallback makes a larger file than zstd of the plain values.
_DICTIONARY = ("status", "error_type", "finish_reason", "model", "provider")


def output_schema(input_schema: pa.Schema, typed: pa.Schema | None = None) -> pa.Schema:
    """The input's columns followed by the result columns, then the ``typed`` ones.

    Raises:
        OutputError: an input column has the name of a result column, or a property of
            the schema (``typed``) the name of an input or result column.
    """
    clash = [name for name in input_schema.names if name in OUTPUT_SCHEMA.names]
    if clash:
        raise OutputError(
            f"input column(s) {', '.join(map(repr, clash))} would be overwritten by aibatch's"
            f" result columns ({', '.join(OUTPUT_SCHEMA.names)}); rename them in the input"
        )
    if typed is None:
        return pa.schema([*input_schema, *OUTPUT_SCHEMA])
    taken = {*input_schema.names, *OUTPUT_SCHEMA.names}
    clash = [name for name in typed.names if name in taken]
    if clash:
        raise OutputError(
            f"schema propert(ies) {', '.join(map(repr, clash))} would be written over input or"
            " result columns of the same name; rename them in the schema (or the input)"
        )
    return pa.schema([*input_schema, *OUTPUT_SCHEMA, *typed])


# Names that promise another format: writing Parquet under them would mislead.
_OTHER_FORMATS = frozenset(
    [
        ".csv",
        ".tsv",
        ".tab",
        ".txt",
        ".json",
        ".jsonl",
        ".ndjson",
        ".xlsx",
        ".xls",
        ".ods",
        ".arrow",
        ".feather",
        ".gz",
        ".zst",
        ".bz2",
    ]
)


def check_output(output: Path, inputs: Sequence[str]) -> Path:
    """The file to write for ``output``, once it is known to be safe to replace.

    A symbolic link is followed: its target is written (and the checkpoint kept beside
    the target); the link stays.

    Raises:
        UsageError: the name promises another format; the output exists and is not a
            regular file (a device, a pipe, a folder); its folder is missing or not
            writable; or it is an input.
    """
    if output.suffix.lower() in _OTHER_FORMATS:
        raise UsageError(
            f"output {output}: aibatch writes Parquet; name the output .parquet"
            f" (a {output.suffix} name would promise another format)"
        )
    if output.is_symlink():
        output = Path(os.path.realpath(output))
    if output.exists() and not output.is_file():
        kind = "a directory" if output.is_dir() else "not a regular file (a device or a pipe?)"
        raise UsageError(f"output {output} exists and is {kind}; name a .parquet file")
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"output folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"output folder {folder} is not writable")
    for name in inputs:
        if name != "-" and Path(name).exists() and output.resolve() == Path(name).resolve():
            raise UsageError(f"output {output} is the input file; choose another -o/--output")
    return output


def assemble(
    data: pa.RecordBatch,
    start: int,
    records: pa.Table,
    constants: Mapping[str, str],
    structured: StructuredOutput | None = None,
) -> pa.Table:
    """Join input rows with their results (:data:`RECORD_SCHEMA`) into output rows.

    With ``structured``, the typed columns follow, parsed from the ``response`` of the
    ``ok`` rows (the checkpoint keeps the raw text: its own schema never changes).
    """
    n = data.num_rows
    columns = [
        *data.columns,
        from_numpy(np.arange(start, start + n, dtype=np.int64), pa.int64()),
        *(records.column(name).combine_chunks() for name in RECORD_SCHEMA.names),
        *(pa.repeat(scalar(value), n) for value in constants.values()),
    ]
    names = [*data.schema.names, *OUTPUT_SCHEMA.names]
    if structured is not None:
        ok = [v is True for v in pc.equal(records.column("status"), scalar("ok")).to_pylist()]
        columns += structured.columns(records.column("response").to_pylist(), ok)
        names += structured.names
    return pa.Table.from_arrays(columns, names=names)


@dataclass(slots=True)
class OutputCounts:
    """What the output rows hold, counted as they are written."""

    statuses: Counter[str] = field(default_factory=Counter)
    errors_by_type: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated: int = 0

    def add(self, records: pa.Table) -> None:
        """Count a batch of result rows (:data:`RECORD_SCHEMA`)."""
        status = records.column("status")
        for item in pc.value_counts(status).to_pylist():
            self.statuses[item["values"]] += item["counts"]
        failed = pc.filter(records.column("error_type"), pc.equal(status, scalar("error")))
        for item in pc.value_counts(failed).to_pylist():
            self.errors_by_type[item["values"]] += item["counts"]
        self.prompt_tokens += pc.sum(records.column("prompt_tokens")).as_py() or 0
        self.completion_tokens += pc.sum(records.column("completion_tokens")).as_py() or 0
        truncated = pc.equal(records.column("finish_reason"), scalar("length"))
        self.truncated += pc.sum(truncated).as_py() or 0


class OutputWriter:
    """Writes output rows to a temporary file and renames it into place on :meth:`commit`.

    Args:
        path: the final output path.
        schema: the full output schema (:func:`output_schema`).
    """

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = path
        self.schema = schema
        self._writer: pq.ParquetWriter | None = None
        self._file: AtomicFile | None = None
        self.rows = 0

    def __enter__(self) -> OutputWriter:
        # Temp files of earlier runs that died while writing this output (the caller holds
        # the output's lock, so no other run is writing it now).
        # Only this output's own temp files: .NAME.PID.tmp, never another output's.
        own = re.compile(rf"\.{re.escape(self.path.name)}\.\d+\.tmp")
        for stale in self.path.parent.iterdir():
            if own.fullmatch(stale.name):
                with contextlib.suppress(OSError):
                    stale.unlink()
        try:
            self._file = AtomicFile(self.path)
            self._writer = pq.ParquetWriter(
                self._file.file,
                self.schema,
                compression="zstd",
                use_dictionary=[n for n in _DICTIONARY if n in self.schema.names],
            )
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        return self

    def write(self, table: pa.Table) -> None:
        """Append rows (already in order)."""
        assert self._writer is not None
        try:
            self._writer.write_table(table.cast(self.schema))
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc}") from exc
        self.rows += table.num_rows

    def commit(self, metadata: Mapping[str, Any]) -> None:
        """Close the file with ``metadata`` and move it into place atomically."""
        assert self._writer is not None
        try:
            self._writer.add_key_value_metadata(
                {METADATA_KEY: json.dumps(metadata, default=str, ensure_ascii=False)}
            )
            self._writer.close()
            self._writer = None
            assert self._file is not None
            self._file.commit()
            self._file = None
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        if self._file is not None:
            self._file.discard()
            self._file = None


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``aibatch`` metadata of an output file."""
    raw = pq.read_metadata(path).metadata or {}
    value = raw.get(METADATA_KEY.encode())
    return json.loads(value) if value else {}


def read_frame(path: str | Path, like: Any) -> Any:
    """The rows of output file ``path`` for the DataFrame ``like`` they answer.

    The result is ``like``'s own columns, as they were (types included), followed by
    the result columns, on ``like``'s own index (named, repeated or multi-level alike),
    so ``frame["answer"] = result["response"]`` pairs every row with its own answer.
    The output holds the first rows of ``like`` (all of them but with ``limit``).
    """
    names = pq.read_schema(path).names  # the result columns, then any typed (--schema) ones
    results = pq.read_table(path, columns=names[names.index("row") :]).to_pandas()
    return _beside(like, results)


def _beside(like: Any, results: Any) -> Any:
    import pandas as pd

    rows = like.iloc[: len(results)]
    joined = pd.concat([rows.reset_index(drop=True), results.reset_index(drop=True)], axis=1)
    return joined.set_axis(rows.index, axis=0)


def concatenate(parts: list[str], output: Path, metadata: Mapping[str, Any]) -> int:
    """Join partition outputs, in the order given, into one file written atomically."""
    schema = pq.read_schema(parts[0]).remove_metadata()
    rows = 0
    with OutputWriter(output, schema) as writer:
        for part in parts:
            with pq.ParquetFile(part) as handle:
                for batch in handle.iter_batches():
                    writer.write(pa.Table.from_batches([batch]).replace_schema_metadata(None))
                    rows += batch.num_rows
        writer.commit(metadata)
    return rows


def output_frame(frame: Any) -> Any:
    """An empty pandas DataFrame with the output columns for input like ``frame``.

    Raises:
        OutputError: a column of ``frame`` has the name of a result column.
    """
    output_schema(pa.schema([(str(name), pa.null()) for name in frame.columns]))
    return _beside(frame.iloc[:0], OUTPUT_SCHEMA.empty_table().to_pandas())
