"""The emulator's Anthropic Message Batches: ``/v1/messages/batches``.

Create (at most 100,000 requests and 256 MB; each ``{"custom_id", "params"}``, the
``custom_id`` 1 to 64 characters of letters, digits, ``_`` and ``-``), read, list newest
first, cancel, delete an ended batch, and read the results of an ended batch at its
``results_url`` (JSON lines: ``succeeded``, ``errored``, ``canceled``, ``expired``).
The store and the clock are :mod:`.emulator_batch`'s.
"""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

from aiohttp import web

from .emulator_anthropic import error_body
from .emulator_batch import WINDOW, Batch, BatchStore, Result, read_capped

__all__ = ["AnthropicBatches", "requests_problem"]

MAX_BATCH_REQUESTS = 100_000
MAX_BATCH_BYTES = 256 * 2**20
_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def requests_problem(requests: object, *, max_requests: int = MAX_BATCH_REQUESTS) -> str | None:
    """What is wrong with an Anthropic batch's ``requests``, or ``None``."""
    if not isinstance(requests, list) or not requests:
        return "requests: a non-empty list of requests is required"
    if len(requests) > max_requests:
        return f"requests: a batch holds at most {max_requests} requests, not {len(requests)}"
    seen: set[str] = set()
    for i, item in enumerate(requests):
        custom_id = item.get("custom_id") if isinstance(item, dict) else None
        if not isinstance(custom_id, str) or not _CUSTOM_ID.fullmatch(custom_id):
            return f"requests.{i}.custom_id: 1 to 64 characters of letters, digits, _ and -"
        if custom_id in seen:
            return f"requests.{i}.custom_id: {custom_id!r} is used by an earlier request"
        seen.add(custom_id)
        if not isinstance(item.get("params"), dict):
            return f"requests.{i}.params: Field required (a Messages body)"
    return None


class AnthropicBatches(BatchStore):
    """Anthropic's Message Batches: ``/v1/messages/batches``."""

    prefix = "msgbatch_"

    def routes(self) -> list[web.RouteDef]:
        """The routes of the Message Batches."""
        guard, path = self._guard, "/v1/messages/batches"
        return [
            web.post(path, guard(self._create_batch)),
            web.get(path, guard(self._list)),
            web.get(path + "/{batch_id}", guard(self._retrieve)),
            web.delete(path + "/{batch_id}", guard(self._delete)),
            web.post(path + "/{batch_id}/cancel", guard(self._cancel_batch)),
            web.get(path + "/{batch_id}/results", guard(self._results)),
        ]

    def _error(self, status: int, message: str, param: str | None = None) -> dict[str, Any]:
        return error_body(status, message)

    async def _create_batch(self, request: web.Request) -> web.Response:
        raw = await read_capped(request.content.read, MAX_BATCH_BYTES)
        if raw is None:
            return self._refuse(400, f"a batch holds at most {MAX_BATCH_BYTES} bytes")
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self._refuse(400, "the body must be a JSON object")
        if (problem := requests_problem(body.get("requests"))) is not None:
            return self._refuse(400, problem)
        batch = self._create([(r["custom_id"], r["params"]) for r in body["requests"]])
        return web.json_response(self._view(batch, request))

    async def _retrieve(self, request: web.Request) -> web.Response:
        found = self._found(request)
        if isinstance(found, web.Response):
            return found
        return web.json_response(self._view(found, request))

    async def _cancel_batch(self, request: web.Request) -> web.Response:
        found = self._found(request)
        if isinstance(found, web.Response):
            return found
        self._cancel(found)
        return web.json_response(self._view(found, request))

    async def _delete(self, request: web.Request) -> web.Response:
        found = self._found(request)
        if isinstance(found, web.Response):
            return found
        if found.results is None:
            return self._refuse(400, "a batch can be deleted once it has ended; cancel it first")
        del self.batches[found.id]
        return web.json_response({"id": found.id, "type": "message_batch_deleted"})

    async def _list(self, request: web.Request) -> web.Response:
        found = self._page(request, 1000)
        if isinstance(found, web.Response):
            return found
        batches, more = found
        return web.json_response(
            {
                "data": [self._view(b, request) for b in batches],
                "has_more": more,
                "first_id": batches[0].id if batches else None,
                "last_id": batches[-1].id if batches else None,
            }
        )

    async def _results(self, request: web.Request) -> web.Response:
        found = self._found(request)
        if isinstance(found, web.Response):
            return found
        if found.results is None:
            return self._refuse(400, f"batch {found.id} has not ended yet: no results")
        lines = [
            json.dumps({"custom_id": r.custom_id, "result": self._result_of(r)}).encode()
            for r in found.results
        ]
        return web.Response(body=b"\n".join(lines) + b"\n", content_type="application/x-jsonl")

    def _result_of(self, result: Result) -> dict[str, Any]:
        if result.kind == "answered":
            return {"type": "succeeded", "message": result.body}
        if result.kind == "error":
            return {"type": "errored", "error": result.body}
        if result.kind == "failed":
            return {"type": "errored", "error": self._error(500, "the batch failed (injected)")}
        return {"type": result.kind}

    def _view(self, batch: Batch, request: web.Request) -> dict[str, Any]:
        n = len(batch.requests)
        if batch.results is None:
            counts = {"processing": n, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
            status, results_url = ("in_progress" if batch.cancel_at is None else "canceling"), None
        else:
            found = batch.counts()
            counts = {
                "processing": 0,
                "succeeded": found["answered"],
                "errored": found["error"] + found["failed"],
                "canceled": found["canceled"],
                "expired": found["expired"],
            }
            status = "ended"
            results_url = f"{request.url.origin()}/v1/messages/batches/{batch.id}/results"
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "ended_at": _rfc3339(batch.ended_wall),
            "created_at": _rfc3339(batch.created),
            "expires_at": _rfc3339(batch.created + WINDOW),
            "archived_at": None,
            "cancel_initiated_at": _rfc3339(batch.cancel_wall),
            "results_url": results_url,
        }


def _rfc3339(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    moment = datetime.datetime.fromtimestamp(stamp, datetime.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
