"""The provider seam: ``AsyncGeneratorProvider`` and ``ProviderModelMixin``.

A provider is an async resource (``async with Provider(...) as p:``) that owns one HTTP
session for a whole batch. It implements one method, :meth:`create_async_generator`,
which yields the answer's text chunks; :meth:`complete` (what the engine calls) wraps it
with the per-attempt deadline, the time to first chunk and the empty-answer check.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Self

import aiohttp

from ..errors import (
    PermanentError,
    ProviderError,
    RateLimited,
    TokenRejected,
    TransientError,
    UnknownModelError,
)
from ..types import ChatRequest, Completion

__all__ = [
    "AsyncGeneratorProvider",
    "HttpErrors",
    "ProviderModelMixin",
    "StreamInfo",
    "completion",
    "parse_duration",
    "parse_retry_after",
    "read_body",
    "response_error",
    "retry_after_from",
    "split_lines",
    "status_error",
    "timeout_error",
]

DEFAULT_TIMEOUT = 120.0


@dataclass(slots=True)
class StreamInfo:
    """What a provider learned about one response besides its text."""

    http_status: int | None = None
    garbage_lines: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None


class ProviderModelMixin:
    """Model names a provider serves, with aliases."""

    default_model: ClassVar[str] = ""
    models: ClassVar[Sequence[str]] = ()
    model_aliases: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def get_model(cls, model: str | None = None) -> str:
        """Resolve ``model`` (or the default when empty) through the aliases.

        Raises:
            UnknownModelError: the provider lists its models and ``model`` is not one.
        """
        if not model:
            return cls.default_model
        model = cls.model_aliases.get(model, model)
        if cls.models and model not in cls.models:
            raise UnknownModelError(model, [*cls.models, *cls.model_aliases])
        return model


class AsyncGeneratorProvider:
    """Base class of providers: an async resource owning one ``aiohttp.ClientSession``.

    Args:
        base_url: API base address; each provider has a default.
        proxy: proxy URL passed to aiohttp for every request.
        session: an open session to use instead of creating one (the caller closes it).
        concurrency: requests the caller will have in flight; sizes the connection pool.
        timeout: seconds one attempt may take, from sending to the last chunk.
        api_key: the credential, for providers with an :attr:`api_key_env` (never shown).
        stream: ask for a streamed answer (where :attr:`can_disable_stream`).
    """

    name: ClassVar[str] = ""
    url: ClassVar[str] = ""
    working: ClassVar[bool] = True
    #: environment variable that holds the API key, for providers that take one
    api_key_env: ClassVar[str | None] = None
    #: request options (``--temperature`` and the like) the provider sends
    sampling_options: ClassVar[frozenset[str]] = frozenset()
    #: whether ``--no-stream`` (one plain JSON answer) is possible
    can_disable_stream: ClassVar[bool] = False

    def __init__(
        self,
        *,
        base_url: str | None = None,
        proxy: str | None = None,
        session: aiohttp.ClientSession | None = None,
        concurrency: int = 16,
        timeout: float | None = DEFAULT_TIMEOUT,
        api_key: str | None = None,
        stream: bool = True,
    ) -> None:
        self.base_url = (base_url or self.url).rstrip("/")
        self._api_key = api_key
        self.stream = stream
        self.proxy = proxy
        self.concurrency = concurrency
        self.timeout = timeout
        self._session = session
        self._owns_session = session is None
        self.request_timeout = aiohttp.ClientTimeout(total=timeout)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    @property
    def session(self) -> aiohttp.ClientSession:
        """The open HTTP session."""
        if self._session is None:
            raise RuntimeError(f"use 'async with {type(self).__name__}(...)' before sending")
        return self._session

    async def __aenter__(self) -> Self:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=max(self.concurrency, 1), limit_per_host=0, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None)
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def stats(self) -> dict[str, int]:
        """Counters of this provider instance (token requests and the like)."""
        return {}

    def render(self, request: ChatRequest) -> str:
        """Return the text this provider sends for ``request`` (kept for auditing)."""
        raise NotImplementedError

    def create_async_generator(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        proxy: str | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[str, None]:
        """Yield the answer to ``messages`` as text chunks: the one method to implement.

        Raises:
            ProviderError: a subclass saying whether retrying can help.
        """
        raise NotImplementedError

    async def complete(self, request: ChatRequest) -> Completion:
        """Send ``request`` once and return the whole answer.

        The deadline of an attempt (``timeout``) is the provider's to enforce: those on
        aiohttp pass :attr:`request_timeout` with each request, which is far cheaper
        than a cancel scope per request.

        Raises:
            TransientError: an empty answer.
            ProviderError: whatever :meth:`create_async_generator` raised.
        """
        info = StreamInfo()
        chunks: list[str] = []
        ttfb: float | None = None
        start = time.perf_counter()
        options: dict[str, Any] = dict(request.options)
        stream = self.create_async_generator(
            request.model, request.message_dicts, info=info, **options
        )
        async with aclosing(stream):
            async for chunk in stream:
                if ttfb is None:
                    ttfb = (time.perf_counter() - start) * 1000.0
                chunks.append(chunk)
        return completion(chunks, ttfb, info)


def completion(chunks: list[str], ttfb_ms: float | None, info: StreamInfo) -> Completion:
    """The answer made of ``chunks``.

    Raises:
        TransientError: the answer is empty (a stream of blanks or garbage is no answer).
    """
    text = "".join(chunks)
    if not text:
        detail = f" ({info.garbage_lines} undecodable lines)" if info.garbage_lines else ""
        raise TransientError(f"empty answer{detail}", http_status=info.http_status)
    return Completion(
        text=text,
        ttfb_ms=ttfb_ms,
        http_status=info.http_status,
        garbage_lines=info.garbage_lines,
        prompt_tokens=info.prompt_tokens,
        completion_tokens=info.completion_tokens,
        finish_reason=info.finish_reason,
    )


def parse_retry_after(value: str | None) -> float | None:
    """Read a ``Retry-After`` header: seconds, or an HTTP date; ``None`` if absent or bad."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str | None) -> float | None:
    """Read a duration such as ``20ms``, ``1.5s`` or ``6m0s`` (OpenAI's reset headers)."""
    if not value:
        return None
    parts = _DURATION.findall(value.strip())
    if not parts or "".join(n + u for n, u in parts) != value.strip():
        return None
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    return seconds if math.isfinite(seconds) else None


