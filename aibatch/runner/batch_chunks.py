"""The pieces of a Batch API chunk: its request lines, its files, its rows' results.

:class:`ChunkWriter` writes one chunk's requests, sent prompts and rows as lines arrive
and records the chunk in the ledger; the functions below turn a batch's answers into
the rows the checkpoint stores. :mod:`aibatch.runner.batch` drives them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InvalidOutput, PermanentError, ProviderError, TransientError
from ..files import AtomicFile
from ..jobs.batches import KEYS_DTYPE, Chunk, new_chunk, requests_digest
from ..types import Completion, RowResult, RowStatus

if TYPE_CHECKING:
    from .batch import BatchSend

__all__ = ["ChunkWriter", "Line", "fill", "refused", "retryable", "row_result"]


@dataclass(frozen=True, slots=True)
class Line:
    """One request of a chunk: its row, keys, attempt, request line and sent prompt."""

    row: int
    row_key: int
    request_hash: int
    attempt: int
    data: bytes
    prompt: bytes
    reserved: float


class ChunkWriter:
    """Writes one chunk's request, prompt and rows files as lines arrive."""

    def __init__(self, send: BatchSend, number: int) -> None:
        self.send = send
        self.number = number
        self.rows: list[tuple[int, int, int, int]] = []
        self.bytes = 0
        self.reserved = 0.0
        self._requests: AtomicFile | None = None
        self._prompts: AtomicFile | None = None
        self._digest = requests_digest()
        self._prompts_digest = requests_digest()

    def full(self, size: int) -> bool:
        """Whether a line of ``size`` bytes no longer fits."""
        limit = self.send.client.max_bytes
        return bool(self.rows) and (len(self.rows) >= self.send.size or self.bytes + size > limit)

    def add(self, line: Line) -> None:
        """Write ``line`` into the chunk's files (opened at the first line)."""
        ledger = self.send.ledger
        if self._requests is None:
            ledger.ensure()
            self._requests = AtomicFile(ledger.requests_path(self.number))
            self._prompts = AtomicFile(ledger.prompts_path(self.number))
        assert self._prompts is not None
        self._requests.file.write(line.data)
        self._digest.update(line.data)
        self._prompts.file.write(line.prompt)
        self._prompts_digest.update(line.prompt)
        self.rows.append((line.row, line.row_key, line.request_hash, line.attempt))
        self.bytes += len(line.data)
        self.reserved += line.reserved

    def discard(self) -> None:
        """Drop what was written: the chunk is never recorded."""
        for atomic in (self._requests, self._prompts):
            if atomic is not None:
                atomic.discard()
        self._requests = self._prompts = None

    def prepare(self) -> tuple[Chunk, np.ndarray] | None:
        """Make the files durable and record the chunk; ``None`` when it has no row."""
        if self._requests is None or self._prompts is None:
            return None
        self._requests.commit()
        self._prompts.commit()
        keys = np.array(self.rows, KEYS_DTYPE)
        partition = self.send.partition
        chunk = new_chunk(
            self.number,
            reserved=self.reserved,
            provider=partition.provider.name,
            base_url=partition.provider.base_url,
            model=partition.model,
            requests_digest=self._digest.hexdigest(),
            prompts_digest=self._prompts_digest.hexdigest(),
        )
        return self.send.ledger.prepare(chunk, keys), keys


def refused(exc: ProviderError) -> bool:
    """Whether the service answered the create call with a refusal (nothing created)."""
    status = exc.http_status
    return isinstance(exc, PermanentError) and status is not None and 400 <= status < 500


def retryable(error: ProviderError) -> bool:
    """Whether a row that ended so may go into a new chunk (within --max-attempts)."""
    return isinstance(error, TransientError | InvalidOutput)


def row_result(
    row: int, key: int, request: int, prompt: str, attempt: int, chunk: Chunk, now: float
) -> RowResult:
    """A chunk's row as the checkpoint stores it, ok until :func:`fill` says otherwise."""
    return RowResult(
        row=row,
        row_key=key,
        request_hash=request,
        sent_prompt=prompt,
        status=RowStatus.OK,
        attempts=attempt,
        latency_ms=(now - chunk.prepared_at) * 1000.0,  # from the chunk's making to its end
        started_at=chunk.prepared_at,
        finished_at=now,
    )


def fill(result: RowResult, completion: Completion | None, error: ProviderError | None) -> None:
    """Put an answer, or the error that ended the row, into ``result``."""
    if completion is not None:
        result.response = completion.text
        result.http_status = completion.http_status
        result.prompt_tokens = completion.prompt_tokens
        result.completion_tokens = completion.completion_tokens
        result.finish_reason = completion.finish_reason
        return
    assert error is not None
    result.status = RowStatus.ERROR
    result.error_type = type(error).__name__
    result.error = str(error)
    result.http_status = error.http_status
    if isinstance(error, InvalidOutput):
        result.response = error.response
