"""What an output says: its job, counts, errors, latency, attempts and tokens.

:func:`inspect_output` reads an output file, or a Dask output folder of
``part-*.parquet`` files, in record batches of the few columns it needs, and keeps
bounded summaries only (:mod:`.sketch`): its memory does not grow with the rows.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import InputError
from ..io.output import METADATA_KEY
from .sketch import LogHistogram, TimeHistogram

__all__ = ["ErrorGroup", "FailedRow", "Inspection", "Percentiles", "inspect_output"]

log = logging.getLogger(__name__)

STATUSES = ("ok", "error", "skipped")
BATCH_ROWS = 65_536
MAX_KINDS = 50  # error types or HTTP statuses listed; more are counted as OTHER
OTHER = "(other)"
EXAMPLE_CHARS = 500  # an error message or prompt is cut to this length
_COLUMNS = (
    "row",
    "status",
    "error_type",
    "error",
    "http_status",
    "attempts",
    "latency_ms",
    "ttfb_ms",
    "started_at",
    "finished_at",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Percentiles:
    """Percentiles of a column over the rows that have a value."""

    count: int
    p50: float
    p90: float
    p99: float
    max: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorGroup:
    """Failed rows sharing an error type or an HTTP status, and one of their messages."""

    count: int
    example: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FailedRow:
    """One failed row: where it is, what was sent and how it failed (texts cut short)."""

    row: int | None
    id: Any
    error_type: str | None
    http_status: int | None
    attempts: int | None
    error: str | None
    prompt: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Inspection:
    """What an output's metadata and rows say.

    Attributes:
        path: the file or folder inspected; ``files`` its Parquet files.
        version: the aibatch version that wrote it, as its metadata records.
        options: the job's options (of the first part, for a folder).
        recorded: the counts the metadata records, added up over the parts
            (``reused`` and ``deduped`` are known from there only).
        counts: rows per status, from the rows themselves; ``ok``, ``error`` and
            ``skipped`` are always there.
        errors_by_type, errors_by_http_status: failed rows per error class and per HTTP
            status of their last attempt (``none`` when there was no answer).
        latency_ms: of every row sent (failures included); ``ttfb_ms`` of the answers.
        attempts: rows per number of requests made for them (rows sent only).
        prompt_tokens, completion_tokens: totals, ``None`` when no row reports them.
        cost_usd: the total of a ``cost_usd`` column, ``None`` when there is none.
        first_started, last_finished: when the first row was sent and the last ended.
        failed_rows: the first failed rows, in output order.
        latency, timeline, attempts_by_status: what the report draws.
    """

    path: str
    files: tuple[str, ...]
    version: str | None
    options: dict[str, Any]
    recorded: dict[str, int]
    rows: int
    counts: dict[str, int]
    errors_by_type: dict[str, ErrorGroup]
    errors_by_http_status: dict[str, ErrorGroup]
    latency_ms: Percentiles | None
    ttfb_ms: Percentiles | None
    attempts: dict[int, int]
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None
    first_started: dt.datetime | None
    last_finished: dt.datetime | None
    failed_rows: tuple[FailedRow, ...]
    latency: LogHistogram = field(repr=False, compare=False)
    timeline: TimeHistogram = field(repr=False, compare=False)
    attempts_by_status: dict[str, dict[int, int]] = field(repr=False, compare=False)

    @property
    def span_s(self) -> float | None:
        """Seconds from the first row sent to the last one finished."""
        if self.first_started is None or self.last_finished is None:
            return None
        return (self.last_finished - self.first_started).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        """The figures as JSON-ready values (counts keyed by status name)."""

        def groups(items: Mapping[str, ErrorGroup]) -> dict[str, Any]:
            return {k: {"count": g.count, "example": g.example} for k, g in items.items()}

        def stamp(value: dt.datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {
            "path": self.path,
            "files": list(self.files),
            "version": self.version,
            "options": self.options,
            "rows": self.rows,
            "counts": self.counts,
            "recorded_counts": self.recorded,
            "errors_by_type": groups(self.errors_by_type),
            "errors_by_http_status": groups(self.errors_by_http_status),
            "latency_ms": _plain(self.latency_ms),
            "ttfb_ms": _plain(self.ttfb_ms),
            "attempts": {str(k): v for k, v in sorted(self.attempts.items())},
            "tokens": None
            if self.prompt_tokens is None and self.completion_tokens is None
            else {"prompt": self.prompt_tokens, "completion": self.completion_tokens},
            "cost_usd": self.cost_usd,
            "first_started": stamp(self.first_started),
            "last_finished": stamp(self.last_finished),
            "span_s": self.span_s,
            "failed_rows": [_plain(row) for row in self.failed_rows],
        }

    def to_json(self) -> str:
        """The figures as a JSON document."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, default=str)


