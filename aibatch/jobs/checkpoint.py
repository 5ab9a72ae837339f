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
same request.

Nothing of the stored parts is held in memory between steps: :meth:`Checkpoint.plan`
reads them one at a time and matches each stored row against the row of the input it
was stored for (its ``row``), which is where a re-run of the same input finds it. Only
the stored rows that are not there (the input was reordered or edited since) are kept,
to be looked up by key and by request once every part is read. Planning a re-run of
the same input costs about 10 bytes per input row besides the scan's keys, whatever
the size of the checkpoint.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import CheckpointError, OutputError
from ..files import DIR_MODE, FILE_MODE, atomic_write
from ..types import ChatRequest, RowResult, RowStatus
from .arrays import distinct, from_numpy, numbers, scalar, strings, to_numpy

log = logging.getLogger(__name__)

__all__ = [
    "BATCHES_DIR",
    "DUPLICATE",
    "RECORD_SCHEMA",
    "SEND",
    "SKIP",
    "Checkpoint",
    "Plan",
    "PromptHasher",
    "checkpoint_dir",
    "has_batches",
    "positional_row_keys",
    "request_hash",
    "row_key",
    "row_keys",
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


def _encode(parts: Iterable[str]) -> bytes:
    """Hashed text: each part as ``<length>:<part>``, so no two lists encode alike."""
    return "".join(f"{len(p)}:{p}" for p in parts).encode("utf-8", "surrogatepass")


def _request_parts(request: ChatRequest, service: str) -> list[str]:
    parts = [service, request.model]
    for message in request.messages:
        parts += (message.role, message.content)
        if message.images:  # the images' content, not their paths
            parts += ["images", *(image.sha256 for image in message.images)]
    parts += [f"{k}={v!r}" for k, v in request.options]
    if request.schema is not None:  # (so rows without one hash as they always did)
        parts += ["schema", request.schema, request.json_mode]
    return parts


def request_hash(request: ChatRequest, service: str) -> int:
    """A 64-bit hash of what a request asks: service, model, messages, images, options."""
    return _digest(_encode(_request_parts(request, service)))


def row_key(row_id: str, request: int) -> int:
    """A 64-bit hash of a row id together with its request hash."""
    return _digest(f"{len(row_id)}:{row_id}:{request}".encode("utf-8", "surrogatepass"))


_NO_HASH = bytes(8)  # a skipped row's request hash and row key


class PromptHasher:
    """:func:`request_hash` of many requests that differ only in their last message's text.

    The hash's text before that message's text is hashed once, and each prompt's hash
    goes on from a copy of that state (then the text after it, if any): one encoding
    and no :class:`ChatRequest` per prompt. The values are the very ones
    :func:`request_hash` gives the whole requests.

    Args:
        like: one such request (its last message's text is not used); no images.
        service: as for :func:`request_hash`.
    """

    def __init__(self, like: ChatRequest, service: str) -> None:
        if not like.messages or like.has_images:
            raise ValueError("a request with messages and no images is needed")
        parts = _request_parts(like, service)
        at = 2 * len(like.messages) + 1  # the last message's text: service, model, roles...
        self._before = hashlib.blake2b(_encode(parts[:at]), digest_size=8)
        self._after = _encode(parts[at + 1 :])

    def hashes(self, prompts: Sequence[str | None]) -> np.ndarray:
        """Each prompt's request hash (``uint64``); 0 for ``None`` (a skipped row)."""
        copy, after = self._before.copy, self._after
        digests = []
        for p in prompts:
            if p is None:
                digests.append(_NO_HASH)
                continue
            state = copy()
            state.update(f"{len(p)}:{p}".encode("utf-8", "surrogatepass"))
            if after:
                state.update(after)
            digests.append(state.digest())
        return np.frombuffer(b"".join(digests), "<u8").astype(np.uint64)


def row_keys(ids: Sequence[str], hashes: np.ndarray) -> np.ndarray:
    """:func:`row_key` of each id with its request hash, as ``uint64``."""
    copy = hashlib.blake2b(digest_size=8).copy  # (cheaper than a new one per row)
    digests = []
    for i, h in zip(ids, hashes.tolist(), strict=True):
        state = copy()
        state.update(f"{len(i)}:{i}:{h}".encode("utf-8", "surrogatepass"))
        digests.append(state.digest())
    return np.frombuffer(b"".join(digests), "<u8").astype(np.uint64)


def positional_row_keys(first: int, hashes: np.ndarray) -> np.ndarray:
    """:func:`row_keys` of the ids ``str(first)``, ``str(first + 1)``... (no id column)."""
    values = hashes.tolist()
    digests: list[bytes] = []
    start, end = first, first + len(values)
    while start < end:  # ids of one digit count at a time: their length is one prefix
        digits = len(str(start))
        stop = min(end, 10**digits)
        copy = hashlib.blake2b(b"%d:" % digits, digest_size=8).copy
        for i, h in enumerate(values[start - first : stop - first], start):
            state = copy()
            state.update(b"%d:%d" % (i, h))
            digests.append(state.digest())
        start = stop
    return np.frombuffer(b"".join(digests), "<u8").astype(np.uint64)


def checkpoint_dir(output: Path) -> Path:
    """The checkpoint folder that belongs to ``output``."""
    return output.with_name(f".{output.name}.aibatch")


#: the folder in a checkpoint folder where ``--batch-api`` keeps its ledger
#: (:mod:`aibatch.jobs.batches`)
BATCHES_DIR = "batches"


def has_batches(checkpoint: Path) -> bool:
    """Whether the job of checkpoint folder ``checkpoint`` ever sent a Batch API batch.

    A live run asks before it imports the Batch API's modules: most jobs never used it.
    """
    return (checkpoint / BATCHES_DIR).is_dir()


def records_table(results: Sequence[RowResult]) -> pa.Table:
    """Finished rows as an Arrow table of :data:`PART_SCHEMA`."""

    def column(name: str) -> list[Any]:
        return [getattr(r, name) for r in results]

    def micros(name: str) -> list[int]:
        return [int(getattr(r, name) * 1_000_000) for r in results]

    arrays = [
        numbers(column("row_key"), pa.uint64()),
        numbers(column("request_hash"), pa.uint64()),
        numbers(column("row"), pa.int64()),
        strings(column("sent_prompt")),
        strings(column("response")),
        strings([r.status.value for r in results]),
        strings(column("error_type")),
        strings(column("error")),
        numbers(column("http_status"), pa.int32()),
        numbers(column("attempts"), pa.int32()),
        numbers(column("latency_ms"), pa.float64()),
        numbers(column("ttfb_ms"), pa.float64()),
        numbers(micros("started_at"), pa.int64()).cast(RECORD_SCHEMA.field("started_at").type),
        numbers(micros("finished_at"), pa.int64()).cast(RECORD_SCHEMA.field("finished_at").type),
        numbers(column("prompt_tokens"), pa.int64()),
        numbers(column("completion_tokens"), pa.int64()),
        strings(column("finish_reason")),
        numbers(column("cost_usd"), pa.float64()),
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
    """The checkpoint folder of one output: lock, stored parts, resume plans.

    Use as a context manager; entering takes the lock and lists the stored parts, which
    :meth:`plan` then reads (or :attr:`stored_rows`, when asked first).

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
        self._listed: list[Path] = []  # parts found on entering, not read yet
        self._stored: list[int] | None = None  # their indexes once read, damaged ones left out
        self._stored_rows = 0
        self._cache: OrderedDict[int, pa.Table] = OrderedDict()

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.directory)!r}, stored_rows={self._stored_rows})"

    def __enter__(self) -> Checkpoint:
        if self.read_only:
            if not self.restart and self.parts_dir.is_dir():
                self._list()
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
            self._list()
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

    def _list(self) -> None:
        for path in sorted(self.parts_dir.iterdir()):
            if path.name.endswith(".tmp"):
                if not self.read_only:
                    path.unlink()  # a part a crash interrupted before it was complete
                continue
            name = _PART_NAME.fullmatch(path.name)
            if name is None:
                continue
            self._next_part = max(self._next_part, int(name["number"]) + 1)
            self._listed.append(path)

    @property
    def stored_rows(self) -> int:
        """Rows in the sound parts stored before this run (the first ask reads them)."""
        if self._stored is None:
            for _ in self._stored_parts():
                pass
        return self._stored_rows

    def _stored_parts(self) -> Iterator[_Records]:
        """The key columns of each part stored before this run, checked, in load order.

        The first time, a damaged part is set aside (with a warning naming it) and left
        out; later, one found damaged since is a :class:`CheckpointError`.
        """
        if self._stored is not None:
            for index in self._stored:
                yield _Records.of(self._read(index, _PLAN_COLUMNS), index)
            return
        stored: list[int] = []
        for path in self._listed:
            try:
                table = _read_part(path, columns=_PLAN_COLUMNS)
                index = len(self._paths)
                records = _Records.of(table, index)
            except DamagedPart as exc:
                if not self.read_only:
                    self._set_aside(path, exc)
                continue
            self._paths.append(path)
            stored.append(index)
            self._stored_rows += len(records.keys)
            yield records
        self._listed, self._stored = [], stored

    def _set_aside(self, path: Path, exc: DamagedPart) -> None:
        aside = path.with_name(f"{path.name}.damaged")
        log.warning(
            "checkpoint part %s is damaged (%s); set aside as %s, its rows will be sent again",
            path,
            exc,
            aside.name,
        )
        path.rename(aside)

    def plan(
        self,
        row_keys: np.ndarray,
        request_hashes: np.ndarray,
        skipped: np.ndarray,
        *,
        dedupe: bool = True,
        retry_failed: bool = True,
    ) -> Plan:
        """Decide for each row: reuse a stored answer, copy another row's, skip, or send.

        A row reuses the stored row of the same key (ok before failed, then the newest);
        with ``dedupe``, a row left to send also takes the answer of any stored ok row or
        row of this run that asks the same request, and identical rows left to send
        point at the first of them, which alone is sent.
        """
        n = len(row_keys)
        loc = np.full(n, SEND, np.int64)
        loc[skipped] = SKIP
        ok_at = np.zeros(n, bool)  # the row's location is an ok stored row
        strays: list[_Records] = []  # usable stored rows not at the row they were stored for
        for records in self._stored_parts():
            usable = records.ok if retry_failed else np.ones(len(records.ok), bool)
            rows = records.rows
            inside = (rows >= 0) & (rows < n)
            at = np.where(inside, rows, 0)
            hit = inside & usable
            if n:
                hit &= (row_keys[at] == records.keys) & (loc[at] != SKIP)
            _assign(loc, ok_at, at[hit], records.locs[hit], records.ok[hit])
            if np.any(usable & ~hit):
                strays.append(records.subset(usable & ~hit))
        if strays:
            _match_strays(loc, ok_at, row_keys, request_hashes, strays, dedupe=dedupe)
        plan = Plan(loc, skipped=int(np.count_nonzero(skipped)))
        if dedupe:
            plan.deduped = _share(loc, ok_at, request_hashes)
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
        for index in distinct(indexes):
            chosen = indexes == index
            piece = self._part(int(index)).take(from_numpy(offsets[chosen], pa.int64()))
            order[positions[chosen]] = np.arange(filled, filled + piece.num_rows)
            filled += piece.num_rows
            pieces.append(piece)
        if len(positions) < n:
            pieces.append(_NOT_SENT)
            order[~valid] = filled + (locs[~valid] == SEND)
        if not pieces:
            return RECORD_SCHEMA.empty_table()
        return pa.concat_tables(pieces).take(from_numpy(order, pa.int64()))

    def _part(self, index: int) -> pa.Table:
        table = self._cache.get(index)
        if table is None:
            table = self._read(index, RECORD_SCHEMA.names)
            self._cache[index] = table
            if len(self._cache) > _PART_CACHE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(index)
        return table

    def _read(self, index: int, columns: list[str]) -> pa.Table:
        """Columns of a part this run already found sound.

        Raises:
            CheckpointError: the part is damaged now.
        """
        path = self._paths[index]
        try:
            return _read_part(path, columns=columns)
        except DamagedPart as exc:
            raise CheckpointError(
                f"checkpoint part {path} was damaged while this run used it ({exc});"
                " nothing was written: run the same command again, the part will be set"
                " aside and its rows sent again"
            ) from exc


@dataclass(frozen=True, slots=True)
class _Records:
    """What a plan needs of one part's rows, in the order they were stored."""

    keys: np.ndarray  # row_key
    hashes: np.ndarray  # request_hash
    rows: np.ndarray  # the row each was stored for
    ok: np.ndarray  # status "ok"
    locs: np.ndarray  # their locations

    def subset(self, chosen: np.ndarray) -> _Records:
        """The rows at ``chosen`` (a mask), copied: the part's buffers are let go."""
        return _Records(
            self.keys[chosen], self.hashes[chosen], _NO_ROWS, self.ok[chosen], self.locs[chosen]
        )

    @classmethod
    def of(cls, table: pa.Table, index: int) -> _Records:
        """The rows of a part's :data:`_PLAN_COLUMNS`, the part at ``index`` in load order.

        Raises:
            DamagedPart: a key column holds nulls.
        """
        try:
            keys, hashes, rows = (
                to_numpy(table.column(n)) for n in ("row_key", "request_hash", "row")
            )
        except ValueError as exc:
            raise DamagedPart(str(exc)) from exc
        status = table.column("status")
        ok = pc.and_kleene(pc.equal(status, scalar(RowStatus.OK.value)), pc.is_valid(status))
        flags = pc.cast(ok, pa.uint8())
        n = len(keys)
        locs = (np.int64(index) << _OFFSET_BITS) + np.arange(n, dtype=np.int64)
        return cls(keys, hashes, rows, to_numpy(flags).astype(bool), locs)


_PLAN_COLUMNS = ["row_key", "request_hash", "row", "status"]
_NO_ROWS = np.empty(0, np.int64)


def _match_strays(
    loc: np.ndarray,
    ok_at: np.ndarray,
    row_keys: np.ndarray,
    request_hashes: np.ndarray,
    strays: list[_Records],
    *,
    dedupe: bool,
) -> None:
    """Let rows take stored rows that are not where the input has them now.

    Each row takes the best stored row of its key if it is better than its own (ok
    before failed, then the newer: a later location); with ``dedupe``, a row left to
    send takes the oldest ok stored row of its request. Memory goes with the stray
    rows, and a chunk of the input at a time.
    """
    keys = np.concatenate([s.keys for s in strays])
    hashes = np.concatenate([s.hashes for s in strays])
    ok = np.concatenate([s.ok for s in strays])
    locs = np.concatenate([s.locs for s in strays])
    strays.clear()
    order = np.lexsort((locs, ok, keys))  # the best of a key last: ok, then the newest
    ordered = keys[order]
    best = np.ones(len(order), bool)
    best[:-1] = ordered[1:] != ordered[:-1]
    chosen = order[best]
    del order, ordered, best
    best_keys, best_locs, best_ok = keys[chosen], locs[chosen], ok[chosen]
    for s in range(0, len(loc), _CHUNK):
        where = _find(best_keys, row_keys[s : s + _CHUNK])
        rows = np.flatnonzero((where >= 0) & (loc[s : s + _CHUNK] != SKIP)) + s
        where = where[rows - s]
        new_loc, new_ok, old_loc, old_ok = best_locs[where], best_ok[where], loc[rows], ok_at[rows]
        better = (old_loc < 0) | (new_ok & ~old_ok) | ((new_ok == old_ok) & (new_loc > old_loc))
        loc[rows[better]] = new_loc[better]
        ok_at[rows[better]] = new_ok[better]
    if not dedupe or not ok.any():
        return
    hashes, locs = hashes[ok], locs[ok]
    order = np.lexsort((locs, hashes))  # the oldest of a request first
    ordered = hashes[order]
    first = np.ones(len(order), bool)
    first[1:] = ordered[1:] != ordered[:-1]
    answers, answer_locs = ordered[first], locs[order[first]]
    for s in range(0, len(loc), _CHUNK):
        rows = np.flatnonzero(loc[s : s + _CHUNK] == SEND) + s
        where = _find(answers, request_hashes[rows])
        rows, where = rows[where >= 0], where[where >= 0]
        loc[rows] = answer_locs[where]
        ok_at[rows] = True


def _find(sorted_values: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For each of ``values``: its position in (non-empty) ``sorted_values``, or -1."""
    where = np.minimum(np.searchsorted(sorted_values, values), len(sorted_values) - 1)
    return np.where(sorted_values[where] == values, where, -1)


def _newest(rows: np.ndarray, locs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Of stored rows (oldest first) for the same row, the newest."""
    if len(rows) < 2:
        return rows, locs
    last = len(rows) - 1 - np.unique(rows[::-1], return_index=True)[1]
    return rows[last], locs[last]


def _assign(
    loc: np.ndarray, ok_at: np.ndarray, rows: np.ndarray, locs: np.ndarray, ok: np.ndarray
) -> None:
    """Point ``rows`` at the stored rows at ``locs`` (oldest first) unless they have better.

    An ok stored row is better than a failed one; of two alike, the newer one.
    """
    failed = ~ok
    if failed.any():
        these, where = _newest(rows[failed], locs[failed])
        free = ~ok_at[these]
        loc[these[free]] = where[free]
    if ok.any():
        these, where = _newest(rows[ok], locs[ok])
        loc[these] = where
        ok_at[these] = True


_CHUNK = 1 << 20  # rows looked at a time where a whole-input temporary would be large


def _share(loc: np.ndarray, ok_at: np.ndarray, hashes: np.ndarray) -> int:
    """Rows left to send that ask what another row asks share its answer.

    A row that has an ok stored answer gives it to the others; else the first of them
    to send is sent and the rest are marked :data:`DUPLICATE` of it. Return how many.
    Only the rows whose request is asked more than once are gathered, and those are
    found a sixteenth of the hashes at a time (by their top bits): the largest
    temporary is a sorted copy of a sixteenth of them.
    """
    if not np.any(loc == SEND):
        return 0
    top = np.empty(len(hashes), np.uint8)  # each row's bucket; 16 for a skipped row
    for s in range(0, len(hashes), _CHUNK):
        top[s : s + _CHUNK] = hashes[s : s + _CHUNK] >> np.uint64(60)
        top[s : s + _CHUNK][loc[s : s + _CHUNK] == SKIP] = 16
    found = []
    for bucket in range(16):
        values = hashes[top == bucket]
        values.sort()
        found.append(distinct(values[1:][values[1:] == values[:-1]]))
    del top, values
    repeated = np.concatenate(found)  # sorted: the buckets go up by their top bits
    if not len(repeated):
        return 0
    rows = np.concatenate(
        [
            np.flatnonzero(
                (_find(repeated, hashes[s : s + _CHUNK]) >= 0) & (loc[s : s + _CHUNK] != SKIP)
            )
            + s
            for s in range(0, len(hashes), _CHUNK)
        ]
    )
    rows = rows[np.argsort(hashes[rows], kind="stable")]  # by request, then by row
    asked = hashes[rows]
    first = np.ones(len(rows), bool)
    first[1:] = asked[1:] != asked[:-1]
    starts = np.flatnonzero(first)
    group = np.cumsum(first) - 1
    here = loc[rows]
    waiting = here == SEND
    position = np.arange(len(rows))
    none = len(rows)
    donor = np.minimum.reduceat(np.where(ok_at[rows], position, none), starts)[group]
    primary = np.minimum.reduceat(np.where(waiting, position, none), starts)[group]
    copy = waiting & (donor < none)
    loc[rows[copy]] = here[donor[copy]]
    ok_at[rows[copy]] = True
    duplicate = waiting & (donor == none) & (position != primary)
    loc[rows[duplicate]] = DUPLICATE - rows[primary[duplicate]]
    return int(np.count_nonzero(duplicate))


_NOT_SENT = pa.Table.from_arrays(  # what take() gives for SKIP, then for SEND
    [
        strings([RowStatus.SKIPPED.value, RowStatus.UNSENT.value])
        if field.name == "status"
        else numbers([0, 0], field.type)
        if field.name == "attempts"
        else pa.nulls(2, field.type)
        for field in RECORD_SCHEMA
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
