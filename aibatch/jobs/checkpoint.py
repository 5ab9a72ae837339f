"""The checkpoint: every finished row, on disk as soon as it is known, so no work is lost.

Layout, beside the output file ``out.parquet``::

    .out.parquet.aibatch/
        lock                 flock held by the running job (released if it dies)
        parts/00000001-<checksum>.arrow
                             an Arrow IPC file of finished rows, written whole (temp
                             file, fsync, rename, fsync of the folder); its name carries
                             a BLAKE2b checksum of its bytes

A part is either complete or absent (a crash can only leave a ``.tmp`` file, which is
removed). Its bytes are checked against the checksum in its name, and its columns
against :data:`PART_SCHEMA`, before any row of it is used: a part that fails either
(bytes that rotted, a file put there by something else) is set aside with a warning
naming it, and its rows are sent again. Never is a damaged row trusted.

Each stored row carries its *row key*, a hash of the row id and the request, and the
*request hash*, a hash of the request alone. A re-run reuses a stored row when the same
id asks the same request again; with dedupe on, also when any stored row answered the
same request. The in-memory index holds only fixed-size numbers per row (about 25
bytes), so resuming a job of millions of rows stays small.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import CheckpointError, OutputError
from ..files import DIR_MODE, FILE_MODE, atomic_write
from ..types import ChatRequest, RowResult, RowStatus

log = logging.getLogger(__name__)

__all__ = [
    "DUPLICATE",
    "RECORD_SCHEMA",
    "SEND",
    "SKIP",
    "Checkpoint",
    "Plan",
    "checkpoint_dir",
    "request_hash",
    "row_key",
]

RECORD_SCHEMA = pa.schema(
    [
        ("sent_prompt", pa.string()),
        ("response", pa.string()),
        ("status", pa.string()),
        ("error_type", pa.string()),
        ("error", pa.string()),
        ("http_status", pa.int32()),
        ("attempts", pa.int32()),
        ("latency_ms", pa.float64()),
        ("ttfb_ms", pa.float64()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("finish_reason", pa.string()),
        ("cost_usd", pa.float64()),
    ]
)
_KEY_FIELDS = [("row_key", pa.uint64()), ("request_hash", pa.uint64()), ("row", pa.int64())]
PART_SCHEMA = pa.schema([*_KEY_FIELDS, *RECORD_SCHEMA])

# Values of Plan.loc below zero; a stored row's location is (part's load index) << 32 | offset.
SKIP = -1
SEND = -2
DUPLICATE = -3  # loc = DUPLICATE - primary_row: same request as an earlier row of this run
_OFFSET_BITS = 32
_OFFSET_MASK = (1 << _OFFSET_BITS) - 1
_PART_CACHE = 32
_ADDED_COLUMNS = ("prompt_tokens", "completion_tokens", "finish_reason", "cost_usd")


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def request_hash(request: ChatRequest, service: str) -> int:
    """A 64-bit hash of what a request asks: service, model, messages, images, options."""
    parts = [service, request.model]
    for message in request.messages:
        parts += (message.role, message.content)
        if message.images:  # the images' content, not their paths
            parts += ["images", *(image.sha256 for image in message.images)]
    parts += [f"{k}={v!r}" for k, v in request.options]
    if request.schema is not None:  # (so rows without one hash as they always did)
        parts += ["schema", request.schema, request.json_mode]
    return _digest("".join(f"{len(p)}:{p}" for p in parts).encode("utf-8", "surrogatepass"))


def row_key(row_id: str, request: int) -> int:
    """A 64-bit hash of a row id together with its request hash."""
    return _digest(f"{len(row_id)}:{row_id}:{request}".encode("utf-8", "surrogatepass"))


def checkpoint_dir(output: Path) -> Path:
    """The checkpoint folder that belongs to ``output``."""
    return output.with_name(f".{output.name}.aibatch")


def records_table(results: Sequence[RowResult]) -> pa.Table:
    """Finished rows as an Arrow table of :data:`PART_SCHEMA`."""

    def column(name: str) -> list[object]:
        return [getattr(r, name) for r in results]

    def micros(name: str) -> list[int]:
        return [int(getattr(r, name) * 1_000_000) for r in results]

    arrays = [
        pa.array(column("row_key"), pa.uint64()),
        pa.array(column("request_hash"), pa.uint64()),
        pa.array(column("row"), pa.int64()),
        pa.array(column("sent_prompt"), pa.string()),
        pa.array(column("response"), pa.string()),
        pa.array([r.status.value for r in results], pa.string()),
        pa.array(column("error_type"), pa.string()),
        pa.array(column("error"), pa.string()),
        pa.array(column("http_status"), pa.int32()),
        pa.array(column("attempts"), pa.int32()),
        pa.array(column("latency_ms"), pa.float64()),
        pa.array(column("ttfb_ms"), pa.float64()),
        pa.array(micros("started_at"), pa.int64()).cast(RECORD_SCHEMA.field("started_at").type),
        pa.array(micros("finished_at"), pa.int64()).cast(RECORD_SCHEMA.field("finished_at").type),
        pa.array(column("prompt_tokens"), pa.int64()),
        pa.array(column("completion_tokens"), pa.int64()),
        pa.array(column("finish_reason"), pa.string()),
        pa.array(column("cost_usd"), pa.float64()),
    ]
    return pa.Table.from_arrays(arrays, schema=PART_SCHEMA)


@dataclass(slots=True)
class Plan:
    """What to do with each row of a partition.

    Attributes:
        loc: per row, a stored row's location (>= 0), :data:`SKIP`, :data:`SEND`, or
            :data:`DUPLICATE` minus the row whose answer it shares.
        reused: rows answered from the checkpoint.
        deduped: rows that share an identical request with an earlier row of this run.
        skipped: rows with an empty prompt.
    """

    loc: np.ndarray
    reused: int = 0
    deduped: int = 0
    skipped: int = 0

    @property
    def to_send(self) -> int:
        """Rows that need a request."""
        return int(np.count_nonzero(self.loc == SEND))

    def resolve(self) -> None:
        """Point duplicates at the stored row of the row they copy."""
        dup = self.loc <= DUPLICATE
        if dup.any():
            self.loc[dup] = self.loc[DUPLICATE - self.loc[dup]]

    def complete(self) -> bool:
        """Whether every row is stored, skipped or a duplicate of a stored row."""
        return not np.any(self.loc == SEND)


class Checkpoint:
    """The checkpoint folder of one output: lock, stored parts, resume index.

    Use as a context manager; entering takes the lock and loads the index.

    Args:
        directory: the checkpoint folder (see :func:`checkpoint_dir`).
        restart: discard what is stored.
        read_only: only read what is stored, for a dry run's plan: no folder is made,
            no lock taken, nothing removed or set aside (a damaged part is passed over).
    """

    def __init__(self, directory: Path, *, restart: bool = False, read_only: bool = False) -> None:
        self.directory = directory
        self.parts_dir = directory / "parts"
        self.restart = restart
        self.read_only = read_only
        self._lock_fd: int | None = None
        self._next_part = 1
        # Parts by load order; a stored row's location names its part by this index, not
        # by the number in the part's name (two files could carry one number).
        self._paths: list[Path] = []
        self._cache: OrderedDict[int, pa.Table] = OrderedDict()
        self._keys = np.empty(0, np.uint64)
        self._key_locs = np.empty(0, np.int64)
        self._key_ok = np.empty(0, bool)
        self._ok_hashes = np.empty(0, np.uint64)
        self._ok_hash_locs = np.empty(0, np.int64)
        self.stored_rows = 0

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.directory)!r}, stored_rows={self.stored_rows})"

    def __enter__(self) -> Checkpoint:
        if self.read_only:
            if not self.restart and self.parts_dir.is_dir():
                self._load()
            return self
        try:
            self.directory.mkdir(mode=DIR_MODE, exist_ok=True)
            self.parts_dir.mkdir(mode=DIR_MODE, exist_ok=True)
        except OSError as exc:
            raise OutputError(
                f"cannot create checkpoint folder {self.directory}: {exc.strerror or exc}"
            ) from exc
        self._lock()
        try:
            if self.restart:
                shutil.rmtree(self.parts_dir)
                self.parts_dir.mkdir(mode=DIR_MODE)
            self._load()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the lock."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _lock(self) -> None:
        path = self.directory / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CheckpointError(
                f"another aibatch run (pid {holder}) is writing this output "
                f"(lock {path}); wait for it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _load(self) -> None:
        keys, hashes, locs, oks = [], [], [], []
        for path in sorted(self.parts_dir.iterdir()):
            if path.name.endswith(".tmp"):
                if not self.read_only:
                    path.unlink()  # a part a crash interrupted before it was complete
                continue
            name = _PART_NAME.fullmatch(path.name)
            if name is None:
                continue
            number = int(name["number"])
            self._next_part = max(self._next_part, number + 1)
            try:
                table = _read_part(path, columns=["row_key", "request_hash", "status"])
            except DamagedPart as exc:
                if self.read_only:
                    continue  # its rows count as rows to send
                aside = path.with_name(f"{path.name}.damaged")
                log.warning(
                    "checkpoint part %s is damaged (%s); set aside as %s, its rows will be"
                    " sent again",
                    path,
                    exc,
                    aside.name,
                )
                path.rename(aside)
                continue
            index = len(self._paths)
            self._paths.append(path)
            n = table.num_rows
            keys.append(table.column("row_key").to_numpy())
            hashes.append(table.column("request_hash").to_numpy())
            oks.append(pc.equal(table.column("status"), "ok").to_numpy(zero_copy_only=False))
            locs.append((np.int64(index) << _OFFSET_BITS) + np.arange(n, dtype=np.int64))
        if not keys:
            return
        key = np.concatenate(keys)
        req = np.concatenate(hashes)
        loc = np.concatenate(locs)
        ok = np.concatenate(oks)
        self.stored_rows = len(key)
        # Per row key keep the best record: ok before failed, then the newest.
        order = np.lexsort((loc, ok, key))
        last = np.ones(len(order), bool)
        last[:-1] = key[order][1:] != key[order][:-1]
        best = order[last]
        self._keys, self._key_locs, self._key_ok = key[best], loc[best], ok[best]
        ok_order = np.argsort(req[ok], kind="stable")
        self._ok_hashes = req[ok][ok_order]
        self._ok_hash_locs = loc[ok][ok_order]

    def plan(
        self,
        row_keys: np.ndarray,
        request_hashes: np.ndarray,
        skipped: np.ndarray,
        *,
        dedupe: bool = True,
        retry_failed: bool = True,
    ) -> Plan:
        """Decide for each row: reuse a stored answer, copy another row's, skip, or send."""
        n = len(row_keys)
        loc = np.full(n, SEND, np.int64)
        loc[skipped] = SKIP
        plan = Plan(loc, skipped=int(np.count_nonzero(skipped)))
        live = ~skipped
        if len(self._keys):
            found, where = _lookup(self._keys, row_keys)
            reuse = found & live & (self._key_ok[where] | (not retry_failed))
            loc[reuse] = self._key_locs[where[reuse]]
        if dedupe:
            if len(self._ok_hashes):
                found, where = _lookup(self._ok_hashes, request_hashes)
                same = found & (loc == SEND)
                loc[same] = self._ok_hash_locs[where[same]]
            pending = np.flatnonzero(loc == SEND)
            if len(pending):
                _, first, inverse = np.unique(
                    request_hashes[pending], return_index=True, return_inverse=True
                )
                primary = pending[first[inverse]]
                dup = primary != pending
                loc[pending[dup]] = DUPLICATE - primary[dup]
                plan.deduped = int(np.count_nonzero(dup))
        plan.reused = int(np.count_nonzero(loc >= 0))
        return plan

    def write_part(self, results: Sequence[RowResult]) -> np.ndarray:
        """Store finished rows durably; return their locations.

        Raises:
            OutputError: the part could not be written (disk full, permissions).
        """
        number = self._next_part
        self._next_part += 1
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, PART_SCHEMA) as writer:
            writer.write_table(records_table(results))
        data = sink.getvalue()
        final = self.parts_dir / f"{number:08d}-{_checksum(data)}.arrow"
        temp = self.parts_dir / f"{number:08d}.arrow.tmp"
        try:
            with atomic_write(final, temp=temp) as handle:
                handle.write(data)
        except OSError as exc:
            raise OutputError(
                f"cannot write checkpoint {final}: {exc.strerror or exc}; rows stored so far"
                " are safe, re-run the same command once this is fixed"
            ) from exc
        index = len(self._paths)
        self._paths.append(final)
        return (np.int64(index) << _OFFSET_BITS) + np.arange(len(results), dtype=np.int64)

    def take(self, locs: np.ndarray) -> pa.Table:
        """Stored rows (:data:`RECORD_SCHEMA`) at ``locs``, in order.

        A :data:`SKIP` location gives a skipped row, a :data:`SEND` one an unsent row
        (the budget ran out before it was sent).
        """
        n = len(locs)
        valid = locs >= 0
        positions = np.flatnonzero(valid)
        indexes = locs[valid] >> _OFFSET_BITS
        offsets = locs[valid] & _OFFSET_MASK
        pieces: list[pa.Table] = []
        order = np.empty(n, np.int64)
        filled = 0
        for index in np.unique(indexes):
            chosen = indexes == index
            piece = self._part(int(index)).take(pa.array(offsets[chosen]))
            order[positions[chosen]] = np.arange(filled, filled + piece.num_rows)
            filled += piece.num_rows
            pieces.append(piece)
        if len(positions) < n:
            pieces.append(_NOT_SENT)
            order[~valid] = filled + (locs[~valid] == SEND)
        if not pieces:
            return RECORD_SCHEMA.empty_table()
        return pa.concat_tables(pieces).take(pa.array(order))

    def _part(self, index: int) -> pa.Table:
        table = self._cache.get(index)
        if table is None:
            path = self._paths[index]
            try:
                table = _read_part(path, columns=RECORD_SCHEMA.names)
            except DamagedPart as exc:
                raise CheckpointError(
                    f"checkpoint part {path} was damaged while this run used it ({exc});"
                    " nothing was written: run the same command again, the part will be set"
                    " aside and its rows sent again"
                ) from exc
            self._cache[index] = table
            if len(self._cache) > _PART_CACHE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(index)
        return table


