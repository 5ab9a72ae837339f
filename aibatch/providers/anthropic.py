"""AnthropicMessages: Anthropic's Messages API, streamed or whole.

``POST {base_url}/v1/messages`` with ``x-api-key`` and ``anthropic-version``. The system
messages of a conversation go in the top-level ``system`` field, the others in
``messages`` with their roles; ``max_tokens`` is required by the API, so it is
``DEFAULT_MAX_TOKENS`` (1024) unless the job sets it. Answers stream as
Server-Sent Events (``message_start`` with the input tokens, ``content_block_delta``
with ``text_delta`` text, ``message_delta`` with the stop reason and output tokens,
``message_stop``, ``ping`` at any time, ``error`` when the answer failed mid-way);
``stream=False`` asks for one JSON message instead.

``stop_reason`` becomes the ``finish_reason`` column through :data:`FINISH_REASONS`:
``end_turn`` is ``stop`` and ``max_tokens`` is ``length``, as other providers say them;
any other reason (``stop_sequence``, ``tool_use``, ``refusal``, ``pause_turn``) is kept
as Anthropic names it, so the raw value can always be read back.

The API key comes from the environment (``ANTHROPIC_API_KEY`` or the variable the job
names) and is never shown. A 401 or 403 is :class:`Unauthorized`: the run stops.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, ClassVar

import aiohttp

from ..errors import (
    Overloaded,
    PermanentError,
    ProviderError,
    RateLimited,
    TransientError,
    Unauthorized,
)
from ..types import ChatRequest, Completion
from ._http import (
    HTTP_ERRORS,
    LineSplitter,
    dumps,
    http_error,
    loads,
    read_json_object,
    retry_after_from,
    status_error,
)
from .base import AsyncGeneratorProvider, ProviderModelMixin, StreamInfo, whole_answer
from .helpers import to_text

log = logging.getLogger(__name__)

__all__ = ["FINISH_REASONS", "AnthropicMessages", "AnthropicSseParser", "read_event"]

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024

#: ``stop_reason`` -> ``finish_reason``; a reason not listed is kept as it is
FINISH_REASONS: Mapping[str, str] = {"end_turn": "stop", "max_tokens": "length"}

# What an `error` object inside an answer (status 200) means, by its type; an unknown
# type is transient. An error status is read by its status instead (status_error).
_ERROR_TYPES: Mapping[str, tuple[type[ProviderError], int]] = {
    "invalid_request_error": (PermanentError, 400),
    "authentication_error": (Unauthorized, 401),
    "permission_error": (Unauthorized, 403),
    "not_found_error": (PermanentError, 404),
    "request_too_large": (PermanentError, 413),
    "rate_limit_error": (RateLimited, 429),
    "api_error": (TransientError, 500),
    "overloaded_error": (Overloaded, 529),
}
# Events that carry neither text, usage, nor an error: not decoded at all.
_SILENT_EVENTS = frozenset({b"ping", b"content_block_start", b"content_block_stop"})


def finish_reason(stop_reason: str) -> str:
    """The ``finish_reason`` recorded for Anthropic's ``stop_reason``."""
    return FINISH_REASONS.get(stop_reason, stop_reason)


def error_text(error: object) -> tuple[str, str]:
    """The ``(type, message)`` of an Anthropic ``error`` object (or whatever came instead)."""
    if not isinstance(error, dict):
        return "", str(error)
    return str(error.get("type") or ""), str(error.get("message") or "")


def event_error(error: object, *, secret: str | None = None) -> ProviderError:
    """The exception for an ``error`` inside an answer: an event, or a whole body.

    Its type says whether to retry (an ``overloaded_error`` mid-stream is
    :class:`Overloaded`, so ``-c auto`` cuts as for a 529);
    ``http_status`` is the status that type stands for. ``secret`` (the API key) is
    blanked out of the message, in case the server quotes it.
    """
    kind, message = error_text(error)
    text = f"error in the answer: {kind or 'unknown error'}" + (f": {message}" if message else "")
    if secret:
        text = text.replace(secret, "***")
    cls, status = _ERROR_TYPES.get(kind, (TransientError, None))
    return cls(text, http_status=status)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _usage(usage: object, info: StreamInfo) -> None:
    """Token counts: input (with cache reads and writes) and output, where present."""
    if not isinstance(usage, dict):
        return
    given = _int(usage.get("input_tokens"))
    if given is not None:
        cached = (
            _int(usage.get(k)) or 0
            for k in ("cache_creation_input_tokens", "cache_read_input_tokens")
        )
        info.prompt_tokens = given + sum(cached)
    output = _int(usage.get("output_tokens"))
    if output is not None:
        info.completion_tokens = output


