"""run_partition(): the one fan-out of aibatch, for one partition of a job.

A partition is an input source and its own output file and checkpoint. The engine goes
over it in four steps, reading the input in bounded batches each time:

1. *scan*: build every row's request and keys; any bad row stops the run here, before
   anything is sent;
2. *plan*: against the checkpoint, decide per row: reuse, copy an identical request's
   answer, skip (empty prompt), or send;
3. *send*: a reader task feeds a bounded stream; worker tasks take rows from it and send
   them under a ``CapacityLimiter`` (and an optional rate limiter), retrying as the
   ``RetryPolicy`` says; one :class:`~aibatch.runner.writer.Writer` task owns the
   checkpoint and stores finished rows every 200 ms;
4. *write*: join each input batch with its stored results into the Parquet output.

The input is read anew at each step, so each step checks that it reads what the scan
read: every row the send step sends must hash to the request the scan keyed it by, and
the input source itself refuses a file whose size, time or content changed
(:class:`~aibatch.errors.InputChanged`). A row is never stored, nor written out, beside
another row's request.

The local runner calls it once; a distributed driver calls it once per partition.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pyarrow as pa
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._version import __version__
from ..errors import (
    BudgetReached,
    InputChanged,
    InputError,
    InvalidOutput,
    ProviderError,
    Unauthorized,
    plain_errors,
)
from ..io.inputs import Batch, InputSource
from ..io.output import OutputCounts, OutputWriter, assemble, output_schema
from ..jobs.checkpoint import (
    SEND,
    Checkpoint,
    Plan,
    checkpoint_dir,
    has_batches,
    row_key,
)
from ..jobs.cost import Budget, PriceLookup, look_up_price, max_input_tokens
from ..jobs.schema import StructuredOutput
from ..jobs.spec import JobSpec
from ..providers.base import AsyncGeneratorProvider
from ..types import ChatRequest, Completion, RowResult, RowStatus
from .concurrency import AdaptiveLimit
from .latency import Latencies
from .prompts import PromptBuilder
from .ratelimit import RateLimiter
from .retry import call_with_retries
from .streams import receive, send
from .summary import Summary
from .writer import Writer

log = logging.getLogger(__name__)

__all__ = ["Progress", "run_partition"]


@dataclass(slots=True)
class Progress:
    """Live counts of a running partition, handed to the progress callback."""

    rows: int = 0
    to_send: int = 0
    done: int = 0
    ok: int = 0
    failed: int = 0
    reused: int = 0
    skipped: int = 0
    deduped: int = 0
    concurrency: int = 0
    cost_usd: float | None = None  # what this run's answers cost so far, when known
    batches: int | None = None  # --batch-api: the batches in flight at the provider
    started: float = field(default_factory=time.monotonic)

    @property
    def rate(self) -> float:
        """Rows sent per second so far."""
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds until every row is sent, at the current rate."""
        rate = self.rate
        return (self.to_send - self.done) / rate if rate > 0 else None


@dataclass(frozen=True, slots=True)
class _Keys:
    row_keys: np.ndarray
    request_hashes: np.ndarray
    skipped: np.ndarray


_NONE = np.empty(0, np.uint64)  # keys dropped once the plan is made


@dataclass(frozen=True, slots=True)
class _Job:
    row: int
    row_key: int
    request_hash: int
    request: ChatRequest


ProgressCallback = Callable[[Progress], None]