def retry_after_from(headers: Mapping[str, str]) -> float | None:
    """How long a 429 asks us to wait.

    ``Retry-After`` (seconds or a date), else ``retry-after-ms``, else the later of the
    ``x-ratelimit-reset-requests`` and ``x-ratelimit-reset-tokens`` durations.
    """
    seconds = parse_retry_after(headers.get("Retry-After"))
    if seconds is not None:
        return seconds
    millis = parse_retry_after(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000.0
    resets = [
        parse_duration(headers.get(f"x-ratelimit-reset-{kind}")) for kind in ("requests", "tokens")
    ]
    known = [r for r in resets if r is not None]
    return max(known) if known else None


def status_error(
    status: int,
    detail: str,
    *,
    retry_after: float | None = None,
    auth_error: type[ProviderError] = TokenRejected,
) -> ProviderError:
    """Translate an HTTP error status into the exception that says whether to retry.

    ``auth_error`` is what 401 and 403 mean for the provider: a token to replace
    (AiChatOnline), or credentials that no retry will fix (:class:`Unauthorized`).
    """
    message = f"HTTP {status}: {detail}" if detail else f"HTTP {status}"
    if status == 429:
        return RateLimited(message, retry_after=retry_after, http_status=status)
    if status in (401, 403):
        return auth_error(message, http_status=status)
    if status >= 500 or status == 408:
        return TransientError(message, http_status=status)
    return PermanentError(message, http_status=status)


async def response_error(
    response: aiohttp.ClientResponse,
    what: str,
    *,
    secret: str | None = None,
    auth_error: type[ProviderError] = TokenRejected,
) -> ProviderError:
    """Build the error for a failed ``response``, quoting the start of its body.

    ``secret`` (a token the request carried) is blanked out of the quote, in case the
    server echoes it back.
    """
    try:
        body = (await response.text(errors="replace")).strip()
    except (aiohttp.ClientError, TimeoutError):
        body = ""
    if secret:
        body = body.replace(secret, "***")
    detail = f"{what} failed" + (f": {body[:200]}" if body else "")
    return status_error(
        response.status,
        detail,
        retry_after=retry_after_from(response.headers),
        auth_error=auth_error,
    )


def split_lines(pending: bytes, data: bytes) -> tuple[list[bytes], bytes]:
    """Split what arrived of a streamed body into whole lines and the unfinished rest.

    aiohttp's own line reader refuses lines over 512 KiB; this takes whatever arrives in
    whole chunks and has no limit but memory.
    """
    if b"\n" not in data:
        return [], pending + data
    lines = (pending + data).split(b"\n")
    return lines, lines.pop()


async def read_body(response: aiohttp.ClientResponse) -> tuple[bytes, float]:
    """A response's whole body, and the ``perf_counter`` time its first bytes came."""
    first = await response.content.readany()
    first_at = time.perf_counter()
    return first + await response.content.read(), first_at


def timeout_error(timeout: float | None, http_status: int | None) -> TransientError:
    """The error for an attempt that ran past ``--timeout``."""
    return TransientError(
        f"no complete answer within {timeout:g} s (--timeout)", http_status=http_status
    )


class HttpErrors:
    """Translates aiohttp's and the clock's errors during one request into ours.

    The one place foreign errors become :mod:`aibatch.errors` types; wrap the sending
    and the reading of a request in ``with HttpErrors(timeout, info):``.
    """

    __slots__ = ("info", "timeout")

    def __init__(self, timeout: float | None, info: StreamInfo) -> None:
        self.timeout = timeout
        self.info = info

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        status = self.info.http_status
        if isinstance(exc, TimeoutError):  # before ClientError: ServerTimeoutError is both
            raise timeout_error(self.timeout, status) from exc
        if isinstance(exc, aiohttp.ClientPayloadError):
            raise TransientError("stream cut before it ended", http_status=status) from exc
        if isinstance(exc, aiohttp.ClientError):
            raise TransientError(
                f"connection failed: {type(exc).__name__}: {exc}", http_status=status
            ) from exc
