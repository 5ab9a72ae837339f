"""What a job's Batch API batches hold, and what their providers say of them.

The views of the batch ledger (:mod:`aibatch.jobs.batches`) that other steps need: the
rows batches in flight hold (the send step, the dry run), the check a live run makes
before it sends, and ``aibatch batches OUTPUT`` (:func:`job_batches`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import anyio
import numpy as np

from ..errors import CheckpointError, ProviderError, UsageError
from ..jobs.batches import Ledger
from ..jobs.checkpoint import Checkpoint
from ..providers.batch import BatchClient, batch_client

__all__ = ["BatchState", "check_no_batches", "held_rows", "job_batches", "rows_in_batches"]


def held_rows(
    row_keys: np.ndarray, request_hashes: np.ndarray, chunks: list[np.ndarray], *, dedupe: bool
) -> np.ndarray:
    """Which rows the ``chunks`` in flight (their rows files) hold.

    A row is held by its row key; with dedupe, also by its request: the answer to the
    same request will do for it.
    """
    if not chunks:
        return np.zeros(len(row_keys), bool)
    held = np.concatenate(chunks)
    found = np.isin(row_keys, held["row_key"])
    if dedupe:
        found |= np.isin(request_hashes, held["request_hash"])
    return found


def rows_in_batches(
    directory: Path, row_keys: np.ndarray, request_hashes: np.ndarray, *, dedupe: bool
) -> np.ndarray:
    """Which rows the job's batches not collected yet hold (a dry run's view: read only)."""
    ledger = Ledger(directory, read_only=True)
    chunks = [ledger.keys(chunk) for chunk in ledger.open_chunks()]
    return held_rows(row_keys, request_hashes, chunks, dedupe=dedupe)


def check_no_batches(checkpoint: Checkpoint, *, restart: bool) -> None:
    """Before a live run: refuse to send rows that batches of the job may hold.

    With ``restart`` the ledger is forgotten, as the checkpoint is.

    Raises:
        UsageError: the job has batches not collected yet.
    """
    ledger = Ledger(checkpoint.directory)
    if restart:
        ledger.reset()
        return
    chunks = Ledger(checkpoint.directory, read_only=True).open_chunks()
    if chunks:
        raise UsageError(
            f"{sum(c.rows for c in chunks)} rows of this job are in {len(chunks)} provider"
            " batches not collected yet (--batch-api): run the same command with --batch-api"
            " to collect them (cancel them first with `aibatch batches OUTPUT --cancel` to"
            " send the rest live), or --restart to forget them"
        )


@dataclass(frozen=True, slots=True)
class BatchState:
    """A chunk of a job and, for one not collected, what its provider says of it now."""

    chunk: int
    state: str
    rows: int
    batch_id: str | None
    status: str
    finished: int
    failed: int
    note: str = ""


async def job_batches(
    output: Path, *, cancel: bool = False, api_key_env: str | None = None
) -> list[BatchState]:
    """The batches of the job writing ``output``, asking the provider about open ones.

    Args:
        output: the job's output file.
        cancel: cancel every batch not ended yet (its finished requests keep their
            answers; a re-run collects them and sends the others again).
        api_key_env: the variable holding the API key [default: the provider's].

    Raises:
        CheckpointError: the job has no batches, or a record is damaged.
    """
    from ..jobs.checkpoint import checkpoint_dir
    from ..providers import get_provider

    ledger = Ledger(checkpoint_dir(output), read_only=True)
    chunks = await anyio.to_thread.run_sync(ledger.chunks)
    if not chunks:
        raise CheckpointError(f"{output} has no batches (its job did not run with --batch-api)")
    states: list[BatchState] = []
    async with contextlib.AsyncExitStack() as stack:
        clients: dict[tuple[str, str], BatchClient] = {}
        for chunk in chunks:
            state = BatchState(
                chunk.number,
                chunk.state,
                chunk.rows,
                chunk.batch_id,
                chunk.status,
                chunk.finished,
                chunk.failed,
            )
            if chunk.state == "collected" or chunk.batch_id is None:
                states.append(state)
                continue
            where = (chunk.provider, chunk.base_url)
            if where not in clients:
                provider_class = get_provider(chunk.provider)
                variable = api_key_env or provider_class.api_key_env
                provider = await stack.enter_async_context(
                    provider_class(
                        base_url=chunk.base_url,
                        api_key=os.environ.get(variable) if variable else None,
                    )
                )
                clients[where] = batch_client(provider)
            client = clients[where]
            try:
                info = await client.get(chunk.batch_id)
                if cancel and not info.ended:
                    info = await client.cancel(chunk.batch_id)
            except ProviderError as exc:
                states.append(dataclasses.replace(state, note=f"cannot ask: {exc}"))
                continue
            states.append(
                dataclasses.replace(
                    state, status=info.status, finished=info.finished, failed=info.failed
                )
            )
    return states
