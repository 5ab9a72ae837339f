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

import functools
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import numpy as np

from ..errors import (
    BatchFailed,
    CheckpointError,
    InvalidOutput,
    ProviderError,
    TransientError,
    Unauthorized,
)
from ..io.inputs import Batch
from ..jobs.batches import Chunk, Ledger, custom_id, requests_digest
from ..jobs.checkpoint import SEND, Checkpoint, Plan
from ..providers.batch import BatchClient, BatchInfo, batch_client
from ..types import Completion, RowResult, RowStatus
from .batch_chunks import ChunkWriter, Line, fill, refused, retryable, row_result
from .batch_state import held_rows
from .retry import call_with_retries

if TYPE_CHECKING:
    from .engine import _Partition

log = logging.getLogger(__name__)

__all__ = ["BatchSend"]

#: the first wait between polls (seconds); each wait is 1.5 times the one before
FIRST_POLL = 0.5
_STEP = 256  # rows whose requests (and images) are built at once
T = TypeVar("T")


@dataclass(slots=True)
class _Open:
    """A chunk in flight, its rows, and what the provider last said of it."""

    chunk: Chunk
    keys: np.ndarray
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
        self.attempts: dict[int, int] = {}  # row key -> attempts made, of rows to send again
        self.submitted = 0  # requests submitted by this run
        self.stored = 0  # rows this run stored
        self.job = ""
        self._index: tuple[np.ndarray, np.ndarray] | None = None  # sorted row keys, rows

    async def run(self) -> int:
        """Send what the plan says to, wait as the job says; return the rows left pending.

        Raises:
            ProviderError: a Batch API call failed past its retries (what was recorded
                is safe: the next run resumes).
            Unauthorized: the key was refused.
            CheckpointError: the ledger is damaged, or its batches went elsewhere.
        """
        if self.spec.restart:
            await anyio.to_thread.run_sync(self.ledger.reset)
        self.job = await anyio.to_thread.run_sync(self.ledger.job_id)
        for chunk in await anyio.to_thread.run_sync(self._resumable):
            keys = await anyio.to_thread.run_sync(self.ledger.keys, chunk)
            self.open.append(_Open(chunk, keys))
        budget = self.partition.budget
        if budget is not None:
            for item in self.open:
                budget.hold(item.chunk.reserved, already=True)
        if self.open:
            rows = sum(item.chunk.rows for item in self.open)
            log.info("%d batches of an earlier run are in flight (%d rows)", len(self.open), rows)
        for item in list(self.open):  # recorded, maybe not submitted: find, else submit
            if item.chunk.state != "submitted":
                await self._submit(item, resumed=True)
        await self._loop()
        return self.pending()

    def _resumable(self) -> list[Chunk]:
        """The ledger's open chunks, once they are known to be this run's to collect."""
        provider = self.partition.provider
        self.ledger.restore_orphans(
            provider=provider.name, base_url=provider.base_url, model=self.partition.model
        )
        chunks = []
        for chunk in self.ledger.open_chunks():
            if (chunk.provider, chunk.base_url) == (provider.name, provider.base_url):
                chunks.append(chunk)
            elif self.spec.emulate and chunk.provider == provider.name:
                # The built-in emulator of an earlier run is gone, and its batches with it.
                log.warning(
                    "%s was a batch of an earlier run's built-in emulator, gone with it;"
                    " its rows are sent again",
                    chunk.name,
                )
                self.ledger.collected(chunk)
            else:
                raise CheckpointError(
                    f"{chunk.name} of this job is a batch at {chunk.provider} {chunk.base_url},"
                    f" but this run sends to {provider.name} {provider.base_url}: run it with"
                    " that provider and --base-url to collect it (or --restart to forget it)"
                )
        return chunks

    def pending(self) -> int:
        """Rows of this partition in batches not collected yet."""
        return sum(item.chunk.rows for item in self.open)

    # the loop

    async def _loop(self) -> None:
        began = time.monotonic()
        interval = FIRST_POLL
        build = True  # rows to send may be in no chunk yet
        while True:
            if await self._poll():  # budget released, rows to retry: worth building again
                build = True
            if build and not self._closed():
                build = False
                await self._build(self._unsent())
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

    async def _poll(self) -> bool:
        """Ask about each submitted batch once; collect those that ended. Any collected?"""
        collected = False
        for item in list(self.open):
            if self._stopped():
                break
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
                collected = True
        return collected

    def _unsent(self) -> np.ndarray:
        """Rows to send that no open chunk holds."""
        keys = self.partition.keys
        chunks = [item.keys for item in self.open]
        held = held_rows(keys.row_keys, keys.request_hashes, chunks, dedupe=self.spec.dedupe)
        return np.flatnonzero((self.plan.loc == SEND) & ~held)

    async def _sleep(self, seconds: float) -> None:
        stop = self.partition.stop
        if stop is None:
            await anyio.sleep(seconds)
            return
        with anyio.move_on_after(seconds):
            await stop.wait()

    def _stopped(self) -> bool:
        """Whether to stop (Ctrl-C): the batches go on at the provider."""
        stop = self.partition.stop
        return stop is not None and stop.is_set()

    def _closed(self) -> bool:
        """Whether to build no more chunks: stopped, or the budget reached."""
        return self._stopped() or self.partition.budget_stopped

    # build

    async def _build(self, rows: np.ndarray) -> None:
        """Write ``rows`` (sorted row numbers) into chunks and submit each as it fills.

        Rows the budget cannot cover while chunks in flight hold some of it stay to
        send: they are built once a chunk settles.
        """
        if not len(rows) or self._closed():
            return
        writer = ChunkWriter(self, await anyio.to_thread.run_sync(self.ledger.next_number))
        for batch in self.partition.source.batches():
            n = batch.data.num_rows
            lo, hi = np.searchsorted(rows, [batch.start, batch.start + n])
            for first in range(int(lo), int(hi), _STEP):
                if self._stopped():  # Ctrl-C: submit nothing more
                    writer.discard()
                    return
                part = rows[first : min(first + _STEP, int(hi))] - batch.start
                lines = await anyio.to_thread.run_sync(self._lines, batch, part)
                for line in lines:
                    if line is None:  # the budget cannot cover it now
                        await self._finish(writer)
                        budget = self.partition.budget
                        if budget is not None and budget.reached:  # nothing held: no room
                            self.partition._budget_reached(budget.reached_error())
                        return
                    if writer.full(len(line.data)):
                        await self._finish(writer)
                        writer = ChunkWriter(self, writer.number + 1)
                        if self._stopped():
                            return
                    await anyio.to_thread.run_sync(writer.add, line)
            if hi >= len(rows):
                break
        await self._finish(writer)

    def _lines(self, batch: Batch, rows: np.ndarray) -> list[Line | None]:
        """The request lines of ``batch``'s ``rows``, checked against the scan.

        ``None`` ends the list where the budget cannot cover a row.
        """
        partition = self.partition
        jobs = partition._jobs(batch, rows, self.plan)
        out: list[Line | None] = []
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
                Line(
                    job.row,
                    job.row_key,
                    job.request_hash,
                    self.attempts.get(job.row_key, 0),
                    data,
                    prompt.encode() + b"\n",
                    reserved,
                )
            )
        return out

    async def _finish(self, writer: ChunkWriter) -> None:
        """Record the chunk ``writer`` built (if any row), then submit it."""
        if self._stopped():  # Ctrl-C while it was built: it was never recorded
            await anyio.to_thread.run_sync(writer.discard)
            return
        prepared = await anyio.to_thread.run_sync(writer.prepare)
        if prepared is None:
            return
        chunk, keys = prepared
        item = _Open(chunk, keys)
        self.open.append(item)
        self.submitted += chunk.rows
        self.partition.requests += chunk.rows
        await self._submit(item, resumed=False)

    # submit

    async def _submit(self, item: _Open, *, resumed: bool) -> None:
        """Take a recorded chunk to ``submitted``: upload, look for it, create."""
        chunk = item.chunk
        if (resumed or chunk.state == "uploaded") and await self._adopt(item):
            return
        path = self.ledger.requests_path(chunk.number)
        if resumed and (chunk.state == "prepared" or not self.client.uploads):
            await anyio.to_thread.run_sync(self.ledger.check_requests, chunk)
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
                if refused(exc):  # the service answered no: nothing was created
                    await self._fail_chunk(item, exc)
                    return
                # No answer, or a 5xx: it may have been created. Look before trying again.
                log.warning("%s: creating its batch failed (%s); checking", chunk.name, exc)
                await anyio.sleep(self.spec.retry.backoff(1))
                if await self._adopt(item):
                    return
                continue
            item.chunk = await self._record(
                chunk, "submitted", batch_id=info.id, status=info.status
            )
            item.info = info
            log.info("%s: %d requests submitted as batch %s", chunk.name, chunk.rows, info.id)
            return
        raise TransientError(f"{chunk.name}: its batch could not be created; run again")

    async def _adopt(self, item: _Open) -> bool:
        """Record the provider's batch of ``item`` if one was created but not recorded."""
        chunk = item.chunk
        since = chunk.prepared_at - 300.0  # clocks differ
        recent = await self._api(lambda: self.client.recent(since))
        if self.client.finds_by_metadata:
            mine = {"aibatch_job": self.job, "aibatch_chunk": str(chunk.number)}
            found = [i for i in recent if all(i.metadata.get(k) == v for k, v in mine.items())]
        else:
            known = {c.batch_id for c in await anyio.to_thread.run_sync(self.ledger.chunks)}
            found = [i for i in recent if i.total == chunk.rows and i.id not in known]
            if len(found) > 1:
                log.warning(
                    "%s: %d batches at the provider could be this chunk's; submitting it anew",
                    chunk.name,
                    len(found),
                )
                return False
            if found:
                # Its results are matched by custom_id: a stranger's batch answers none
                # of this chunk's rows, which are then sent again (see _store).
                log.warning(
                    "%s: adopting batch %s (created since the chunk was recorded, with as"
                    " many requests); its results are checked against the chunk's rows",
                    chunk.name,
                    found[0].id,
                )
        if not found:
            return False
        info = found[0]
        item.chunk = await self._record(
            chunk,
            "submitted",
            batch_id=info.id,
            status=info.status,
            adopted=not self.client.finds_by_metadata,
        )
        item.info = info
        log.info("%s: found its batch %s at the provider", chunk.name, info.id)
        return True

    async def _fail_chunk(self, item: _Open, exc: ProviderError) -> None:
        """The service refused the chunk: its rows fail (or retry) as one request would."""
        log.warning("%s: the provider refused the batch: %s", item.chunk.name, exc)
        answers = {
            custom_id(int(k["row_key"]), int(k["request_hash"])): (None, exc) for k in item.keys
        }
        await self._store(item, answers)

    # collect

    async def _collect(self, item: _Open, info: BatchInfo) -> None:
        answers: dict[str, tuple[Completion | None, ProviderError | None]] = {}
        if info.error is not None:
            failed = BatchFailed(f"the provider failed batch {info.id}: {info.error}")
            for k in item.keys:
                answers[custom_id(int(k["row_key"]), int(k["request_hash"]))] = (None, failed)
        else:

            async def download() -> dict[str, tuple[Completion | None, ProviderError | None]]:
                found = {}
                async for result in self.client.results(info):
                    found[result.custom_id] = (result.completion, result.error)
                return found

            answers = await self._api(download)  # a cut download is read again
        ours = {custom_id(int(k["row_key"]), int(k["request_hash"])) for k in item.keys}
        if item.chunk.adopted and not ours & answers.keys():
            log.warning(
                "%s: batch %s answered none of its requests: not this job's; its rows are"
                " sent again",
                item.chunk.name,
                info.id,
            )
            await self._done(item)
            return
        await self._store(item, answers)

    async def _store(
        self,
        item: _Open,
        answers: Mapping[str, tuple[Completion | None, ProviderError | None]],
    ) -> None:
        """Store the chunk's results, send again the rows to retry, mark it collected."""
        partition, chunk, keys = self.partition, item.chunk, item.keys
        prompts = await anyio.to_thread.run_sync(self._prompts, chunk)
        rows = self._rows_of(keys["row_key"])  # where each row is in this run's input
        others = [i.keys["row_key"] for i in self.open if i is not item]
        # Rows another chunk holds were sent again already (this one was collected, but
        # not recorded so, before a crash): that chunk's answer is theirs.
        elsewhere = np.isin(keys["row_key"], np.concatenate(others)) if others else None
        loc = self.plan.loc
        now = time.time()
        results: list[RowResult] = []
        retry: list[int] = []
        costs: list[float] = []
        uncosted = False
        for index, k in enumerate(keys):
            key, request = int(k["row_key"]), int(k["request_hash"])
            attempt = int(k["attempt"]) + 1
            row = int(rows[index])
            if (row >= 0 and loc[row] >= 0) or (elsewhere is not None and elsewhere[index]):
                continue  # stored, or sent again, already (by a run that stopped after)
            completion, error = answers.get(custom_id(key, request), (None, None))
            if completion is None and error is None:
                error = TransientError("the batch returned no result for this request")
            cost = None
            if completion is not None:
                cost = partition._answered(completion)
                if cost is None:
                    uncosted = True
                else:
                    costs.append(cost)
                if partition.structured is not None:
                    try:
                        partition.structured.check(completion.text)
                    except InvalidOutput as exc:
                        completion, error = None, exc
            if (
                error is not None
                and row >= 0
                and retryable(error)
                and attempt < self.spec.retry.attempts
                and not self._closed()
            ):
                self.attempts[key] = attempt
                retry.append(row)
                continue
            # A row no longer in the input (rewritten since) is stored all the same, at
            # the row it was: a later run may use its answer.
            where = row if row >= 0 else int(k["row"])
            result = row_result(where, key, request, prompts[index], attempt, chunk, now)
            fill(result, completion, error)
            result.cost_usd = cost
            results.append(result)
            if result.latency_ms is not None:  # a batch's turnaround
                partition.latencies.append(result.latency_ms)
        if results:
            locs = await anyio.to_thread.run_sync(self._write, results)
            self._place(results, locs)
        budget = partition.budget
        if budget is not None:  # an answer without usage counts at its worst case
            budget.release(chunk.reserved, chunk.reserved if uncosted else math.fsum(costs))
        self.stored += len(results)
        failed = sum(1 for r in results if r.status is RowStatus.ERROR)
        progress = partition.progress
        progress.failed += failed
        progress.ok += len(results) - failed
        # The rows to retry go into a new chunk before this one is marked collected: a
        # crash in between finds them in flight, and never sends them a time too many.
        await self._build(np.array(sorted(retry), np.int64))
        await self._done(item)
        log.info(
            "%s: %d results stored (%d failed), %d to send again",
            chunk.name,
            len(results),
            failed,
            len(retry),
        )
        self._progress()

    async def _done(self, item: _Open) -> None:
        item.chunk = await anyio.to_thread.run_sync(self.ledger.collected, item.chunk)
        self.open.remove(item)

    def _rows_of(self, row_keys: np.ndarray) -> np.ndarray:
        """The row of this run's input with each row key, or -1."""
        if self._index is None:
            keys = self.partition.keys.row_keys
            order = np.argsort(keys, kind="stable")
            self._index = (keys[order], order)
        ordered, order = self._index
        if not len(ordered):
            return np.full(len(row_keys), -1, np.int64)
        where = np.minimum(np.searchsorted(ordered, row_keys), len(ordered) - 1)
        return np.where(ordered[where] == row_keys, order[where], -1).astype(np.int64)

    def _place(self, results: Sequence[RowResult], locs: np.ndarray) -> None:
        """Record in the plan where the rows to send were stored.

        A row whose row key matches takes its own answer; with dedupe, a row asking the
        same request takes an ok answer too (as a re-run would find it).
        """
        loc = self.plan.loc
        keys = self.partition.keys
        result_keys = np.array([r.row_key for r in results], np.uint64)
        rows = self._rows_of(result_keys)
        own = (rows >= 0) & (loc[np.maximum(rows, 0)] == SEND)
        loc[rows[own]] = locs[own]
        if not self.spec.dedupe:
            return
        ok = np.array([r.status is RowStatus.OK for r in results], bool)
        if not ok.any():
            return
        hashes = np.array([r.request_hash for r in results], np.uint64)[ok]
        order = np.argsort(hashes, kind="stable")
        hashes, ok_locs = hashes[order], locs[ok][order]
        waiting = np.flatnonzero(loc == SEND)
        asked = keys.request_hashes[waiting]
        where = np.minimum(np.searchsorted(hashes, asked), len(hashes) - 1)
        same = hashes[where] == asked
        loc[waiting[same]] = ok_locs[where[same]]

    def _write(self, results: Sequence[RowResult]) -> np.ndarray:
        return self.checkpoint.write_part(results)

    def _prompts(self, chunk: Chunk) -> list[str]:
        """The chunk's sent prompts; blank, with a warning, if their file was damaged.

        They only fill the ``sent_prompt`` column: a blank one is better than another
        row's beside this row's answer.
        """
        path = self.ledger.prompts_path(chunk.number)
        try:
            data = path.read_bytes()
        except OSError:
            data = b""
        digest = requests_digest()
        digest.update(data)
        try:
            if chunk.prompts_digest and digest.hexdigest() != chunk.prompts_digest:
                raise ValueError("its bytes do not match its record")
            prompts = [json.loads(line) for line in data.splitlines()]
            if len(prompts) != chunk.rows:
                raise ValueError("it has not a prompt for each row")
        except ValueError as exc:
            log.warning(
                "%s: the sent prompts file %s is damaged (%s): left blank", chunk.name, path, exc
            )
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
