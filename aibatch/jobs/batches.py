"""The batch ledger: what a job sent through a provider's Batch API, durably.

It lives in the checkpoint folder, under the checkpoint's lock::

    .out.parquet.aibatch/batches/
        job                  the job's random id: OpenAI batches carry it in metadata
        00000001.json        a chunk's record, rewritten whole (atomically) at each step
        00000001.keys        the chunk's rows: row, row key, request hash, attempt
        00000001.jsonl       its requests as sent (removed once its results are stored)

A chunk goes ``prepared`` (its rows and requests are on disk: from now on they are in
flight, and no other chunk takes them) -> ``uploaded`` (OpenAI: the file id) ->
``submitted`` (the batch id) -> ``collected`` (its results are in the checkpoint's
parts). Every step is fsynced before the run moves on, so after a crash the next run
knows, for every row, whether a batch may hold it.

Each record carries a checksum of its own values and of its rows file: a record or a
rows file that does not match stops the run with a :class:`CheckpointError` naming it,
as it cannot be known which rows the provider holds; never is a damaged one guessed at.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError, OutputError
from ..files import DIR_MODE, atomic_write
from .checkpoint import BATCHES_DIR

log = logging.getLogger(__name__)

__all__ = ["KEYS_DTYPE", "STATES", "Chunk", "Ledger", "custom_id", "parse_custom_id"]

#: a chunk's states, in order
STATES = ("prepared", "uploaded", "submitted", "collected")
#: one row of a chunk's rows file
KEYS_DTYPE = np.dtype(
    [("row", "<i8"), ("row_key", "<u8"), ("request_hash", "<u8"), ("attempt", "<i4")]
)
_RECORD = re.compile(r"(?P<number>\d{8})\.json")
_CUSTOM_ID = re.compile(r"r(?P<row_key>[0-9a-f]{16})(?P<request_hash>[0-9a-f]{16})")


def custom_id(row_key: int, request_hash: int) -> str:
    """The ``custom_id`` of a request: its row key and request hash.

    A result is so tied to the row it answers, whatever order it comes back in.
    """
    return f"r{row_key:016x}{request_hash:016x}"


def parse_custom_id(value: str) -> tuple[int, int] | None:
    """The row key and request hash in a ``custom_id``; ``None`` if it is not ours."""
    match = _CUSTOM_ID.fullmatch(value)
    if match is None:
        return None
    return int(match["row_key"], 16), int(match["request_hash"], 16)


@dataclass(frozen=True, slots=True, kw_only=True)
class Chunk:
    """One batch's worth of a job's rows, as the ledger records it.

    Attributes:
        number: its number in the job (1, 2, ...).
        state: one of :data:`STATES`.
        rows: how many rows (requests) it holds.
        prepared_at: when its rows were recorded (Unix seconds); a batch of it cannot
            be older.
        keys_digest: checksum of its rows file.
        reserved: what the budget holds for it (USD, the worst case), 0 without one.
        provider, base_url, model: where it goes (never the key).
        file_id: the uploaded file (OpenAI), once known.
        batch_id: the provider's batch, once known.
        status, finished, failed: what the provider said of it when last asked.
        adopted: its batch was found by its size alone (Anthropic), not known to be
            its own until its results name its requests.
        requests_digest: checksum of its requests file, checked before a later run
            sends that file (empty for a chunk recorded again from its rows alone).
        prompts_digest: checksum of its sent prompts file (the ``sent_prompt`` column).
    """

    number: int
    state: str
    rows: int
    prepared_at: float
    keys_digest: str
    reserved: float = 0.0
    provider: str = ""
    base_url: str = ""
    model: str = ""
    file_id: str | None = None
    batch_id: str | None = None
    status: str = ""
    finished: int = 0
    failed: int = 0
    adopted: bool = False
    requests_digest: str = ""
    prompts_digest: str = ""

    @property
    def name(self) -> str:
        """The chunk as messages name it."""
        return f"chunk {self.number}"

    def to_dict(self) -> dict[str, Any]:
        """Its values, JSON-ready."""
        return dataclasses.asdict(self)


def requests_digest() -> hashlib.blake2b:
    """The running checksum of a chunk's requests file (``update``, ``hexdigest``)."""
    return hashlib.blake2b(digest_size=16)


