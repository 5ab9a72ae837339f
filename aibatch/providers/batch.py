"""The providers' Batch APIs, behind one interface: :class:`BatchClient`.

A batch is a file of requests the service answers within 24 hours at half the live
price. OpenAI takes the file as an upload (``POST /files``, purpose ``batch``), then a
batch made of it (``POST /batches``, with ``metadata``); Anthropic takes the requests in
the body of ``POST /v1/messages/batches`` and has no metadata. Both give each request a
``custom_id`` that its result carries back: results come in no particular order and
are matched by it, never by position.

The client only speaks the protocol; what to send, what was sent and what came back
is the runner's (:mod:`aibatch.runner.batch`) and the checkpoint's
(:mod:`aibatch.jobs.batches`). A chunk's request file is written by the runner, one
:meth:`BatchClient.line` per request, and streamed from disk to the service, so a
chunk is never held in memory whole.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import aiohttp

from ..errors import (
    BatchCancelled,
    BatchExpired,
    PermanentError,
    ProviderError,
    TransientError,
    Unauthorized,
    UsageError,
)
from ..types import ChatRequest, Completion
from ._http import (
    HTTP_ERRORS,
    LineSplitter,
    dumps,
    http_error,
    loads,
    read_json_object,
    response_error,
    status_error,
)
from .base import AsyncGeneratorProvider

log = logging.getLogger(__name__)

__all__ = ["BatchClient", "BatchInfo", "BatchItem", "batch_client"]

_READ = 1 << 20  # bytes per read of a request file being uploaded


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """What the service says of one batch.

    Attributes:
        id: the service's batch id.
        status: the service's own word for its state (``in_progress``, ``ended``...).
        ended: no request of it will change any more: its results can be read.
        total: requests in it.
        finished: requests that ended (answered, failed, expired or cancelled).
        failed: of those, the ones that did not succeed.
        created_at: when it was created (Unix seconds).
        error: why the service failed the whole batch, if it did.
        results: where its results are: OpenAI's output and error file ids, Anthropic's
            results URL.
        metadata: the metadata it was created with (OpenAI only).
    """

    id: str
    status: str
    ended: bool
    total: int = 0
    finished: int = 0
    failed: int = 0
    created_at: float | None = None
    error: str | None = None
    results: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One result of a batch: the answer to the request ``custom_id``, or its error."""

    custom_id: str
    completion: Completion | None = None
    error: ProviderError | None = None


