"""The send step through a provider's Batch API (``--batch-api``), in place of live requests.

The engine's scan, plan and write steps, its checkpoint and its checks are the same as
a live run's; only step 3 differs. The rows the plan says to send go, in chunks, into
request files the provider answers within 24 hours at half the price:

1. *resume*: the ledger (:mod:`aibatch.jobs.batches`) lists the chunks an earlier run
   recorded and did not collect. Their rows are in flight: none is sent again. A chunk
   recorded but not known to be submitted is looked for at the provider first (OpenAI:
   by the job id and chunk number in its metadata; Anthropic, which has no metadata:
   a batch of as many requests created since), and submitted only if none is found;
2. *build*: the other rows, read from the input in batches and checked against the
   scan as a live run checks them, are written as request lines into a chunk file of at
   most ``--batch-size`` rows and the service's limits. The chunk's rows and requests
   are fsynced and recorded (``prepared``) before anything goes to the provider; then
   the file is uploaded (``uploaded``) and the batch created (``submitted``);
3. *wait*: each open batch is polled, less and less often (at most every
   ``--poll-interval`` seconds); an ended batch's results are matched to their rows by
   ``custom_id`` (row key and request hash, never position), stored in the checkpoint,
   and the chunk marked ``collected``. Rows that failed in a way that may pass (expired,
   a 5xx, an invalid structured answer) go into a new chunk while ``--max-attempts``
   allows; the others are stored with their last error, as a live run stores them.

``--no-wait`` submits and polls once, stores what ended, and returns with the rest
pending; ``--max-wait`` bounds the wait; Ctrl-C stops waiting (the batches go on at
the provider). The next run of the same command takes up where this one stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import numpy as np

from ..errors import (
    BatchFailed,
    CheckpointError,
    InvalidOutput,
    PermanentError,
    ProviderError,
    TransientError,
    Unauthorized,
)
from ..files import AtomicFile
from ..io.inputs import Batch
from ..jobs.batches import KEYS_DTYPE, Chunk, Ledger, custom_id, new_chunk
from ..jobs.checkpoint import SEND, Checkpoint, Plan
from ..providers.batch import BatchClient, BatchInfo, batch_client
from ..types import Completion, RowResult, RowStatus
from .retry import call_with_retries

if TYPE_CHECKING:
    from .engine import _Partition

log = logging.getLogger(__name__)

__all__ = ["BatchSend", "BatchState", "job_batches"]

#: the first wait between polls (seconds); each wait is 1.5 times the one before
FIRST_POLL = 0.5
_STEP = 256  # rows whose requests (and images) are built at once
T = TypeVar("T")


@dataclass(slots=True)
class _Open:
    """A chunk in flight and what the provider last said of it."""

    chunk: Chunk
    info: BatchInfo | None = None


class BatchSend:
    """Step 3 of a partition through the Batch API.

    Args:
        partition: the running partition (its spec, provider, input, scan and budget).
        plan: its plan; rows stored get their location in it.
        checkpoint: the open checkpoint (its lock also guards the ledger).
    """

    def __init__(self, partition: _Partition, plan: Plan, checkpoint: Checkpoint) -> None:
        self.partition = partition
        self.spec = partition.spec
        self.plan = plan
        self.checkpoint = checkpoint
        self.client: BatchClient = batch_client(
            partition.provider, schema=partition.structured is not None
        )
        self.ledger = Ledger(checkpoint.directory)
        self.size = min(self.spec.batch_size or self.client.max_requests, self.client.max_requests)
        self.open: list[_Open] = []
        self.retry: dict[int, int] = {}  # row -> attempts made, for rows to send again
        # rows waiting for the budget held by chunks in flight, and their attempts
        self.deferred = np.empty(0, np.int64)
        self.deferred_attempts: dict[int, int] = {}
        self._settled = False  # a chunk was collected since the last build
        self.submitted = 0  # requests submitted by this run
        self.stored = 0  # rows this run stored
        self.job = ""

    async def run(self) -> int:
        """Send what the plan says to, wait as the job says; return the rows left pending.

        Raises:
            ProviderError: a Batch API call failed past its retries (what was recorded
                is safe: the next run resumes).
            Unauthorized: the key was refused.
        """
        spec = self.spec
        if spec.restart:
            await anyio.to_thread.run_sync(self.ledger.reset)
        self.job = await anyio.to_thread.run_sync(self.ledger.job_id)
        chunks = await anyio.to_thread.run_sync(self.ledger.open_chunks)
        provider = self.partition.provider
        for chunk in chunks:
            if (chunk.provider, chunk.base_url) != (provider.name, provider.base_url):
                raise CheckpointError(
                    f"{chunk.name} of this job is a batch at {chunk.provider} {chunk.base_url},"
                    f" but this run sends to {provider.name} {provider.base_url}: run it with"
                    " that provider and --base-url to collect it (or --restart to forget it)"
                )
        in_flight = [await anyio.to_thread.run_sync(self.ledger.keys, c) for c in chunks]
        self.open = [_Open(c) for c in chunks]
        budget = self.partition.budget
        if budget is not None:
            for chunk in chunks:
                budget.hold(chunk.reserved, already=True)
        if chunks:
            log.info(
                "%d batches of an earlier run are in flight (%d rows)",
                len(chunks),
                sum(c.rows for c in chunks),
            )
        for item in list(self.open):  # recorded, maybe not submitted: find, else submit
            if item.chunk.state != "submitted":
                await self._submit(item, resumed=True)
        send = self.plan.loc == SEND
        if in_flight:
            keys = self.partition.keys.row_keys
            send &= ~np.isin(keys, np.concatenate([k["row_key"] for k in in_flight]))
        await self._build(np.flatnonzero(send), {})
        await self._wait()
        return self.pending()

    def pending(self) -> int:
        """Rows of this partition in batches not collected yet."""
        return sum(item.chunk.rows for item in self.open)

    # build

    async def _build(self, rows: np.ndarray, attempts: dict[int, int]) -> None:
        """Write ``rows`` (sorted row numbers) into chunks and submit each as it fills.

        Rows the budget cannot cover while other chunks hold some of it wait in
        :attr:`deferred` for those chunks to settle.
        """
        if not len(rows) or self._closed():
            return
        writer = _ChunkWriter(self, await anyio.to_thread.run_sync(self.ledger.next_number))
        for batch in self.partition.source.batches():
            n = batch.data.num_rows
            lo, hi = np.searchsorted(rows, [batch.start, batch.start + n])
            for first in range(int(lo), int(hi), _STEP):
                part = rows[first : min(first + _STEP, int(hi))] - batch.start
                lines = await anyio.to_thread.run_sync(self._lines, batch, part, attempts)
                for index, line in enumerate(lines):
                    if line is None:  # the budget cannot cover it now
                        await self._finish(writer)
                        budget = self.partition.budget
                        if budget is not None and budget.reached:  # nothing held: no room
                            self.partition._budget_reached(budget.reached_error())
                        else:  # room may come when the chunks in flight settle
                            self.deferred = rows[first + index :]
                            self.deferred_attempts = attempts
                        return
                    if writer.full(len(line.data)):
                        await self._finish(writer)
                        writer = _ChunkWriter(self, writer.number + 1)
                    await anyio.to_thread.run_sync(writer.add, line)
            if hi >= len(rows):
                break
        await self._finish(writer)

    def _lines(
        self, batch: Batch, rows: np.ndarray, attempts: dict[int, int]
    ) -> list[_Line | None]:
        """The request lines of ``batch``'s ``rows``, checked against the scan.

        ``None`` ends the list where the budget cannot cover a row.
        """
        partition = self.partition
        jobs = partition._jobs(batch, rows, self.plan)
        out: list[_Line | None] = []
        budget = partition.budget
        for job in jobs:
            reserved = 0.0
            if budget is not None:
                reserved = partition._worst(job)  # at the Batch API's price
                if not budget.hold(reserved):
                    out.append(None)
                    break
            data = self.client.line(custom_id(job.row_key, job.request_hash), job.request)
            prompt = json.dumps(partition.provider.render(job.request), ensure_ascii=False)
            out.append(
                _Line(
                    job.row,
                    job.row_key,
                    job.request_hash,
                    attempts.get(job.row, 0),
                    data,
                    prompt.encode() + b"\n",
                    reserved,
                )
            )
        return out

    async def _finish(self, writer: _ChunkWriter) -> None:
        """Record the chunk ``writer`` built (if any row), then submit it."""
        chunk = await anyio.to_thread.run_sync(writer.prepare)
        if chunk is None:
            return
        item = _Open(chunk)
        self.open.append(item)
        self.submitted += chunk.rows
        self.partition.requests += chunk.rows
        await self._submit(item, resumed=False)

    # submit

    async def _submit(self, item: _Open, *, resumed: bool) -> None:
        """Take a recorded chunk to ``submitted``: upload, look for it, create."""
        chunk = item.chunk
        if resumed or chunk.state == "uploaded":
            found = await self._find(chunk)
            if found is not None:
                item.chunk = await self._record(chunk, "submitted", batch_id=found.id)
                item.info = found
                log.info("%s: found its batch %s at the provider", chunk.name, found.id)
                return
        path = self.ledger.requests_path(chunk.number)
        if self.client.uploads and chunk.state == "prepared":
            name = f"aibatch-{self.job}-{chunk.number:08d}.jsonl"
            file_id = await self._api(lambda: self.client.upload(path, name))
            chunk = item.chunk = await self._record(chunk, "uploaded", file_id=file_id)
        metadata = {"aibatch_job": self.job, "aibatch_chunk": str(chunk.number)}
        for _ in range(max(1, self.spec.retry.attempts)):
            try:
                info = await self.client.create(path, chunk.file_id, metadata)
            except Unauthorized:
                raise
            except ProviderError as exc:
                if _refused(exc):  # the service answered no: nothing was created
                    await self._fail_chunk(item, exc)
                    return
                # No answer, or a 5xx: it may have been created. Look before trying again.
                log.warning("%s: creating its batch failed (%s); checking", chunk.name, exc)
                await anyio.sleep(self.spec.retry.backoff(1))
                found = await self._find(chunk)
                if found is not None:
                    info = found
                else:
                    continue
            item.chunk = await self._record(
                chunk, "submitted", batch_id=info.id, status=info.status
            )
            item.info = info
            log.info("%s: %d requests submitted as batch %s", chunk.name, chunk.rows, info.id)
            return
        raise TransientError(f"{chunk.name}: its batch could not be created; run again")

    async def _find(self, chunk: Chunk) -> BatchInfo | None:
        """The provider's batch of ``chunk``, if one was created but not recorded."""
        since = chunk.prepared_at - 300.0  # clocks differ
        recent = await self._api(lambda: self.client.recent(since))
        if self.client.finds_by_metadata:
            for info in recent:
                if info.metadata.get("aibatch_job") == self.job and info.metadata.get(
                    "aibatch_chunk"
                ) == str(chunk.number):
                    return info
            return None
        known = {c.batch_id for c in await anyio.to_thread.run_sync(self.ledger.chunks)}
        candidates = [i for i in recent if i.total == chunk.rows and i.id not in known]
        if len(candidates) == 1:
            # Its results are matched by custom_id: a stranger's batch answers none of
            # this chunk's rows, which are then sent again.
            log.warning(
                "%s: adopting batch %s (created since the chunk was recorded, with as many"
                " requests); its results are checked against the chunk's rows",
                chunk.name,
                candidates[0].id,
            )
            return candidates[0]
        if candidates:
            log.warning(
                "%s: %d batches at the provider could be this chunk's; submitting it anew",
                chunk.name,
                len(candidates),
            )
        return None

    async def _fail_chunk(self, item: _Open, exc: ProviderError) -> None:
        """The service refused the chunk: its rows fail (or retry) as one request would."""
        log.warning("%s: the provider refused the batch: %s", item.chunk.name, exc)
        keys = await anyio.to_thread.run_sync(self.ledger.keys, item.chunk)
        items = {custom_id(int(k["row_key"]), int(k["request_hash"])): exc for k in keys}
        await self._store(item, keys, {cid: (None, e) for cid, e in items.items()})

    # wait

    async def _wait(self) -> None:
        began = time.monotonic()
        interval = FIRST_POLL
        while True:
            for item in list(self.open):
                if item.chunk.state != "submitted":
                    continue
                batch_id = item.chunk.batch_id
                assert batch_id is not None
                info = await self._api(functools.partial(self.client.get, batch_id))
                item.info = info
                if (info.status, info.finished) != (item.chunk.status, item.chunk.finished):
                    item.chunk = await self._record(
                        item.chunk,
                        "submitted",
                        status=info.status,
                        finished=info.finished,
                        failed=info.failed,
                    )
                if info.ended:
                    await self._collect(item, info)
            if (self.retry or len(self.deferred)) and not self._closed() and self._settled:
                self._settled = False
                retry, self.retry = self.retry, {}
                deferred, self.deferred = self.deferred, np.empty(0, np.int64)
                attempts = {**self.deferred_attempts, **retry}
                rows = np.union1d(deferred, np.array(sorted(retry), np.int64))
                await self._build(rows, attempts)
                continue
            self._progress()
            if not self.open or self.spec.no_wait or self._stopped():
                return
            max_wait = self.spec.max_wait
            if max_wait is not None and time.monotonic() - began >= max_wait:
                log.warning(
                    "stopped waiting after %g s (--max-wait); %d rows are still in batches:"
                    " run the same command again to collect them",
                    max_wait,
                    self.pending(),
                )
                return
            await self._sleep(interval)
            interval = min(interval * 1.5, self.spec.poll_interval)

    async def _sleep(self, seconds: float) -> None:
        stop = self.partition.stop
        if stop is None:
            await anyio.sleep(seconds)
            return
        with anyio.move_on_after(seconds):
            await stop.wait()

    def _stopped(self) -> bool:
        """Whether to stop waiting (Ctrl-C): the batches go on at the provider."""
        stop = self.partition.stop
        return stop is not None and stop.is_set()

    def _closed(self) -> bool:
        """Whether to build no more chunks: stopped, or the budget reached."""
        return self._stopped() or self.partition.budget_stopped

    # collect

    async def _collect(self, item: _Open, info: BatchInfo) -> None:
        chunk = item.chunk
        keys = await anyio.to_thread.run_sync(self.ledger.keys, chunk)
        answers: dict[str, tuple[Completion | None, ProviderError | None]] = {}
        if info.error is not None:
            failed = BatchFailed(f"the provider failed batch {info.id}: {info.error}")
            for k in keys:
                answers[custom_id(int(k["row_key"]), int(k["request_hash"]))] = (None, failed)
        else:
            async for result in self.client.results(info):
                answers[result.custom_id] = (result.completion, result.error)
        await self._store(item, keys, answers)

    async def _store(
        self,
        item: _Open,
        keys: np.ndarray,
        answers: dict[str, tuple[Completion | None, ProviderError | None]],
    ) -> None:
        """Store the chunk's results, queue the rows to retry, mark it collected."""
        partition, chunk = self.partition, item.chunk
        prompts = await anyio.to_thread.run_sync(self._prompts, chunk)
        row_keys = partition.keys.row_keys
        loc = self.plan.loc
        now = time.time()
        results: list[RowResult] = []
        retry: dict[int, int] = {}
        costs: list[float] = []
        for index, k in enumerate(keys):
            row, key, request = int(k["row"]), int(k["row_key"]), int(k["request_hash"])
            attempt = int(k["attempt"]) + 1
            mine = 0 <= row < len(row_keys) and int(row_keys[row]) == key
            if mine and loc[row] >= 0:
                continue  # stored already (a run that stopped before marking the chunk)
            completion, error = answers.get(custom_id(key, request), (None, None))
            if completion is None and error is None:
                error = TransientError("the batch returned no result for this request")
            cost = None
            if completion is not None:
                cost = partition._answered(completion)
                if cost is not None:
                    costs.append(cost)
                if partition.structured is not None:
                    try:
                        partition.structured.check(completion.text)
                    except InvalidOutput as exc:
                        completion, error = None, exc
            # A row of this run's plan, still to send (an input rewritten since the
            # chunk was made has other keys: its answers are stored, for a later run).
            here = mine and loc[row] == SEND
            if (
                error is not None
                and here
                and _retryable(error)
                and attempt < self.spec.retry.attempts
                and not self._closed()
            ):
                retry[row] = attempt
                continue
            result = _row_result(row, key, request, prompts[index], attempt, chunk, now)
            _fill(result, completion, error)
            result.cost_usd = cost
            results.append(result)
            if result.latency_ms is not None:  # a batch's turnaround
                partition.latencies.append(result.latency_ms)
        locs = await anyio.to_thread.run_sync(self._write, results) if results else None
        if locs is not None:
            for result, where in zip(results, locs.tolist(), strict=True):
                row = result.row
                if (
                    0 <= row < len(row_keys)
                    and int(row_keys[row]) == result.row_key
                    and loc[row] == SEND
                ):
                    loc[row] = where
        budget = partition.budget
        if budget is not None:
            budget.release(chunk.reserved, math.fsum(costs))
        self.stored += len(results)
        failed = sum(1 for r in results if r.status is RowStatus.ERROR)
        progress = partition.progress
        progress.failed += failed
        progress.ok += len(results) - failed
        item.chunk = await anyio.to_thread.run_sync(self.ledger.collected, chunk)
        self.open.remove(item)
        self.retry.update(retry)
        self._settled = True  # budget freed, or rows to retry: worth building again
        log.info(
            "%s: %d results stored (%d failed), %d to send again",
            chunk.name,
            len(results),
            failed,
            len(retry),
        )
        self._progress()

    def _write(self, results: Sequence[RowResult]) -> np.ndarray:
        return self.checkpoint.write_part(results)

    def _prompts(self, chunk: Chunk) -> list[str]:
        path = self.ledger.prompts_path(chunk.number)
        try:
            lines = path.read_bytes().splitlines()
        except FileNotFoundError:
            lines = []
        prompts = [json.loads(line) for line in lines]
        if len(prompts) != chunk.rows:  # removed, or cut: the column is informational
            return [""] * chunk.rows
        return [p if isinstance(p, str) else "" for p in prompts]

    # helpers

    async def _api(self, call: Callable[[], Awaitable[T]]) -> T:
        """A Batch API call, retried on faults that may pass; its last error raised."""
        outcome = await call_with_retries(call, self.spec.retry)
        if outcome.error is not None:
            raise outcome.error
        assert outcome.value is not None
        return outcome.value

    async def _record(self, chunk: Chunk, state: str, **changes: Any) -> Chunk:
        return await anyio.to_thread.run_sync(
            lambda: self.ledger.update(chunk, state=state, **changes)
        )

    def _progress(self) -> None:
        partition = self.partition
        progress = partition.progress
        in_batches = sum(item.info.finished for item in self.open if item.info is not None)
        progress.done = self.stored + in_batches
        progress.batches = len(self.open)
        progress.cost_usd = partition._cost_usd() if partition.prices.price is not None else None
        partition.on_progress(progress)