async def run_partition(
    source: InputSource,
    spec: JobSpec,
    provider: AsyncGeneratorProvider,
    *,
    output: Path,
    service: str,
    on_progress: ProgressCallback | None = None,
    stop: anyio.Event | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Summary:
    """Run one partition from input to Parquet output.

    Args:
        source: the partition's rows.
        spec: the job.
        provider: an open provider.
        output: the partition's output file; its checkpoint sits beside it.
        service: the identity of the service answering, part of every request's hash.
        on_progress: called with live counts a few times a second.
        stop: when set, stop starting requests, let those in flight finish for
            ``spec.grace`` seconds, store what finished, and return ``interrupted``.
        metadata: more to record in the output file's ``aibatch`` metadata.

    Raises:
        InputError: a bad row (before anything is sent).
        OutputError, CheckpointError: the output or the checkpoint cannot be written.
    """
    partition = _Partition(source, spec, provider, output, service, on_progress, stop)
    partition.metadata = dict(metadata or {})
    with plain_errors():
        return await partition.run()


class _Partition:
    def __init__(
        self,
        source: InputSource,
        spec: JobSpec,
        provider: AsyncGeneratorProvider,
        output: Path,
        service: str,
        on_progress: ProgressCallback | None,
        stop: anyio.Event | None,
    ) -> None:
        self.source = source
        self.spec = spec
        self.provider = provider
        self.output = output
        self.service = service
        self.on_progress = on_progress or (lambda progress: None)
        self.stop = stop
        self.model = type(provider).get_model(spec.model)
        self.builder = PromptBuilder(spec, self.model, source.name)
        self.structured = StructuredOutput(spec.schema) if spec.schema is not None else None
        self.progress = Progress(concurrency=spec.concurrency)
        self.adaptive = AdaptiveLimit(spec.concurrency) if spec.adaptive else None
        self.limiter = anyio.CapacityLimiter(
            self.adaptive.current if self.adaptive else spec.concurrency
        )
        self.rate = RateLimiter(spec.rps) if spec.rps else None
        self.stopping = False
        self.budget = Budget(spec.max_cost) if spec.max_cost is not None else None
        self.budget_stopped = False
        default = type(provider).request_defaults.get("max_tokens")
        self.answer_bound = spec.max_tokens or default  # the worst case needs a longest answer
        self.prices = PriceLookup(None, "")  # looked up in run(), off the event loop
        self.cost = 0.0  # what this run's answers cost, by the usage each reported
        self.answers = 0  # answers this run got, retries that were billed included
        self.uncosted = 0  # of them, those without a cost (no usage, or no price)
        self.requests = 0
        self.garbage_lines = 0
        self.latencies = Latencies()
        self._reader_scope = anyio.CancelScope()
        self._senders: anyio.CancelScope | None = None
        self._read_error: InputError | None = None
        self.metadata: dict[str, Any] = {}
        self.batch_pending = 0  # rows in Batch API batches not ended (--batch-api)

    async def run(self) -> Summary:
        began = time.monotonic()
        if self.source.columns:
            self.builder.check_columns(self.source.columns)
        keys = await anyio.to_thread.run_sync(self._scan)
        self.builder.check_columns(self.source.columns)
        typed = self.structured.arrow if self.structured is not None else None
        schema = output_schema(self.source.schema(), typed)
        checkpoint = Checkpoint(checkpoint_dir(self.output), restart=self.spec.restart)
        await anyio.to_thread.run_sync(checkpoint.__enter__)
        try:
            plan = checkpoint.plan(
                keys.row_keys,
                keys.request_hashes,
                keys.skipped,
                dedupe=self.spec.dedupe,
                retry_failed=self.spec.retry_failed,
            )
            if not self.spec.batch_api:  # (the Batch API's collector looks rows up by key)
                # The send step needs the request hash of the rows it sends, and no more.
                keys = _Keys(_NONE, keys.request_hashes if plan.to_send else _NONE, _NONE)
            self.keys = keys
            summary = Summary(
                input=self.source.name,
                output=str(self.output),
                provider=self.provider.name,
                model=self.model,
                rows=len(plan.loc),
                reused=plan.reused,
                deduped=plan.deduped,
            )
            self.progress = Progress(
                rows=summary.rows,
                to_send=plan.to_send,
                reused=plan.reused,
                skipped=plan.skipped,
                deduped=plan.deduped,
                concurrency=self.spec.concurrency,
            )
            log.info(
                "%d rows: %d to send, %d reused, %d duplicates, %d skipped",
                summary.rows,
                plan.to_send,
                plan.reused,
                plan.deduped,
                plan.skipped,
            )
            self.on_progress(self.progress)
            # The Batch API's modules load only for a job that uses or used it.
            if self.spec.batch_api:  # also with nothing to send: earlier batches to collect
                from .batch import BatchSend

                self.prices = await anyio.to_thread.run_sync(self._look_up_price)
                self.batch_pending = await BatchSend(self, plan, checkpoint).run()
            elif plan.to_send:
                if has_batches(checkpoint.directory):
                    from .batch_state import check_no_batches

                    await anyio.to_thread.run_sync(
                        functools.partial(check_no_batches, checkpoint, restart=self.spec.restart)
                    )
                self.prices = await anyio.to_thread.run_sync(self._look_up_price)
                await self._send(plan, checkpoint)
            del self.keys
            summary.sent = self.progress.done
            summary.requests = self.requests
            summary.concurrency = int(self.limiter.total_tokens)
            summary.garbage_lines = self.garbage_lines
            summary.cost_usd, summary.cost_note = self._cost_usd(), self._cost_note()
            summary.max_cost = self.spec.max_cost
            summary.token_requests = self.provider.stats.get("token_requests", 0)
            summary.latency_p50_ms = self.latencies.percentile(50)
            summary.latency_p95_ms = self.latencies.percentile(95)
            stopped = self.stop is not None and self.stop.is_set()
            summary.batch_pending = self.batch_pending
            if not plan.complete() and self.batch_pending and not stopped:
                pass  # submitted, not finished: the next run collects and writes the output
            elif not plan.complete() and (stopped or not self.budget_stopped):
                summary.interrupted = True
            else:  # done, or the budget stopped it: the rows not sent are written "unsent"
                summary.budget_reached = self.budget_stopped
                await anyio.to_thread.run_sync(self._write, plan, checkpoint, schema, summary)
        finally:
            checkpoint.close()
        summary.wall_s = time.monotonic() - began
        self.on_progress(self.progress)
        return summary

    # 1. scan

    def _scan(self) -> _Keys:
        # Grown in place (a large array grows by remapping its pages, not by copying).
        row_keys, hashes, skipped = array("Q"), array("Q"), bytearray()
        id_hashes = array("Q")
        service, builder = self.service, self.builder
        for batch in self.source.batches():
            keys = builder.keys(batch, service)
            row_keys.frombytes(keys.row_keys.tobytes())
            hashes.frombytes(keys.request_hashes.tobytes())
            skipped += keys.skipped.tobytes()
            if keys.id_hashes is not None:
                id_hashes.frombytes(keys.id_hashes.tobytes())
        if self.spec.id_column:
            self._check_unique_ids(np.frombuffer(id_hashes, np.uint64))
        del id_hashes
        return _Keys(
            np.frombuffer(row_keys, np.uint64),
            np.frombuffer(hashes, np.uint64),
            np.frombuffer(skipped, bool),
        )

    def _check_unique_ids(self, id_hashes: np.ndarray) -> None:
        id_hashes.sort()  # in place: no copy of a hash per row
        repeated = set(id_hashes[1:][id_hashes[1:] == id_hashes[:-1]].tolist())
        if not repeated:
            return
        names: list[str] = []
        for batch in self.source.batches():
            for row_id in self.builder.ids(batch):
                if row_key(row_id, 0) in repeated and row_id not in names:
                    names.append(row_id)
            if len(names) >= 5:
                break
        more = f" and {len(repeated) - 5} more" if len(repeated) > 5 else ""
        raise InputError(
            self.source.name,
            f"ids must be unique; repeated: {', '.join(map(repr, names[:5]))}{more}",
            column=self.spec.id_column,
        )

    # 3. send

    async def _send(self, plan: Plan, checkpoint: Checkpoint) -> None:
        workers = min(self.spec.concurrency, plan.to_send)
        if self.adaptive is not None:  # near the end, a refused level is not tried again
            self.adaptive.expect(plan.to_send)
        jobs_in, jobs_out = anyio.create_memory_object_stream[_Job](workers)
        results_in, results_out = anyio.create_memory_object_stream[RowResult](workers)
        writer = Writer(checkpoint, plan, self._stored)
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.run, results_out)
            watcher = anyio.CancelScope()
            if self.stop is not None:
                tg.start_soon(self._watch_stop, self.stop, watcher)
            async with anyio.create_task_group() as senders:
                self._senders = senders.cancel_scope
                senders.start_soon(self._read, jobs_in, plan)
                with jobs_out, results_in:
                    for _ in range(workers):
                        senders.start_soon(self._work, jobs_out.clone(), results_in.clone())
            watcher.cancel()
        if self._read_error is not None:
            raise self._read_error  # only now: the answers that were in flight are stored

    async def _watch_stop(self, stop: anyio.Event, scope: anyio.CancelScope) -> None:
        with scope:
            await stop.wait()
            log.warning(
                "stopping: no new requests; waiting up to %g s for those in flight", self.spec.grace
            )
            self.stopping = True
            self._reader_scope.cancel()
            await anyio.sleep(self.spec.grace)
            if self._senders is not None:
                self._senders.cancel()

    async def _read(self, jobs: MemoryObjectSendStream[_Job], plan: Plan) -> None:
        batches = self.source.batches()
        with self._reader_scope:
            async with jobs:
                try:
                    while True:
                        batch = await anyio.to_thread.run_sync(next, batches, None)
                        if batch is None:
                            return
                        rows = np.flatnonzero(
                            plan.loc[batch.start : batch.start + batch.data.num_rows] == SEND
                        )
                        if not len(rows):
                            continue
                        if not self.builder.image_columns:
                            for job in self._jobs(batch, rows, plan):
                                await send(jobs, job)
                            continue
                        # Images are read off the loop, a few rows at a time: a batch's
                        # images all held at once could be gigabytes.
                        texts = self.builder.texts(batch)
                        step = max(1, self.spec.concurrency)
                        for first in range(0, len(rows), step):
                            part = rows[first : first + step]
                            for job in await anyio.to_thread.run_sync(
                                self._jobs, batch, part, plan, texts
                            ):
                                await send(jobs, job)
                except InputError as exc:
                    # The input changed: start no more requests, but let those in flight
                    # finish and be stored (they were checked), then stop the run.
                    self._read_error = exc
                    self.stopping = True
                except anyio.BrokenResourceError:
                    return  # every worker stopped (a refused key, a full disk): theirs is the error

    def _jobs(
        self,
        batch: Batch,
        rows: np.ndarray,
        plan: Plan,
        texts: list[ChatRequest | None] | None = None,
    ) -> list[_Job]:
        """The rows of ``batch`` at ``rows`` to send, each checked against the scan.

        With image columns, only these rows' images are read (``texts``: the batch's
        requests without images, built once per batch).

        Raises:
            InputChanged: a row is not the one the scan keyed (the file changed since).
        """
        if batch.start + batch.data.num_rows > len(plan.loc):
            raise InputChanged(self.source.name, "it has more rows than when it was first read")
        indexes = rows.tolist()
        requests = self.builder.requests(batch, load_images=True, only=indexes, texts=texts)
        sent: list[ChatRequest] = []
        for index in indexes:
            request = requests[index]
            if request is None:  # a row the scan found a prompt in
                raise InputChanged(
                    self.source.name, f"row {batch.first_row + index} is not what it was"
                )
            sent.append(request)
        hashes, keys = self.builder.sent_keys(batch, indexes, sent, self.service)
        changed = np.flatnonzero(hashes != self.keys.request_hashes[batch.start + rows])
        if len(changed):
            row = batch.first_row + indexes[changed[0]]
            raise InputChanged(self.source.name, f"row {row} is not what it was")
        return [
            _Job(row, key, hash_, request)
            for row, key, hash_, request in zip(
                (batch.start + rows).tolist(), keys.tolist(), hashes.tolist(), sent, strict=True
            )
        ]

    async def _work(
        self, jobs: MemoryObjectReceiveStream[_Job], results: MemoryObjectSendStream[RowResult]
    ) -> None:
        async with jobs, results:
            while not self.stopping:
                try:
                    job = await receive(jobs)
                except anyio.EndOfStream:
                    return
                try:
                    result = await self._send_one(job)
                except BudgetReached as exc:
                    self._budget_reached(exc)
                    return
                try:
                    await send(results, result)
                except anyio.BrokenResourceError:
                    return  # the writer failed (a full disk): its error is the run's

    async def _send_one(self, job: _Job) -> RowResult:
        provider, limiter, rate, adaptive = self.provider, self.limiter, self.rate, self.adaptive
        structured = self.structured
        clock: list[float] = []  # when the first attempt got its turn: latency excludes queueing
        costs: list[float | None] = []  # of each answer: a billed retry counts too

        async def attempt() -> Completion:
            self.requests += 1
            try:
                limiter.acquire_nowait()
            except anyio.WouldBlock:
                await limiter.acquire()
            if not clock:
                clock.extend((time.time(), time.perf_counter()))
            try:
                if rate is not None:
                    await rate.wait()
                completion = await provider.complete(job.request)
                costs.append(self._answered(completion))
            except ProviderError as exc:
                if adaptive is not None:  # it tells congestion (429, 503, ...) from faults
                    self._limit(adaptive.failed(exc, limiter.borrowed_tokens))
                raise
            finally:
                limiter.release()
            if adaptive is not None:
                self._limit(adaptive.succeeded())
            if structured is not None:  # InvalidOutput: retried, as a fault of the answer
                structured.check(completion.text)
            return completion

        budget = self.budget
        charged = attempt if budget is None else budget.charging(attempt, self._worst(job), costs)
        outcome = await call_with_retries(charged, self.spec.retry)
        started, t0 = clock
        latency = (time.perf_counter() - t0) * 1000.0
        result = RowResult(
            row=job.row,
            row_key=job.row_key,
            request_hash=job.request_hash,
            sent_prompt=provider.render(job.request),
            status=RowStatus.OK,
            attempts=outcome.attempts,
            latency_ms=latency,
            started_at=started,
            finished_at=time.time(),
        )
        if outcome.error is None:
            completion = outcome.value
            assert completion is not None
            result.response = completion.text
            result.ttfb_ms = completion.ttfb_ms
            result.http_status = completion.http_status
            result.prompt_tokens = completion.prompt_tokens
            result.completion_tokens = completion.completion_tokens
            result.finish_reason = completion.finish_reason
            self.garbage_lines += completion.garbage_lines
        elif isinstance(outcome.error, Unauthorized):
            raise outcome.error  # every row would fail the same way: stop the run
        else:
            result.status = RowStatus.ERROR
            result.error_type = type(outcome.error).__name__
            result.error = str(outcome.error)
            result.http_status = outcome.error.http_status
            if isinstance(outcome.error, InvalidOutput):
                result.response = outcome.error.response  # the raw answer, to see why
        if costs and None not in costs:
            result.cost_usd = math.fsum(c for c in costs if c is not None)
        self.latencies.append(latency)
        return result

    def _look_up_price(self) -> PriceLookup:
        if not self.provider.reports_usage:
            reason = f"the {self.provider.name} provider reports no token usage"
            return PriceLookup(None, f"cost unknown: {reason}")
        spec = self.spec
        return look_up_price(
            self.model,
            input_price=spec.input_price,
            output_price=spec.output_price,
            batch=spec.batch_api,
        )

    def _answered(self, completion: Completion) -> float | None:
        """The cost of an answer (billed, whatever becomes of it), counted in the run's."""
        price = self.prices.price
        cost = None
        if price is not None:
            cost = price.answer_cost(completion.prompt_tokens, completion.completion_tokens)
        self.answers += 1
        if cost is None:
            self.uncosted += 1
        else:
            self.cost += cost
        return cost

    def _cost_usd(self) -> float | None:
        """What this run spent; ``None`` when no answer had a cost (never 0 for unknown)."""
        return None if self.answers and self.uncosted == self.answers else self.cost

    def _cost_note(self) -> str:
        note = self.prices.note
        if self.prices.price is not None and self.uncosted:
            note += f"; {self.uncosted} answers reported no usage and are not counted"
        return note

    def _worst(self, job: _Job) -> float:
        """The most ``job``'s request can cost: what the budget reserves for it."""
        price = self.prices.price
        if price is None or not isinstance(self.answer_bound, int):
            return math.inf  # nothing bounds it: the budget cannot cover it
        return price.cost(max_input_tokens(job.request), self.answer_bound)

    def _budget_reached(self, exc: BudgetReached) -> None:
        if not self.budget_stopped:
            log.warning("stopping: %s; the rows not sent are written as 'unsent'", exc)
        self.budget_stopped = True
        self.stopping = True
        self._reader_scope.cancel()

    def _limit(self, limit: int) -> None:
        if limit != self.limiter.total_tokens:
            self.limiter.total_tokens = limit

    def _stored(self, batch: Sequence[RowResult]) -> None:
        progress = self.progress
        progress.done += len(batch)
        failed = sum(1 for r in batch if r.status is RowStatus.ERROR)
        progress.failed += failed
        progress.ok += len(batch) - failed
        progress.concurrency = math.ceil(self.limiter.total_tokens)
        progress.cost_usd = self._cost_usd() if self.prices.price is not None else None
        self.on_progress(progress)

    # 4. write

    def _write(
        self, plan: Plan, checkpoint: Checkpoint, schema: pa.Schema, summary: Summary
    ) -> None:
        plan.resolve()
        counts = OutputCounts()
        constants = {"model": self.model, "provider": self.provider.name}
        rows = len(plan.loc)
        with OutputWriter(self.output, schema) as writer:
            written = 0
            for batch in self.source.batches():
                n = batch.data.num_rows
                if batch.start + n > rows:
                    raise InputChanged(
                        self.source.name, "it has more rows than when it was first read"
                    )
                records = checkpoint.take(plan.loc[batch.start : batch.start + n])
                counts.add(records)
                writer.write(
                    assemble(batch.data, batch.first_row, records, constants, self.structured)
                )
                written += n
            if written != rows:
                raise InputChanged(
                    self.source.name, "it has fewer rows than when it was first read"
                )
            summary.prompt_tokens = counts.prompt_tokens
            summary.completion_tokens = counts.completion_tokens
            summary.truncated = counts.truncated
            summary.ok = counts.statuses[RowStatus.OK.value]
            summary.error = counts.statuses[RowStatus.ERROR.value]
            summary.skipped = counts.statuses[RowStatus.SKIPPED.value]
            summary.unsent = counts.statuses[RowStatus.UNSENT.value]
            summary.errors_by_type = dict(counts.errors_by_type)
            writer.commit(
                {
                    **self.metadata,
                    "version": __version__,
                    "options": self.spec.public_options(),
                    "schema": None if self.structured is None else self.structured.schema,
                    "counts": summary.counts(),
                    "cost_usd": summary.cost_usd,
                }
            )