_NOT_SENT = pa.Table.from_pylist(  # what take() gives for SKIP, then for SEND
    [
        {"status": RowStatus.SKIPPED.value, "attempts": 0},
        {"status": RowStatus.UNSENT.value, "attempts": 0},
    ],
    schema=RECORD_SCHEMA,
)


class DamagedPart(Exception):
    """A checkpoint part that cannot be trusted: unreadable, checksum or schema wrong."""


_PART_NAME = re.compile(r"(?P<number>\d{8})(?:-(?P<checksum>[0-9a-f]{32}))?\.arrow")


def _checksum(data: pa.Buffer | bytes) -> str:
    return hashlib.blake2b(memoryview(data), digest_size=16).hexdigest()


def _read_part(path: Path, columns: list[str]) -> pa.Table:
    """A part's ``columns``, once its bytes match its checksum and its schema is right.

    Parts written before checksums existed (``00000001.arrow``) are checked in full
    instead: every value valid (UTF-8 included) and the schema right.

    Raises:
        DamagedPart: the part cannot be trusted.
    """
    name = _PART_NAME.fullmatch(path.name)
    assert name is not None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DamagedPart(f"unreadable: {exc.strerror or exc}") from exc
    if name["checksum"] is not None and _checksum(data) != name["checksum"]:
        raise DamagedPart("its bytes do not match its checksum")
    try:
        table = pa.ipc.open_file(pa.py_buffer(data)).read_all()
        if name["checksum"] is None:
            table.validate(full=True)
    except pa.ArrowException as exc:
        raise DamagedPart(f"not a readable Arrow file: {exc}") from exc
    # A part from an older aibatch may lack result columns added since: null, not damaged.
    for field in PART_SCHEMA:
        if field.name not in table.column_names and field.name in _ADDED_COLUMNS:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    if not table.schema.remove_metadata().equals(PART_SCHEMA):
        raise DamagedPart(f"its columns are not a checkpoint part's: {table.schema.names}")
    return table.select(columns)


def _lookup(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``keys``: whether it is in (non-empty) ``sorted_keys``, and where."""
    where = np.searchsorted(sorted_keys, keys)
    where = np.minimum(where, len(sorted_keys) - 1)
    return sorted_keys[where] == keys, where
