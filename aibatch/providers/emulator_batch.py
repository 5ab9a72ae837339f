"""The emulator's Batch APIs, what both protocols share: the store, the clock, the faults.

:class:`~aibatch.providers.emulator.Emulator` serves a Batch API beside the live endpoint
of its protocol (:mod:`.emulator_batch_openai`, :mod:`.emulator_batch_anthropic`).
Everything lives in memory. Each request of a batch is answered by the same function as
a live request that does not stream (``reply``), so a batch answers what the live
endpoint does, structured answers and images included.

Time: a batch ends ``delay`` seconds after its creation, its requests finishing one by one
in between. Its state is worked out from the clock whenever it is read; nothing runs in
the background. A cancelled batch shows ``cancelling`` (``canceling``) once, and is
cancelled at the next read: the requests finished by then keep their answers, the others
are cancelled. Results come out in a seeded shuffle of the input order: clients must
match them by ``custom_id``.

The batch faults of :class:`~aibatch.providers.faults.Faults` (``batch_fail_rate``,
``batch_expire_rate``, ``batch_error_rate``, ``batch_stuck_rate``) are drawn when a
batch is created, from the emulator's seeded random generator.
"""

from __future__ import annotations

import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .faults import Faults

if TYPE_CHECKING:
    from .emulator import EmulatorStats

__all__ = [
    "WINDOW",
    "Batch",
    "BatchStore",
    "KeyCheck",
    "Reply",
    "Result",
    "json_object",
    "read_capped",
]

#: What answers the body of one request: its status and JSON object.
Reply = Callable[[object], tuple[int, dict[str, Any]]]
#: The emulator's API key check: ``None`` to go on, or the refusal to send.
KeyCheck = Callable[[web.Request], web.Response | None]
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: a batch's completion window, seconds
WINDOW = 24 * 3600


@dataclass(slots=True)
class _Request:
    custom_id: str
    body: Any
    fate: str  # "run", "error" (answered with an injected error), "expire" (never run)
    done_at: float  # monotonic time it finishes; inf: never


@dataclass(slots=True)
class Result:
    """How one request of an ended batch ended, and its answer (status, JSON)."""

    custom_id: str
    kind: str  # "answered", "error", "failed" (the batch failed), "expired", "canceled"
    status: int = 0
    body: dict[str, Any] | None = None


@dataclass(slots=True)
class Batch:
    """A batch: its requests with their drawn fates, its clock, and once ended its results."""

    id: str
    serial: int
    requests: list[_Request]
    created: float  # wall clock
    born: float  # monotonic
    ends: float  # monotonic; inf: stuck
    failed: bool = False  # the batch_fail fault
    cancel_at: float | None = None  # monotonic
    cancel_wall: float | None = None
    ended_wall: float | None = None
    results: list[Result] | None = None  # once ended, in output order
    info: dict[str, Any] = field(default_factory=dict)  # the protocol's own fields

    def counts(self) -> dict[str, int]:
        """Results per kind; before the end, requests done so far ("run" or "error")."""
        if self.results is not None:
            found = {"answered": 0, "error": 0, "failed": 0, "expired": 0, "canceled": 0}
            for result in self.results:
                found[result.kind] += 1
            return found
        now = min(time.monotonic(), self.cancel_at or math.inf)
        done = [r.fate for r in self.requests if r.done_at <= now]
        return {"answered": done.count("run"), "error": done.count("error")}