def _plain(value: Percentiles | FailedRow | None) -> dict[str, Any] | None:
    if value is None:
        return None
    return {name: getattr(value, name) for name in value.__slots__}


def output_files(path: str | Path) -> list[Path]:
    """The Parquet files of an output: the file itself, or a folder's ``part-*.parquet``.

    Raises:
        InputError: no such file or folder, or a folder without parts.
    """
    where = Path(path)
    if where.is_dir():
        parts = sorted(where.glob("part-*.parquet"))
        if not parts:
            raise InputError(where, "a folder without part-*.parquet files: not an aibatch output")
        return parts
    if not where.exists():
        raise InputError(where, "no such file or folder")
    return [where]


def inspect_output(path: str | Path, *, failed_rows: int = 10) -> Inspection:
    """Read an output (a file or a Dask output folder) and summarise it.

    Args:
        path: an output file, or a folder of ``part-*.parquet`` files.
        failed_rows: how many of the first failed rows to keep.

    Raises:
        InputError: the path is missing, not Parquet, or not an aibatch output.
    """
    files = output_files(path)
    reading = _Reading(failed_rows)
    for index, file in enumerate(files):
        reading.file(index, file)
    reading.add_prompts(files)
    return reading.result(str(path), files)


class _Reading:
    """The bounded state of one pass over an output's files."""

    def __init__(self, failed_rows: int) -> None:
        self.keep = failed_rows
        self.metadata: list[dict[str, Any]] = []
        self.rows = 0
        self.statuses: Counter[str] = Counter()
        self.by_type: dict[str, list[Any]] = {}
        self.by_status: dict[str, list[Any]] = {}
        self.latency, self.ttfb = LogHistogram(), LogHistogram()
        self.timeline = TimeHistogram(("ok", "error"))
        self.attempts: dict[str, Counter[int]] = {"ok": Counter(), "error": Counter()}
        self.tokens: dict[str, int | None] = {"prompt": None, "completion": None}
        self.cost: float | None = None
        self.first_started: dt.datetime | None = None
        self.last_finished: dt.datetime | None = None
        self.failed: list[tuple[int, int, dict[str, Any]]] = []  # file, offset, row
        self.id_column: str | None = None

    def file(self, index: int, path: Path) -> None:
        try:
            # Pre-buffered reads are kept until the file is closed: memory would grow with
            # the rows read.
            handle = pq.ParquetFile(path, pre_buffer=False)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(path, f"not a readable Parquet file ({exc})") from exc
        with handle:
            names = handle.schema_arrow.names
            if "status" not in names:
                raise InputError(path, "has no status column: not an aibatch output")
            twice = sorted({name for name in names if names.count(name) > 1})
            if twice:
                raise InputError(path, f"column {twice[0]!r} appears twice: not an aibatch output")
            raw = (handle.metadata.metadata or {}).get(METADATA_KEY.encode())
            meta = json.loads(raw) if raw else {}
            self.metadata.append(meta)
            id_column = (meta.get("options") or {}).get("id_column")
            self.id_column = id_column if id_column in names else None
            columns = [c for c in (*_COLUMNS, self.id_column) if c is not None and c in names]
            offset = 0
            try:
                for batch in handle.iter_batches(batch_size=BATCH_ROWS, columns=columns):
                    self.batch(index, offset, batch)
                    offset += batch.num_rows
            except (OSError, pa.ArrowException) as exc:
                raise InputError(path, f"cannot be read ({exc})") from exc

    def batch(self, index: int, offset: int, batch: pa.RecordBatch) -> None:
        self.rows += batch.num_rows
        status = batch.column("status")
        for item in pc.value_counts(status).to_pylist():
            self.statuses[item["values"] or "none"] += item["counts"]
        names = batch.schema.names
        sent = pc.fill_null(pc.is_in(status, pa.array(["ok", "error"])), False)
        if "latency_ms" in names:
            self.latency.add(_floats(pc.filter(batch.column("latency_ms"), sent)))
        is_ok = pc.fill_null(pc.equal(status, "ok"), False)
        is_error = pc.fill_null(pc.equal(status, "error"), False)
        if "ttfb_ms" in names:
            self.ttfb.add(_floats(pc.filter(batch.column("ttfb_ms"), is_ok)))
        for name, mask in (("ok", is_ok), ("error", is_error)):
            if "attempts" in names:
                for item in pc.value_counts(pc.filter(batch.column("attempts"), mask)).to_pylist():
                    if item["values"] is not None:
                        self.attempts[name][item["values"]] += item["counts"]
            if "finished_at" in names:
                self.timeline.add(_seconds(pc.filter(batch.column("finished_at"), mask)), name)
        self._times(batch)
        self._totals(batch)
        failed = batch.filter(is_error)
        if failed.num_rows:
            self._errors(failed)
            if len(self.failed) < self.keep:
                self._keep_failed(index, offset, batch, is_error)

    def _times(self, batch: pa.RecordBatch) -> None:
        names = batch.schema.names
        if "started_at" in names:
            first = pc.min(batch.column("started_at")).as_py()
            if first is not None and (self.first_started is None or first < self.first_started):
                self.first_started = first
        if "finished_at" in names:
            last = pc.max(batch.column("finished_at")).as_py()
            if last is not None and (self.last_finished is None or last > self.last_finished):
                self.last_finished = last

    def _totals(self, batch: pa.RecordBatch) -> None:
        names = batch.schema.names
        for kind in ("prompt", "completion"):
            column = f"{kind}_tokens"
            if column in names and pc.count(batch.column(column)).as_py():
                total = pc.sum(batch.column(column)).as_py()
                self.tokens[kind] = (self.tokens[kind] or 0) + total
        if "cost_usd" in names and pc.count(batch.column("cost_usd")).as_py():
            self.cost = (self.cost or 0.0) + pc.sum(batch.column("cost_usd")).as_py()

    def _errors(self, failed: pa.RecordBatch) -> None:
        names = failed.schema.names
        messages = failed.column("error") if "error" in names else pa.nulls(failed.num_rows)
        for column, groups in (("error_type", self.by_type), ("http_status", self.by_status)):
            values = failed.column(column) if column in names else pa.nulls(failed.num_rows)
            for item in pc.value_counts(values).to_pylist():
                value = item["values"]
                key = "none" if value is None else str(value)
                if key not in groups and len(groups) >= MAX_KINDS:
                    key = OTHER
                if key in groups:
                    groups[key][0] += item["counts"]
                    continue
                at = pc.index(values, value).as_py() if value is not None else _first_null(values)
                groups[key] = [item["counts"], _cut(messages[at].as_py()) or ""]

    def _keep_failed(
        self, index: int, offset: int, batch: pa.RecordBatch, is_error: pa.Array
    ) -> None:
        positions = np.flatnonzero(is_error.to_numpy(zero_copy_only=False))
        for at in positions[: self.keep - len(self.failed)]:
            values = {name: batch.column(name)[int(at)].as_py() for name in batch.schema.names}
            self.failed.append((index, offset + int(at), values))

    def add_prompts(self, files: list[Path]) -> None:
        """Look up the prompts of the kept failed rows, one row group at a time."""
        for index, file in enumerate(files):
            kept = [(offset, values) for i, offset, values in self.failed if i == index]
            if not kept:
                continue
            with pq.ParquetFile(file) as handle:
                if "sent_prompt" not in handle.schema_arrow.names:
                    continue
                ends = np.cumsum(
                    [handle.metadata.row_group(g).num_rows for g in range(handle.num_row_groups)]
                )
                for group in sorted({int(np.searchsorted(ends, o, "right")) for o, _ in kept}):
                    start = int(ends[group - 1]) if group else 0
                    table = handle.read_row_group(group, columns=["sent_prompt"])
                    for offset, values in kept:
                        if start <= offset < int(ends[group]):
                            values["sent_prompt"] = table.column(0)[offset - start].as_py()

    def result(self, path: str, files: list[Path]) -> Inspection:
        first = self.metadata[0] if self.metadata else {}
        options = dict(first.get("options") or {})
        if len(files) > 1:  # each part records its own partition's paths
            options.pop("input", None)
            options.pop("output", None)
        recorded: Counter[str] = Counter()
        for meta in self.metadata:
            recorded.update(
                {k: v for k, v in (meta.get("counts") or {}).items() if isinstance(v, int)}
            )
        counts = {name: self.statuses.get(name, 0) for name in STATUSES}
        counts.update({k: v for k, v in self.statuses.items() if k not in counts})
        attempts: Counter[int] = self.attempts["ok"] + self.attempts["error"]
        return Inspection(
            path=path,
            files=tuple(str(f) for f in files),
            version=first.get("version"),
            options=options,
            recorded=dict(recorded),
            rows=self.rows,
            counts=counts,
            errors_by_type=_ordered(self.by_type),
            errors_by_http_status=_ordered(self.by_status),
            latency_ms=_percentiles(self.latency),
            ttfb_ms=_percentiles(self.ttfb),
            attempts=dict(sorted(attempts.items())),
            prompt_tokens=self.tokens["prompt"],
            completion_tokens=self.tokens["completion"],
            cost_usd=self.cost,
            first_started=self.first_started,
            last_finished=self.last_finished,
            failed_rows=tuple(self._failed_row(values) for _, _, values in self.failed),
            latency=self.latency,
            timeline=self.timeline,
            attempts_by_status={k: dict(sorted(v.items())) for k, v in self.attempts.items()},
        )

    def _failed_row(self, values: dict[str, Any]) -> FailedRow:
        return FailedRow(
            row=values.get("row"),
            id=values.get(self.id_column) if self.id_column else None,
            error_type=values.get("error_type"),
            http_status=values.get("http_status"),
            attempts=values.get("attempts"),
            error=_cut(values.get("error")),
            prompt=_cut(values.get("sent_prompt")),
        )


def _floats(values: pa.Array) -> Any:
    return pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False)


def _seconds(stamps: pa.Array) -> Any:
    micros = pc.cast(pc.cast(stamps, pa.timestamp("us", tz="UTC")), pa.int64())
    return _floats(micros) / 1e6


def _first_null(values: pa.Array) -> int:
    return int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])


def _cut(text: str | None) -> str | None:
    if text is None or len(text) <= EXAMPLE_CHARS:
        return text
    return text[: EXAMPLE_CHARS - 1] + "…"


def _ordered(groups: Mapping[str, list[Any]]) -> dict[str, ErrorGroup]:
    ranked = sorted(groups.items(), key=lambda item: (-item[1][0], item[0]))
    return {key: ErrorGroup(count=count, example=example) for key, (count, example) in ranked}


def _percentiles(sketch: LogHistogram) -> Percentiles | None:
    if sketch.count == 0:
        return None
    p50, p90, p99 = (sketch.percentile(q) or 0.0 for q in (50, 90, 99))
    return Percentiles(count=sketch.count, p50=p50, p90=p90, p99=p99, max=sketch.max)