@dataclass(frozen=True, slots=True)
class _Line:
    row: int
    row_key: int
    request_hash: int
    attempt: int
    data: bytes
    prompt: bytes
    reserved: float


class _ChunkWriter:
    """Writes one chunk's request, prompt and rows files as lines arrive."""

    def __init__(self, send: BatchSend, number: int) -> None:
        self.send = send
        self.number = number
        self.rows: list[tuple[int, int, int, int]] = []
        self.bytes = 0
        self.reserved = 0.0
        self._requests: AtomicFile | None = None
        self._prompts: AtomicFile | None = None

    def full(self, size: int) -> bool:
        """Whether a line of ``size`` bytes no longer fits."""
        limit = self.send.client.max_bytes
        return bool(self.rows) and (len(self.rows) >= self.send.size or self.bytes + size > limit)

    def add(self, line: _Line) -> None:
        ledger = self.send.ledger
        if self._requests is None:
            ledger.ensure()
            self._requests = AtomicFile(ledger.requests_path(self.number))
            self._prompts = AtomicFile(ledger.prompts_path(self.number))
        assert self._prompts is not None
        self._requests.file.write(line.data)
        self._prompts.file.write(line.prompt)
        self.rows.append((line.row, line.row_key, line.request_hash, line.attempt))
        self.bytes += len(line.data)
        self.reserved += line.reserved

    def prepare(self) -> Chunk | None:
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
        )
        return self.send.ledger.prepare(chunk, keys)


def _refused(exc: ProviderError) -> bool:
    """Whether the service answered the create call with a refusal (nothing created)."""
    status = exc.http_status
    return isinstance(exc, PermanentError) and status is not None and 400 <= status < 500


def _retryable(error: ProviderError) -> bool:
    return isinstance(error, TransientError | InvalidOutput)


def _row_result(
    row: int, key: int, request: int, prompt: str, attempt: int, chunk: Chunk, now: float
) -> RowResult:
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


def _fill(result: RowResult, completion: Completion | None, error: ProviderError | None) -> None:
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