def _checksum(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _record_bytes(values: dict[str, Any]) -> bytes:
    return json.dumps(values, sort_keys=True, ensure_ascii=False).encode()


class Ledger:
    """The batch ledger of one checkpoint folder (whose lock the caller holds).

    Args:
        checkpoint: the checkpoint folder.
        read_only: only read (``aibatch batches`` listing): nothing is created.
    """

    def __init__(self, checkpoint: Path, *, read_only: bool = False) -> None:
        self.directory = checkpoint / BATCHES_DIR
        self.read_only = read_only

    def __repr__(self) -> str:
        return f"Ledger({str(self.directory)!r})"

    def ensure(self) -> None:
        """Make the ledger's folder."""
        self._ensure()

    def reset(self) -> None:
        """Forget every chunk (``--restart``): their batches are not collected."""
        if self.read_only or not self.directory.is_dir():
            return
        left = [c for c in self.chunks() if c.state != "collected"]
        if left:
            ids = ", ".join(str(c.batch_id) for c in left if c.batch_id) or "none submitted"
            log.warning(
                "--restart: %d batches of the earlier run are forgotten, not cancelled"
                " (batch ids: %s); run `aibatch batches OUTPUT --cancel` first to cancel them",
                len(left),
                ids,
            )
        shutil.rmtree(self.directory)

    def _ensure(self) -> None:
        try:
            self.directory.mkdir(mode=DIR_MODE, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create {self.directory}: {exc.strerror or exc}") from exc

    def job_id(self) -> str:
        """The job's random id, made on first use (it names the job to the provider).

        Also removes the temporary files a crash left behind.
        """
        if self.directory.is_dir() and not self.read_only:
            for stale in self.directory.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
        path = self.directory / "job"
        try:
            value = path.read_text().strip()
        except FileNotFoundError:
            value = ""
        if re.fullmatch(r"[0-9a-f]{32}", value):
            return value
        if value:
            raise CheckpointError(f"{path} is damaged; it is not a job id")
        self._ensure()
        value = secrets.token_hex(16)
        self._write(path, value.encode())
        return value

    def chunks(self) -> list[Chunk]:
        """Every chunk recorded, by number.

        Raises:
            CheckpointError: a record is damaged.
        """
        if not self.directory.is_dir():
            return []
        found = []
        for path in sorted(self.directory.iterdir()):
            if _RECORD.fullmatch(path.name):
                found.append(self._read(path))
        return found

    def restore_orphans(self, **values: Any) -> list[Chunk]:
        """Record again the chunks whose rows file has no record; return them.

        A crash between writing a chunk's files and its record leaves them so, and so
        does a record deleted by hand: the chunk may or may not be at the provider, so
        it is recorded ``prepared`` again (``values``: where it goes), and the run looks
        for its batch before submitting it. Without its requests file it cannot be
        submitted: its files are removed and its rows sent in a new chunk.
        """
        if self.read_only or not self.directory.is_dir():
            return []
        recorded = {c.number for c in self.chunks()}
        restored = []
        for path in sorted(self.directory.glob("*.keys")):
            if not re.fullmatch(r"\d{8}", path.stem) or int(path.stem) in recorded:
                continue
            number = int(path.stem)
            data = path.read_bytes()
            if not self.requests_path(number).is_file() or len(data) % KEYS_DTYPE.itemsize:
                log.warning("chunk %d has rows but no record or requests: dropped", number)
                for stale in (path, self.prompts_path(number), self.requests_path(number)):
                    stale.unlink(missing_ok=True)
                continue
            log.warning(
                "chunk %d has rows but no record: recorded again; its batch is looked for"
                " at the provider before it is submitted",
                number,
            )
            chunk = Chunk(
                number=number,
                state="prepared",
                rows=len(data) // KEYS_DTYPE.itemsize,
                prepared_at=path.stat().st_mtime,
                keys_digest=_checksum(data),
                **values,
            )
            restored.append(self._save(chunk))
        return restored

    def open_chunks(self) -> list[Chunk]:
        """The chunks whose results are not stored yet."""
        return [c for c in self.chunks() if c.state != "collected"]

    def requests_path(self, number: int) -> Path:
        """Where chunk ``number``'s requests file is."""
        return self.directory / f"{number:08d}.jsonl"

    def prompts_path(self, number: int) -> Path:
        """Where chunk ``number``'s sent prompts (the ``sent_prompt`` column) are."""
        return self.directory / f"{number:08d}.prompts"

    def next_number(self) -> int:
        """The number a new chunk gets."""
        chunks = self.chunks()
        return chunks[-1].number + 1 if chunks else 1

    def prepare(self, chunk: Chunk, keys: np.ndarray) -> Chunk:
        """Record a new chunk and its rows (``KEYS_DTYPE``), durably, in that order.

        Its requests file must already be in place: once the record exists, the rows
        count as in flight.
        """
        self._ensure()
        data = np.ascontiguousarray(keys, KEYS_DTYPE).tobytes()
        chunk = dataclasses.replace(chunk, keys_digest=_checksum(data), rows=len(keys))
        self._write(self.directory / f"{chunk.number:08d}.keys", data)
        return self._save(chunk)

    def keys(self, chunk: Chunk) -> np.ndarray:
        """The rows of ``chunk`` (``KEYS_DTYPE``).

        Raises:
            CheckpointError: its rows file is missing or does not match its record.
        """
        path = self.directory / f"{chunk.number:08d}.keys"
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise self._damaged(path, exc.strerror or str(exc)) from exc
        if _checksum(data) != chunk.keys_digest or len(data) != chunk.rows * KEYS_DTYPE.itemsize:
            raise self._damaged(path, "its bytes do not match its record")
        return np.frombuffer(data, KEYS_DTYPE)

    def check_requests(self, chunk: Chunk) -> None:
        """Refuse ``chunk``'s requests file unless it is what was recorded.

        Its lines name their rows by ``custom_id``: a line that changed would bring some
        other request's answer to a row.

        Raises:
            CheckpointError: the file is missing or its bytes changed.
        """
        if not chunk.requests_digest:
            return
        path = self.requests_path(chunk.number)
        digest = requests_digest()
        try:
            with path.open("rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
        except OSError as exc:
            raise self._damaged(path, exc.strerror or str(exc)) from exc
        if digest.hexdigest() != chunk.requests_digest:
            raise self._damaged(path, "its bytes do not match its record")

    def update(self, chunk: Chunk, **changes: Any) -> Chunk:
        """Record ``chunk`` with ``changes``, durably; return it."""
        return self._save(dataclasses.replace(chunk, **changes))

    def collected(self, chunk: Chunk) -> Chunk:
        """Record that ``chunk``'s results are stored; drop its requests file."""
        done = self._save(dataclasses.replace(chunk, state="collected"))
        self.requests_path(chunk.number).unlink(missing_ok=True)
        self.prompts_path(chunk.number).unlink(missing_ok=True)
        return done

    def _save(self, chunk: Chunk) -> Chunk:
        if chunk.state not in STATES:
            raise ValueError(f"unknown chunk state {chunk.state!r}")
        values = chunk.to_dict()
        values["checksum"] = _checksum(_record_bytes(values))
        self._write(self.directory / f"{chunk.number:08d}.json", _record_bytes(values))
        return chunk

    def _read(self, path: Path) -> Chunk:
        try:
            values = json.loads(path.read_bytes())
            checksum = values.pop("checksum")
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
            raise self._damaged(path, "unreadable") from exc
        if checksum != _checksum(_record_bytes(values)):
            raise self._damaged(path, "its values do not match its checksum")
        try:
            return Chunk(**values)
        except TypeError as exc:
            raise self._damaged(path, "not a chunk record") from exc

    def _damaged(self, path: Path, why: str) -> CheckpointError:
        return CheckpointError(
            f"batch record {path} is damaged ({why}): which rows the provider holds cannot"
            " be known, so nothing was sent. `aibatch batches OUTPUT` lists the job's"
            " batches; run with --restart to start over (batches already submitted are"
            " then not collected)"
        )

    def _write(self, path: Path, data: bytes) -> None:
        if self.read_only:
            raise CheckpointError(f"the ledger {self.directory} is open read-only")
        try:
            with atomic_write(path) as handle:
                handle.write(data)
        except OSError as exc:
            raise OutputError(
                f"cannot write {path}: {exc.strerror or exc}; what was recorded so far is"
                " safe, re-run the same command once this is fixed"
            ) from exc


def new_chunk(number: int, **values: Any) -> Chunk:
    """A chunk about to be prepared (its digest and row count are set by prepare)."""
    return Chunk(number=number, state="prepared", rows=0, prepared_at=time.time(),
                 keys_digest="", **values)  # fmt: skip


def iter_keys(keys: np.ndarray) -> Iterator[tuple[int, int, int, int]]:
    """(row, row key, request hash, attempt) of each row of a rows array."""
    return zip(
        keys["row"].tolist(),
        keys["row_key"].tolist(),
        keys["request_hash"].tolist(),
        keys["attempt"].tolist(),
        strict=True,
    )
