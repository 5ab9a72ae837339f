"""HTTP plumbing the built-in providers share; not part of the provider contract.

What an HTTP status means (:func:`status_error`, :func:`response_error`), how long a
429 asks us to wait (:func:`retry_after_from` and the parsers under it), the splitting
of a streamed body into lines (:class:`LineSplitter`), and :func:`http_error`: the one
place where aiohttp's and the clock's exceptions become :mod:`aibatch.errors` types.
"""

from __future__ import annotations

import datetime
import email.utils
import errno
import json
import math
import re
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from ..errors import (
    ConnectionRefused,
    Overloaded,
    PermanentError,
    ProviderError,
    RateLimited,
    TokenRejected,
    TransientError,
)

__all__ = [
    "HTTP_ERRORS",
    "OVERLOADED_STATUSES",
    "LineSplitter",
    "dumps",
    "http_error",
    "loads",
    "parse_duration",
    "parse_reset_time",
    "parse_retry_after",
    "read_json_object",
    "response_error",
    "retry_after_from",
    "status_error",
    "timeout_error",
]


_DECODER = json.JSONDecoder()

#: ``json.dumps(value, ensure_ascii=False)``, without the encoder ``json.dumps`` builds
#: anew for every call that passes an option (a third of the cost of a request's body)
dumps = json.JSONEncoder(ensure_ascii=False).encode


def loads(data: bytes) -> Any:
    """``json.loads(data)``, at half its cost for what servers send: UTF-8, no padding.

    ``json.loads`` on bytes first guesses the encoding in Python, then decodes and strips
    whitespace with regular expressions, which costs more than the parse itself for a
    small chunk, and a stream has a dozen of them per answer. Anything else (whitespace
    around the value, a byte order mark, UTF-16, an error) goes to ``json.loads``, so the
    value, or the ``ValueError``, is the same.
    """
    try:
        text = data.decode()
        value, end = _DECODER.raw_decode(text)
    except ValueError:
        return json.loads(data)
    return value if end == len(text) else json.loads(data)


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


def parse_reset_time(value: str | None) -> float | None:
    """Read an RFC 3339 time (Anthropic's reset headers) as seconds from now."""
    if not value:
        return None
    try:
        when = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max(when.timestamp() - time.time(), 0.0)


_ANTHROPIC_LIMITS = ("requests", "tokens", "input-tokens", "output-tokens")


def _anthropic_reset(headers: Mapping[str, str]) -> float | None:
    """The wait the ``anthropic-ratelimit-*-reset`` times ask for.

    The latest reset of the limits whose ``-remaining`` is 0, or of all of them when
    none says so.
    """
    waits: dict[str, float] = {}
    for kind in _ANTHROPIC_LIMITS:
        wait = parse_reset_time(headers.get(f"anthropic-ratelimit-{kind}-reset"))
        if wait is not None:
            waits[kind] = wait
    spent = [
        wait
        for kind, wait in waits.items()
        if (headers.get(f"anthropic-ratelimit-{kind}-remaining") or "").strip() == "0"
    ]
    chosen = spent or list(waits.values())
    return max(chosen) if chosen else None


def retry_after_from(headers: Mapping[str, str]) -> float | None:
    """How long a 429 asks us to wait.

    ``Retry-After`` (seconds or a date), else ``retry-after-ms``, else the later of the
    ``x-ratelimit-reset-requests`` and ``x-ratelimit-reset-tokens`` durations, else the
    ``anthropic-ratelimit-*-reset`` times.
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
    return max(known) if known else _anthropic_reset(headers)


#: statuses that say the service is too busy, besides 429
OVERLOADED_STATUSES = frozenset({503, 529})


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
    "Too busy" is :class:`Overloaded`: 429 (:class:`RateLimited`), 503 (what gateways
    and OpenAI answer when overloaded) and 529 (Anthropic's ``overloaded_error``).
    """
    message = f"HTTP {status}: {detail}" if detail else f"HTTP {status}"
    if status == 429:
        return RateLimited(message, retry_after=retry_after, http_status=status)
    if status in OVERLOADED_STATUSES:
        return Overloaded(message, retry_after=retry_after, http_status=status)
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


class LineSplitter:
    r"""Splits a body that arrives in pieces into lines ended by CR, LF or CRLF.

    As the Server-Sent Events format defines line ends: a CRLF whose two bytes arrive in
    two pieces is still one line end. aiohttp's own line reader refuses lines over
    512 KiB and knows only ``\n``; this has no limit but memory.
    """

    __slots__ = ("_after_cr", "_pending")

    def __init__(self) -> None:
        self._pending = b""
        self._after_cr = False

    def feed(self, data: bytes) -> list[bytes]:
        """Take the next piece of the body; return the lines it completed, without ends."""
        if self._after_cr:  # the LF of a CRLF split between two pieces ends no new line
            self._after_cr = False
            if data[:1] == b"\n":
                data = data[1:]
        if b"\r" in data:
            self._after_cr = data[-1:] == b"\r"
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        elif b"\n" not in data:
            self._pending += data
            return []
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        return lines

    def close(self) -> list[bytes]:
        """End of body: the last line, if it had no line end."""
        rest, self._pending = self._pending, b""
        return [rest] if rest else []


def timeout_error(timeout: float | None, http_status: int | None) -> TransientError:
    """The error for an attempt that ran past ``--timeout``."""
    return TransientError(
        f"no complete answer within {timeout:g} s (--timeout)", http_status=http_status
    )


#: the foreign errors of sending and reading a request; catch them and raise
#: :func:`http_error` (``try`` costs nothing until it catches, unlike a ``with`` block)
HTTP_ERRORS = (TimeoutError, aiohttp.ClientError)


def http_error(
    exc: BaseException, timeout: float | None, http_status: int | None
) -> TransientError:
    """Translate one of :data:`HTTP_ERRORS`: the one place they become ours.

    A connection refused, or reset before any answer (``http_status`` is None), is
    :class:`ConnectionRefused`; once an answer began, any failure is a plain
    :class:`TransientError`. Raise the result ``from exc``.
    """
    if isinstance(exc, TimeoutError):  # before ClientError: ServerTimeoutError is both
        return timeout_error(timeout, http_status)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return TransientError("stream cut before it ended", http_status=http_status)
    if http_status is None and _refused_or_reset(exc):
        return ConnectionRefused(f"connection refused or reset: {type(exc).__name__}: {exc}")
    return TransientError(
        f"connection failed: {type(exc).__name__}: {exc}", http_status=http_status
    )


def _refused_or_reset(exc: BaseException) -> bool:
    """Whether the service refused the connection, or dropped it before answering.

    Not a failure to find or reach it (DNS, TLS, a proxy): only a refusal of the
    connection itself, or an open connection reset, closed or broken under the request.
    """
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return False  # the proxy refused: says nothing about the service
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.errno in (errno.ECONNREFUSED, errno.ECONNRESET)
    return isinstance(
        exc,
        aiohttp.ServerDisconnectedError
        | aiohttp.ClientOSError
        | aiohttp.ClientConnectionResetError,
    )


async def read_json_object(response: aiohttp.ClientResponse, status: int | None) -> dict[str, Any]:
    """A whole (not streamed) answer's body as a JSON object.

    Raises:
        TransientError: the body is not a JSON object (a proxy's error page, a cut body).
    """
    try:
        data = json.loads(await response.read())
    except ValueError as exc:
        raise TransientError("the answer is not JSON", http_status=status) from exc
    if not isinstance(data, dict):
        raise TransientError("the answer is not a JSON object", http_status=status)
    return data