class BatchStore:
    """What both protocols share: the store of batches, faults, the clock, listing."""

    prefix = "batch_"

    def __init__(
        self,
        *,
        reply: Reply,
        faults: Faults,
        rng: random.Random,
        delay: float,
        stats: EmulatorStats,
        check_key: KeyCheck,
    ) -> None:
        self.reply = reply
        self.faults = faults
        self.rng = rng
        self.delay = delay
        self.stats = stats
        self.check_key = check_key
        self.batches: dict[str, Batch] = {}  # in creation order

    def routes(self) -> list[web.RouteDef]:
        """The routes to add to the emulator's application."""
        raise NotImplementedError

    def _guard(self, handler: _Handler) -> _Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            if (refused := self.check_key(request)) is not None:
                return refused
            return await handler(request)

        return checked

    def end_all(self) -> int:
        """End every batch still running now, stuck ones too; return how many.

        Each answers what it would have at its end (requests fated to expire expire).
        """
        now = time.monotonic()
        ended = 0
        for batch in self.batches.values():
            if batch.results is not None or batch.cancel_at is not None or batch.ends <= now:
                continue
            batch.ends = now
            for request in batch.requests:
                if request.fate != "expire":
                    request.done_at = min(request.done_at, now)
            ended += 1
        return ended

    def _draw(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    def _create(self, requests: Sequence[tuple[str, Any]], *, valid: bool = True) -> Batch:
        faults, born = self.faults, time.monotonic()
        failed = valid and self._draw(faults.batch_fail_rate)
        stuck = valid and self._draw(faults.batch_stuck_rate)
        ends = math.inf if stuck else born + self.delay if valid else born
        items = []
        for k, (custom_id, body) in enumerate(requests):
            fate = (
                "expire"
                if self._draw(faults.batch_expire_rate)
                else "error"
                if self._draw(faults.batch_error_rate)
                else "run"
            )
            done = min(ends, born + self.delay * (k + 1) / len(requests))
            items.append(_Request(custom_id, body, fate, math.inf if fate == "expire" else done))
        batch = Batch(
            id=self.prefix + secrets.token_hex(12),
            serial=len(self.batches),
            requests=items,
            created=time.time(),
            born=born,
            ends=ends,
            failed=failed,
        )
        self.batches[batch.id] = batch
        self.stats.batches_created += 1
        self.stats.batch_requests += len(items)
        return batch

    def _settle(self, batch: Batch) -> None:
        """End ``batch`` when its time has come: its end, or the first read after a cancel."""
        if batch.results is not None:
            return
        at = batch.cancel_at
        if at is None:
            if time.monotonic() < batch.ends:
                return
            at = batch.ends
        batch.ended_wall = batch.created + (at - batch.born)
        results = [self._result(batch, request, at) for request in batch.requests]
        shuffled = results.copy()
        random.Random(f"{self.faults.seed}/{batch.serial}").shuffle(shuffled)
        if len(shuffled) > 1 and shuffled == results:
            shuffled.append(shuffled.pop(0))  # never the input order
        batch.results = shuffled
        self._ended(batch)

    def _result(self, batch: Batch, request: _Request, at: float) -> Result:
        cancelled = batch.cancel_at is not None
        if batch.failed and not cancelled:
            return Result(request.custom_id, "failed")
        if request.done_at > at:
            return Result(request.custom_id, "canceled" if cancelled else "expired")
        if request.fate == "error":
            return Result(request.custom_id, "error", 500, self._error(500, "injected error"))
        status, body = self.reply(request.body)
        return Result(request.custom_id, "answered" if status == 200 else "error", status, body)

    def _ended(self, batch: Batch) -> None:
        """What a protocol does when a batch ends (OpenAI writes its files)."""

    def _error(self, status: int, message: str, param: str | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def _refuse(self, status: int, message: str, param: str | None = None) -> web.Response:
        return web.json_response(self._error(status, message, param), status=status)

    def _cancel(self, batch: Batch) -> bool:
        """Ask ``batch`` to cancel; ``False`` if it had ended already."""
        self._settle(batch)
        if batch.results is not None:
            return False
        if batch.cancel_at is None:
            batch.cancel_at, batch.cancel_wall = time.monotonic(), time.time()
            self.stats.batches_cancelled += 1
        return True

    def _found(self, request: web.Request) -> Batch | web.Response:
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            name = request.match_info["batch_id"]
            return self._refuse(404, f"No batch found with id {name!r}.")
        self._settle(batch)
        return batch

    def _page(self, request: web.Request, most: int) -> tuple[list[Batch], bool] | web.Response:
        """Batches newest first, after ``after``/``after_id`` or before ``before_id``."""
        query = request.query
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= most:
            return self._refuse(400, f"limit must be an integer from 1 to {most}", "limit")
        after = query.get("after") or query.get("after_id")
        before = query.get("before_id")
        if after and before:
            return self._refuse(400, "give after_id or before_id, not both")
        newest = [b.id for b in reversed(self.batches.values())]
        cursor = after or before
        at = newest.index(cursor) if cursor in newest else None
        if cursor and at is None:
            return [], False
        if before and at is not None:
            start = max(0, at - limit)
            page, more = newest[start:at], start > 0
        else:
            start = 0 if at is None else at + 1
            page, more = newest[start : start + limit], start + limit < len(newest)
        batches = [self.batches[name] for name in page]
        for batch in batches:
            self._settle(batch)
        return batches, more


async def read_capped(read: Callable[[int], Awaitable[bytes]], limit: int) -> bytes | None:
    """Read to the end in chunks; ``None`` as soon as more than ``limit`` bytes came."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await read(2**20):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def json_object(request: web.Request) -> dict[str, Any] | None:
    """The request's JSON body if it is an object, else ``None``."""
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
