"""OpenAIChat: any server speaking OpenAI's chat-completions API.

OpenAI itself, vLLM, Ollama, llama.cpp's server, LM Studio, LiteLLM's proxy and
gpt4free's API server all take ``POST {base_url}/chat/completions``. Unlike AiChatOnline
this API keeps roles, so the row's messages are sent as they are, with the sampling
options the user set. Answers stream as Server-Sent Events (``data: {json}`` lines,
comments, ``data: [DONE]``); the text is the concatenation of
``choices[0].delta.content``; usage comes in the last event. ``stream=False`` asks for
one plain JSON answer instead.

The API key comes from the environment (``OPENAI_API_KEY`` or the variable the job
names) and is never shown. A 401 or 403 is :class:`Unauthorized`: no retry fixes a bad
key, so the run stops instead of failing every row.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, ClassVar

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
    response_error,
)
from .base import AsyncGeneratorProvider, ProviderModelMixin, StreamInfo, whole_answer

log = logging.getLogger(__name__)

__all__ = ["OpenAIChat", "SseParser"]

_DONE = object()


class SseParser:
    """Turns a chat-completions event stream, fed in pieces, into text deltas.

    Lines end at CR, LF or CRLF, and a field's value loses one leading space, as the
    Server-Sent Events format says. Fills ``info`` with the finish reason and usage as
    they arrive, counts data that is not JSON as garbage, and raises the mapped error
    for an ``error`` event.
    """

    __slots__ = ("_data", "_lines", "done", "info", "secret")

    def __init__(self, info: StreamInfo, *, secret: str | None = None) -> None:
        self.info = info
        self.secret = secret
        self._lines = LineSplitter()
        self._data: list[bytes] = []
        self.done = False

    def feed(self, data: bytes) -> list[str]:
        """Take the next piece of the body; return the text deltas it completed."""
        return self._read(self._lines.feed(data))

    def close(self) -> list[str]:
        """End of body: take what is left, including an event without its blank line."""
        return self._read([*self._lines.close(), b""])

    def _read(self, lines: list[bytes]) -> list[str]:
        texts: list[str] = []
        for line in lines:
            if not line:  # a blank line ends an event
                if self._data:
                    text = self._event(b"\n".join(self._data))
                    self._data = []
                    if text:
                        texts.append(text)
                continue
            name, _, value = line.partition(b":")
            # comments (":...") and other fields (event:, id:, retry:) carry no text
            if name == b"data":
                self._data.append(value[1:] if value[:1] == b" " else value)
        return texts

    def _event(self, data: bytes) -> str | None:
        if not data:  # an event whose data is empty is no event
            return None
        if data == b"[DONE]":
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
        return read_event(event, self.info, delta=True, secret=self.secret)


def read_event(
    event: dict[str, Any], info: StreamInfo, *, delta: bool, secret: str | None = None
) -> str | None:
    """The text of one chat-completions object (a stream chunk, or a whole answer).

    Raises:
        ProviderError: the object is an ``error`` (``secret`` blanked from its message).
    """
    if "error" in event:
        raise event_error(event["error"], info.http_status, secret=secret)
    usage = event.get("usage")
    if isinstance(usage, dict):
        info.prompt_tokens = _int(usage.get("prompt_tokens"))
        info.completion_tokens = _int(usage.get("completion_tokens"))
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    if choice.get("finish_reason"):
        info.finish_reason = str(choice["finish_reason"])
    body = choice.get("delta" if delta else "message")
    content = body.get("content") if isinstance(body, dict) else None
    return content if isinstance(content, str) and content else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def event_error(
    error: object, http_status: int | None, *, secret: str | None = None
) -> ProviderError:
    """The exception for an ``error`` object inside an answer.

    Its ``type`` and ``code`` say whether to retry; an overload (``overloaded`` in
    either) is :class:`Overloaded` with the 503 it stands for, so ``-c auto`` cuts.
    ``secret`` (the API key) is blanked out of the message, in case the server quotes it.
    """
    fields = error if isinstance(error, dict) else {"message": str(error)}
    kind = f"{fields.get('type') or ''} {fields.get('code') or ''}".lower()
    message = f"error in the answer: {fields.get('message') or kind.strip() or 'unknown'}"
    if secret:
        message = message.replace(secret, "***")
    if "rate_limit" in kind:
        return RateLimited(message, http_status=http_status)
    if "api_key" in kind or "authentication" in kind or "permission" in kind:
        return Unauthorized(message, http_status=http_status)
    if "invalid_request" in kind or "context_length" in kind:
        return PermanentError(message, http_status=http_status)
    if "overloaded" in kind:
        return Overloaded(message, http_status=503)
    return TransientError(message, http_status=http_status)


class OpenAIChat(AsyncGeneratorProvider, ProviderModelMixin):
    """An OpenAI-compatible chat-completions server.

    Args:
        api_key: the key (read from the environment by the runner); ``None`` for local
            servers that need none.
        stream: stream the answer (``False``: one plain JSON answer).
        **kwargs: see :class:`AsyncGeneratorProvider`.
    """

    name: ClassVar[str] = "openai"
    url: ClassVar[str] = "https://api.openai.com/v1"
    default_model: ClassVar[str] = "gpt-4o-mini"
    models: ClassVar[Sequence[str]] = ()  # whatever the server serves
    api_key_env: ClassVar[str | None] = "OPENAI_API_KEY"
    sampling_options: ClassVar[frozenset[str]] = frozenset(
        {"temperature", "top_p", "max_tokens", "seed", "stop"}
    )
    can_disable_stream: ClassVar[bool] = True
    reports_usage: ClassVar[bool] = True
    structured_output: ClassVar[bool] = True
    takes_images: ClassVar[bool] = True
    batch_api: ClassVar[bool] = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._url = f"{self.base_url}/chat/completions"
        self._headers = {"Content-Type": "application/json"}
        if self._api_key:
            self._headers["Authorization"] = f"Bearer {self._api_key}"

    def __repr__(self) -> str:
        return f"OpenAIChat(base_url={self.base_url!r}, stream={self.stream})"

    def render(self, request: ChatRequest) -> str:
        """The messages sent for ``request``, as JSON (images described, not included)."""
        return dumps(request.shown_dicts)

    def batch_body(self, request: ChatRequest) -> dict[str, Any]:
        """The chat-completions body of ``request`` for the Batch API (never streamed)."""
        messages, options = self.call_args(request)
        return self._request(self.get_model(request.model or self.model), messages, options)

    def batch_answer(self, body: dict[str, Any], *, schema: bool = False) -> Completion:
        """The answer in a Batch API result's ``response.body`` (a chat completion).

        Raises:
            ProviderError: the body is an ``error``, or has no text.
        """
        info = StreamInfo(http_status=200)
        text = read_event(body, info, delta=False, secret=self._api_key)
        return whole_answer(text, info)

    def _body(
        self, model: str, messages: Sequence[Mapping[str, Any]], options: dict[str, Any]
    ) -> bytes:
        body = self._request(model, messages, options)
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return dumps(body).encode()

    def _request(
        self, model: str, messages: Sequence[Mapping[str, Any]], options: dict[str, Any]
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "messages": list(messages)}
        body.update((k, v) for k, v in options.items() if k in self.sampling_options)
        if isinstance(body.get("stop"), tuple):
            body["stop"] = list(body["stop"])
        schema = options.get("response_schema")
        if schema is not None:
            body["response_format"] = response_format(schema, options.get("json_mode"))
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
            messages: the conversation, roles kept.
            proxy: overrides the instance's proxy for this call.
            **kwargs: sampling options, and ``info``, a :class:`StreamInfo` to fill.

        Raises:
            ProviderError: a subclass saying whether retrying can help.
        """
        info: StreamInfo = kwargs.pop("info", None) or StreamInfo()
        body = self._body(self.get_model(model or self.model), messages, kwargs)
        parser = SseParser(info, secret=self._api_key)
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
                    raise await response_error(
                        response, "chat completion", secret=self._api_key, auth_error=Unauthorized
                    )
                if not self.stream:
                    answer = await read_json_object(response, info.http_status)
                    text = read_event(answer, info, delta=False, secret=self._api_key)
                    if text:
                        yield text
                    return
                # readany() until b"" is iter_any() without its iterator's cost per piece
                while data := await response.content.readany():
                    for text in parser.feed(data):
                        yield text
        except HTTP_ERRORS as exc:
            raise http_error(exc, self.timeout, info.http_status) from exc
        for text in parser.close():
            yield text
        _check_done(parser, info)


def _check_done(parser: SseParser, info: StreamInfo) -> None:
    """A stream that ends without ``[DONE]`` or a finish reason was cut short."""
    if not parser.done and info.finish_reason is None:
        raise TransientError("stream ended before [DONE]", http_status=info.http_status)


@functools.lru_cache(maxsize=8)  # the body is built for every request; the schema is the job's
def response_format(schema: str, mode: object) -> dict[str, Any]:
    """The ``response_format`` asking for ``schema`` (``json_object`` in ``object`` mode)."""
    if mode == "object":
        return {"type": "json_object"}
    value = json.loads(schema)
    name = value.get("title") if isinstance(value.get("title"), str) else "answer"
    name = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)[:64] or "answer"
    return {"type": "json_schema", "json_schema": {"name": name, "schema": value, "strict": True}}