class BatchClient:
    """A provider's Batch API. Use :func:`batch_client` to get the one of a provider.

    Args:
        provider: an open provider (its session, base URL and key are used).
        schema: the job asks for structured answers (Anthropic: the answer is the
            forced tool's input).
    """

    #: the most requests and bytes one batch may hold
    max_requests: ClassVar[int]
    max_bytes: ClassVar[int]
    #: whether :meth:`upload` is a step of its own (OpenAI) or the requests go in the
    #: create call (Anthropic)
    uploads: ClassVar[bool] = False
    #: whether :meth:`find` can tell a batch of ours by its metadata
    finds_by_metadata: ClassVar[bool] = False

    def __init__(self, provider: AsyncGeneratorProvider, *, schema: bool = False) -> None:
        self.provider = provider
        self.schema = schema
        self._secret: str | None = getattr(provider, "_api_key", None)
        self._headers: dict[str, str] = dict(getattr(provider, "_headers", {}))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.provider.base_url!r})"

    # what a subclass says

    def line(self, custom_id: str, request: ChatRequest) -> bytes:
        """One request of a chunk file, a JSON line ending in a newline."""
        raise NotImplementedError

    async def upload(self, path: Path, name: str) -> str:
        """Upload the chunk file ``path``; return its file id (OpenAI only)."""
        raise NotImplementedError

    async def create(
        self, path: Path, file_id: str | None, metadata: Mapping[str, str]
    ) -> BatchInfo:
        """Create a batch of the requests in ``path`` (or in the uploaded ``file_id``)."""
        raise NotImplementedError

    async def get(self, batch_id: str) -> BatchInfo:
        """The batch's state now."""
        raise NotImplementedError

    async def cancel(self, batch_id: str) -> BatchInfo:
        """Ask the service to cancel the batch; its finished requests keep their answers."""
        raise NotImplementedError

    async def recent(self, since: float) -> list[BatchInfo]:
        """Batches created at ``since`` (Unix seconds) or later, newest first."""
        found: list[BatchInfo] = []
        after: str | None = None
        for _ in range(1000):  # 100 a page: the newest 100,000 batches at most
            page = await self._call("GET", self._list_url(after), "batch list")
            data = [b for b in page.get("data") or () if isinstance(b, dict)]
            infos = [self._info(b) for b in data]
            found += [i for i in infos if i.created_at is None or i.created_at >= since]
            if not page.get("has_more") or not data:
                break
            if any(i.created_at is not None and i.created_at < since for i in infos):
                break  # newest first: the rest are older still
            last = page.get("last_id") or data[-1].get("id")
            after = str(last) if last else None
        return found

    def _list_url(self, after: str | None) -> str:
        """The URL of a page of the batch list, after the batch ``after``."""
        raise NotImplementedError

    def _info(self, batch: dict[str, Any]) -> BatchInfo:
        """What a batch object says."""
        raise NotImplementedError

    def results(self, batch: BatchInfo) -> AsyncIterator[BatchItem]:
        """The ended batch's results, one item per request, in the service's order."""
        raise NotImplementedError

    # HTTP

    async def _call(
        self,
        method: str,
        url: str,
        what: str,
        *,
        body: object = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """One API call whose answer is a JSON object.

        Raises:
            ProviderError: the mapped error of a failed call (:class:`Unauthorized`
                for a refused key).
        """
        status = None
        sent_headers = {**self._headers, **(headers or {})}
        if body is not None:
            data = dumps(body).encode()
            sent_headers["Content-Type"] = "application/json"
        elif data is not None:
            sent_headers.pop("Content-Type", None)
            sent_headers.pop("content-type", None)
        try:
            async with self.provider.session.request(
                method, url, data=data, headers=sent_headers, timeout=self.provider.request_timeout
            ) as response:
                status = response.status
                if status >= 400:
                    raise await response_error(
                        response, what, secret=self._secret, auth_error=Unauthorized
                    )
                return await read_json_object(response, status)
        except HTTP_ERRORS as exc:
            raise http_error(exc, self.provider.timeout, status) from exc

    async def _lines(self, url: str, what: str) -> AsyncIterator[dict[str, Any]]:
        """The JSON objects of a JSON-lines body, read as it arrives."""
        status = None
        splitter = LineSplitter()
        try:
            async with self.provider.session.get(
                url, headers=self._headers, timeout=self._download_timeout()
            ) as response:
                status = response.status
                if status >= 400:
                    raise await response_error(
                        response, what, secret=self._secret, auth_error=Unauthorized
                    )
                while data := await response.content.readany():
                    for line in splitter.feed(data):
                        if item := _json_line(line, what):
                            yield item
        except HTTP_ERRORS as exc:
            raise http_error(exc, self.provider.timeout, status) from exc
        for line in splitter.close():
            if item := _json_line(line, what):
                yield item

    def _download_timeout(self) -> aiohttp.ClientTimeout:
        # A results file can be hundreds of MB: no deadline on the whole, only on silence.
        return aiohttp.ClientTimeout(total=None, sock_read=self.provider.timeout)


def _json_line(line: bytes, what: str) -> dict[str, Any] | None:
    if not line.strip():
        return None
    try:
        item = loads(line)
    except ValueError as exc:
        raise TransientError(f"{what}: a line is not JSON") from exc
    if not isinstance(item, dict):
        raise TransientError(f"{what}: a line is not a JSON object")
    return item


def _unix(value: object) -> float | None:
    """Seconds since the epoch from a Unix number or an RFC 3339 time."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        return when.timestamp()
    return None


def _count(counts: Mapping[str, Any], *names: str) -> int:
    return sum(v for n in names if isinstance(v := counts.get(n), int))


class OpenAIBatches(BatchClient):
    """OpenAI's Batch API: ``/files`` and ``/batches`` beside ``/chat/completions``."""

    max_requests = 50_000
    max_bytes = 200 * 2**20
    uploads = True
    finds_by_metadata = True
    ENDPOINT = "/v1/chat/completions"

    def line(self, custom_id: str, request: ChatRequest) -> bytes:
        body = self.provider.batch_body(request)
        item = {"custom_id": custom_id, "method": "POST", "url": self.ENDPOINT, "body": body}
        return dumps(item).encode() + b"\n"

    @property
    def _base(self) -> str:
        return self.provider.base_url.rstrip("/")

    async def upload(self, path: Path, name: str) -> str:
        with path.open("rb") as handle:  # aiohttp streams an open file in pieces
            form = aiohttp.FormData()
            form.add_field("purpose", "batch")
            form.add_field("file", handle, filename=name, content_type="application/jsonl")
            answer = await self._call("POST", f"{self._base}/files", "file upload", data=form)
        file_id = answer.get("id")
        if not isinstance(file_id, str):
            raise TransientError("file upload: the answer has no file id")
        return file_id

    async def create(
        self, path: Path, file_id: str | None, metadata: Mapping[str, str]
    ) -> BatchInfo:
        if file_id is None:
            raise UsageError("an OpenAI batch needs its file uploaded first")
        body = {
            "input_file_id": file_id,
            "endpoint": self.ENDPOINT,
            "completion_window": "24h",
            "metadata": dict(metadata),
        }
        return self._info(
            await self._call("POST", f"{self._base}/batches", "batch create", body=body)
        )

    async def get(self, batch_id: str) -> BatchInfo:
        return self._info(await self._call("GET", f"{self._base}/batches/{batch_id}", "batch"))

    async def cancel(self, batch_id: str) -> BatchInfo:
        url = f"{self._base}/batches/{batch_id}/cancel"
        return self._info(await self._call("POST", url, "batch cancel"))

    def _list_url(self, after: str | None) -> str:
        return f"{self._base}/batches?limit=100" + (f"&after={after}" if after else "")

    async def results(self, batch: BatchInfo) -> AsyncIterator[BatchItem]:
        for file_id in batch.results:
            url = f"{self._base}/files/{file_id}/content"
            async for item in self._lines(url, "batch results"):
                yield self._item(item)

    def _item(self, item: dict[str, Any]) -> BatchItem:
        custom_id = str(item.get("custom_id"))
        response = item.get("response")
        error = item.get("error")
        if isinstance(response, dict):
            status = response.get("status_code")
            body = response.get("body")
            if status == 200 and isinstance(body, dict):
                try:
                    return BatchItem(custom_id, self.provider.batch_answer(body))
                except ProviderError as exc:
                    return BatchItem(custom_id, error=exc)
            if isinstance(status, int):
                detail = _message(body.get("error") if isinstance(body, dict) else body)
                return BatchItem(custom_id, error=_status_error(status, detail))
        if isinstance(error, dict):
            code = str(error.get("code") or "")
            message = _message(error)
            if code == "batch_expired":
                return BatchItem(custom_id, error=BatchExpired(f"batch expired: {message}"))
            if code == "batch_cancelled":
                return BatchItem(custom_id, error=BatchCancelled(f"batch cancelled: {message}"))
            return BatchItem(custom_id, error=TransientError(f"batch request failed: {message}"))
        return BatchItem(custom_id, error=TransientError("batch result without an answer"))

    def _info(self, b: dict[str, Any]) -> BatchInfo:
        status = str(b.get("status") or "")
        counts = b.get("request_counts") if isinstance(b.get("request_counts"), dict) else {}
        assert isinstance(counts, dict)
        errors = b.get("errors")
        reasons = errors.get("data") if isinstance(errors, dict) else None
        error = None
        if status == "failed":
            messages = [_message(e) for e in reasons or () if isinstance(e, dict)]
            error = "; ".join(messages[:3]) or "the batch failed"
        results = tuple(
            f for f in (b.get("output_file_id"), b.get("error_file_id")) if isinstance(f, str)
        )
        metadata = b.get("metadata") if isinstance(b.get("metadata"), dict) else {}
        assert isinstance(metadata, dict)
        return BatchInfo(
            id=str(b.get("id")),
            status=status,
            ended=status in ("completed", "failed", "expired", "cancelled"),
            total=_count(counts, "total"),
            finished=_count(counts, "completed", "failed"),
            failed=_count(counts, "failed"),
            created_at=_unix(b.get("created_at")),
            error=error,
            results=results,
            metadata={str(k): str(v) for k, v in metadata.items()},
        )


class AnthropicBatches(BatchClient):
    """Anthropic's Message Batches: ``/v1/messages/batches``."""

    max_requests = 100_000
    max_bytes = 256 * 2**20

    def line(self, custom_id: str, request: ChatRequest) -> bytes:
        item = {"custom_id": custom_id, "params": self.provider.batch_body(request)}
        return dumps(item).encode() + b"\n"

    @property
    def _base(self) -> str:
        return f"{self.provider.base_url.rstrip('/')}/v1/messages/batches"

    async def create(
        self, path: Path, file_id: str | None, metadata: Mapping[str, str]
    ) -> BatchInfo:
        body = _requests_body(path)
        answer = await self._call(
            "POST",
            self._base,
            "batch create",
            data=body,
            headers={"content-type": "application/json"},
        )
        return self._info(answer)

    async def get(self, batch_id: str) -> BatchInfo:
        return self._info(await self._call("GET", f"{self._base}/{batch_id}", "batch"))

    async def cancel(self, batch_id: str) -> BatchInfo:
        return self._info(
            await self._call("POST", f"{self._base}/{batch_id}/cancel", "batch cancel")
        )

    def _list_url(self, after: str | None) -> str:
        return f"{self._base}?limit=100" + (f"&after_id={after}" if after else "")

    async def results(self, batch: BatchInfo) -> AsyncIterator[BatchItem]:
        for url in batch.results:
            async for item in self._lines(url, "batch results"):
                yield self._item(item)

    def _item(self, item: dict[str, Any]) -> BatchItem:
        custom_id = str(item.get("custom_id"))
        result = item.get("result") if isinstance(item.get("result"), dict) else {}
        assert isinstance(result, dict)
        kind = result.get("type")
        if kind == "succeeded" and isinstance(result.get("message"), dict):
            try:
                return BatchItem(
                    custom_id, self.provider.batch_answer(result["message"], schema=self.schema)
                )
            except ProviderError as exc:
                return BatchItem(custom_id, error=exc)
        if kind == "expired":
            return BatchItem(custom_id, error=BatchExpired("the batch expired before it ran"))
        if kind == "canceled":
            return BatchItem(custom_id, error=BatchCancelled("the batch was cancelled"))
        error = result.get("error")
        while isinstance(error, dict) and isinstance(error.get("error"), dict):
            error = error["error"]  # {"type": "error", "error": {"type", "message"}}
        kind = str(error.get("type") or "") if isinstance(error, dict) else ""
        message = f"batch request failed: {_message(error)}"
        if kind in ("invalid_request_error", "not_found_error", "request_too_large"):
            return BatchItem(custom_id, error=PermanentError(message))
        return BatchItem(custom_id, error=TransientError(message))

    def _info(self, b: dict[str, Any]) -> BatchInfo:
        status = str(b.get("processing_status") or "")
        counts = b.get("request_counts") if isinstance(b.get("request_counts"), dict) else {}
        assert isinstance(counts, dict)
        url = b.get("results_url")
        finished = _count(counts, "succeeded", "errored", "canceled", "expired")
        return BatchInfo(
            id=str(b.get("id")),
            status=status,
            ended=status == "ended",
            total=finished + _count(counts, "processing"),
            finished=finished,
            failed=finished - _count(counts, "succeeded"),
            created_at=_unix(b.get("created_at")),
            results=(url,) if isinstance(url, str) and url else (),
        )


async def _requests_body(path: Path) -> AsyncIterator[bytes]:
    """``{"requests": [...]}`` around the JSON lines of a chunk file, streamed from disk."""
    yield b'{"requests":['
    first = True
    with path.open("rb") as handle:
        pieces: list[bytes] = []
        size = 0
        for line in handle:
            line = line.rstrip(b"\n")
            if not line:
                continue
            pieces.append(line if first else b"," + line)
            first = False
            size += len(line)
            if size >= _READ:
                yield b"".join(pieces)
                pieces, size = [], 0
        if pieces:
            yield b"".join(pieces)
    yield b"]}"


def _message(error: object) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error.get("code") or error.get("type") or "unknown")
    return str(error) if error else "unknown"


def _status_error(status: int, detail: str) -> ProviderError:
    return status_error(status, detail, auth_error=Unauthorized)


def batch_client(provider: AsyncGeneratorProvider, *, schema: bool = False) -> BatchClient:
    """The Batch API client of ``provider``.

    Raises:
        UsageError: the provider has no Batch API.
    """
    from .anthropic import AnthropicMessages
    from .openai import OpenAIChat

    if isinstance(provider, AnthropicMessages):
        return AnthropicBatches(provider, schema=schema)
    if isinstance(provider, OpenAIChat):
        return OpenAIBatches(provider, schema=schema)
    raise UsageError(
        f"the {provider.name} provider has no batch API; --batch-api works with"
        " --provider openai and --provider anthropic"
    )