def read_event(
    event: dict[str, Any], info: StreamInfo, *, secret: str | None = None, tool_input: bool = False
) -> str | None:
    """The text of one stream event; fills ``info`` with usage and the stop reason.

    With ``tool_input`` (a ``--schema`` request), the forced tool's input JSON is the text.

    Raises:
        ProviderError: the event is an ``error`` (``secret`` blanked from its message).
    """
    kind = event.get("type")
    if kind == "content_block_delta":
        delta = event.get("delta")
        if isinstance(delta, dict) and delta.get("type") == "text_delta":
            text = delta.get("text")
            return text if isinstance(text, str) and text else None
        if tool_input and isinstance(delta, dict) and delta.get("type") == "input_json_delta":
            text = delta.get("partial_json")
            return text if isinstance(text, str) and text else None
        return None  # thinking, signature (and unasked tool input) deltas are no answer text
    if kind == "message_delta":
        delta = event.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
            info.finish_reason = finish_reason(delta["stop_reason"])
        _usage(event.get("usage"), info)
    elif kind == "message_start":
        message = event.get("message")
        if isinstance(message, dict):
            _usage(message.get("usage"), info)
    elif kind == "error":
        raise event_error(event.get("error"), secret=secret)
    return None


def read_message(
    message: dict[str, Any],
    info: StreamInfo,
    *,
    secret: str | None = None,
    tool_input: bool = False,
) -> str:
    """The text of a whole (not streamed) answer; fills ``info`` as :func:`read_event` does.

    Raises:
        ProviderError: the body is an ``error``.
    """
    if message.get("type") == "error":
        raise event_error(message.get("error"), secret=secret)
    if isinstance(message.get("stop_reason"), str):
        info.finish_reason = finish_reason(message["stop_reason"])
    _usage(message.get("usage"), info)
    content = message.get("content")
    if not isinstance(content, list):
        return ""
    tools = [
        dumps(block["input"])
        for block in content
        if isinstance(block, dict) and block.get("type") == "tool_use" and "input" in block
    ]
    if tool_input and tools:  # the forced tool's input: a --schema answer
        return tools[0]
    return "".join(
        block["text"]
        for block in content
        if isinstance(block, dict)
        and block.get("type") == "text"
        and isinstance(block.get("text"), str)
    )


class AnthropicSseParser:
    """Turns a Messages event stream, fed in pieces, into text deltas.

    Lines end at CR, LF or CRLF and a field's value loses one leading space, as the
    Server-Sent Events format says. Data that is not a JSON object counts as garbage;
    ``done`` turns true at ``message_stop``. An ``error`` event ends the reading: the
    text before it is still returned, and ``error`` holds the exception to raise.
    """

    __slots__ = ("_data", "_event", "_lines", "done", "error", "info", "secret", "tool_input")

    def __init__(
        self, info: StreamInfo, *, secret: str | None = None, tool_input: bool = False
    ) -> None:
        self.tool_input = tool_input
        self.info = info
        self.secret = secret
        self._lines = LineSplitter()
        self._event = b""
        self._data: list[bytes] = []
        self.done = False
        self.error: ProviderError | None = None

    def feed(self, data: bytes) -> list[str]:
        """Take the next piece of the body; return the text deltas it completed."""
        return self._read(self._lines.feed(data))

    def close(self) -> list[str]:
        """End of body: take what is left, including an event without its blank line."""
        return self._read([*self._lines.close(), b""])

    def _read(self, lines: list[bytes]) -> list[str]:
        texts: list[str] = []
        if self.error is not None:
            return texts
        for line in lines:
            if not line:  # a blank line ends an event
                if self._data:
                    try:
                        text = self._dispatch(self._event, b"\n".join(self._data))
                    except ProviderError as exc:
                        self.error = exc
                        return texts
                    if text:
                        texts.append(text)
                self._event, self._data = b"", []
                continue
            name, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                self._data.append(value)
            elif name == b"event":
                self._event = value
            # comments (":...") and other fields (id:, retry:) carry nothing for us
        return texts

    def _dispatch(self, name: bytes, data: bytes) -> str | None:
        if name in _SILENT_EVENTS:
            return None
        if name == b"message_stop":
            self.done = True
            return None
        try:
            event = loads(data)
        except ValueError:
            self.info.garbage_lines += 1
            return None
        if not isinstance(event, dict):
            self.info.garbage_lines += 1
            return None
        if not name and event.get("type") == "message_stop":  # data only, no event field
            self.done = True
        if name == b"error" and "type" not in event:
            event = {"type": "error", "error": event}
        return read_event(event, self.info, secret=self.secret, tool_input=self.tool_input)


class AnthropicMessages(AsyncGeneratorProvider, ProviderModelMixin):
    """Anthropic's Messages API (``POST {base_url}/v1/messages``).

    Args:
        api_key: the key (read from the environment by the runner), sent as
            ``x-api-key``; ``None`` for a local server that needs none.
        stream: stream the answer (``False``: one JSON message).
        **kwargs: see :class:`AsyncGeneratorProvider`.
    """

    name: ClassVar[str] = "anthropic"
    url: ClassVar[str] = "https://api.anthropic.com"
    default_model: ClassVar[str] = "claude-haiku-4-5"
    models: ClassVar[Sequence[str]] = ()  # whatever the server serves
    api_key_env: ClassVar[str | None] = "ANTHROPIC_API_KEY"
    sampling_options: ClassVar[frozenset[str]] = frozenset(
        {"temperature", "top_p", "top_k", "max_tokens", "stop"}
    )
    sampling_bounds: ClassVar[Mapping[str, tuple[float, float]]] = {"temperature": (0.0, 1.0)}
    can_disable_stream: ClassVar[bool] = True
    reports_usage: ClassVar[bool] = True
    structured_output: ClassVar[bool] = True
    takes_images: ClassVar[bool] = True
    batch_api: ClassVar[bool] = True
    #: ``max_tokens`` is required by the API: this, unless the job sets it
    request_defaults: ClassVar[Mapping[str, object]] = {"max_tokens": DEFAULT_MAX_TOKENS}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._url = f"{self.base_url}/v1/messages"
        self._headers = {"content-type": "application/json", "anthropic-version": API_VERSION}
        if self._api_key:
            self._headers["x-api-key"] = self._api_key

    def __repr__(self) -> str:
        return f"AnthropicMessages(base_url={self.base_url!r}, stream={self.stream})"

    def render(self, request: ChatRequest) -> str:
        """The ``system`` and ``messages`` sent for ``request``, as JSON (images described)."""
        system, messages = split_system(request.shown_dicts)
        shown: dict[str, Any] = {"system": system} if system is not None else {}
        shown["messages"] = messages
        return dumps(shown)

    def batch_body(self, request: ChatRequest) -> dict[str, Any]:
        """The Messages body (``params``) of ``request`` for the Batch API (never streamed)."""
        messages, options = self.call_args(request)
        return self._request(self.get_model(request.model or self.model), messages, options)

    def batch_answer(self, body: dict[str, Any], *, schema: bool = False) -> Completion:
        """The answer in a Batch API ``succeeded`` result's ``message``.

        Raises:
            ProviderError: the message is an ``error``, or has no text.
        """
        info = StreamInfo(http_status=200)
        text = read_message(body, info, secret=self._api_key, tool_input=schema)
        return whole_answer(text, info)

    def _body(
        self, model: str, messages: Sequence[Mapping[str, Any]], options: Mapping[str, Any]
    ) -> bytes:
        body = self._request(model, messages, options)
        if self.stream:
            body["stream"] = True
        return dumps(body).encode()

    def _request(
        self, model: str, messages: Sequence[Mapping[str, Any]], options: Mapping[str, Any]
    ) -> dict[str, Any]:
        system, turns = split_system(messages)
        body: dict[str, Any] = {"model": model, "messages": turns}
        if system is not None:
            body["system"] = system
        merged: dict[str, Any] = {**self.request_defaults, **options}
        for name, value in merged.items():
            if value is None or name not in self.sampling_options:
                continue
            if name == "stop":
                body["stop_sequences"] = list(value)
            else:
                body[name] = value
        schema = options.get("response_schema")
        if schema is not None:  # the answer is the forced tool's input
            body["tools"] = [{"name": ANSWER_TOOL, "input_schema": _loaded(schema)}]
            body["tool_choice"] = {"type": "tool", "name": ANSWER_TOOL}
        return body

    async def create_async_generator(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        proxy: str | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[str, None]:
        """Yield the answer's text as it arrives (once, whole, without ``stream``).

        The one request path: :meth:`complete` and every way of calling this (see
        :mod:`aibatch.providers.base`) come through here.

        Args:
            model: the model name the server knows; empty for the instance's ``model``.
            messages: the conversation; system messages go in the ``system`` field.
            proxy: overrides the instance's proxy for this call.
            **kwargs: sampling options (``max_tokens``, ``temperature``, ``top_p``,
                ``top_k``, ``stop``), and ``info``, a :class:`StreamInfo` to fill.

        Raises:
            ProviderError: a subclass saying whether retrying can help.
        """
        info: StreamInfo = kwargs.pop("info", None) or StreamInfo()
        body = self._body(self.get_model(model or self.model), messages, kwargs)
        tool_input = kwargs.get("response_schema") is not None
        parser = AnthropicSseParser(info, secret=self._api_key, tool_input=tool_input)
        try:
            async with self.session.post(
                self._url,
                data=body,
                headers=self._headers,
                proxy=proxy or self.proxy,
                timeout=self.request_timeout,
            ) as response:
                info.http_status = response.status
                if response.status >= 400:
                    raise await response_error(response, secret=self._api_key)
                if not self.stream:
                    answer = await read_json_object(response, info.http_status)
                    text = read_message(answer, info, secret=self._api_key, tool_input=tool_input)
                    if text:
                        yield text
                    return
                # readany() until b"" is iter_any() without its iterator's cost per piece
                while data := await response.content.readany():
                    for text in parser.feed(data):
                        yield text
                    if parser.error is not None:
                        raise parser.error
        except HTTP_ERRORS as exc:
            raise http_error(exc, self.timeout, info.http_status) from exc
        for text in parser.close():
            yield text
        if parser.error is not None:
            raise parser.error
        if not parser.done and info.finish_reason is None:
            raise TransientError("stream ended before message_stop", http_status=info.http_status)


def split_system(
    messages: Sequence[Mapping[str, Any]],
) -> tuple[str | None, list[dict[str, Any]]]:
    """Split a conversation into Anthropic's ``system`` text and its ``messages``.

    System (and developer) messages, wherever they stand, are joined by a blank line
    into ``system``; the rest keep their order and roles, their OpenAI-style
    ``image_url`` parts made ``image`` blocks (:func:`image_block`).
    """
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            text = to_text(message.get("content"))
            if text.strip():
                system.append(text)
        else:
            content = message.get("content")
            if isinstance(content, list):
                content = [image_block(part) for part in content]
            turns.append({"role": role, "content": "" if content is None else content})
    return ("\n\n".join(system) if system else None), turns


def image_block(part: Any) -> Any:
    """An OpenAI ``image_url`` part as an Anthropic ``image`` block; other parts as they are.

    A ``data:`` URL becomes a ``base64`` source with its media type, any other URL a
    ``url`` source.
    """
    if not (isinstance(part, Mapping) and part.get("type") == "image_url"):
        return part
    url = str((part.get("image_url") or {}).get("url", ""))
    header, comma, data = url.partition(",")
    if url.startswith("data:") and comma and header.endswith(";base64"):
        media = header[len("data:") : -len(";base64")]
        source = {"type": "base64", "media_type": media, "data": data}
    else:
        source = {"type": "url", "url": url}
    return {"type": "image", "source": source}


async def response_error(
    response: aiohttp.ClientResponse, *, secret: str | None = None
) -> ProviderError:
    """The error for a failed ``response``: its status decides, its error body explains.

    A 429 waits what ``retry-after`` or the ``anthropic-ratelimit-*-reset`` times ask;
    401 and 403 are :class:`Unauthorized`; 529 and other 5xx are transient; other 4xx
    are permanent. ``secret`` is blanked out of the quoted body.
    """
    try:
        raw = await response.read()
    except HTTP_ERRORS:
        raw = b""
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and "error" in parsed:
        kind, message = error_text(parsed["error"])
        detail = ": ".join(part for part in (kind, message) if part)
    else:
        detail = raw.decode("utf-8", "replace").strip()[:200]
    if secret:
        detail = detail.replace(secret, "***")
    return status_error(
        response.status,
        f"messages request failed: {detail}" if detail else "messages request failed",
        retry_after=retry_after_from(response.headers),
        auth_error=Unauthorized,
    )


ANSWER_TOOL = "answer"  # the tool that carries a --schema answer


@functools.lru_cache(maxsize=8)
def _loaded(schema: str) -> Any:
    return json.loads(schema)  # (parsed once a job: the body is built for every request)
