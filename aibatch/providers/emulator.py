"""Emulator: a local aiohttp.web server that speaks the AiChatOnline wire protocol.

With ``protocol="openai"`` it speaks OpenAI's chat completions instead, and with
``protocol="anthropic"`` Anthropic's Messages (shapes in :mod:`.emulator_anthropic`);
both with their Batch API too (:mod:`.emulator_batch`), answered as live requests are.

It is the reference peer of the provider (the public service is gone): gpt4free's own
client, pointed at it, works unchanged. Answers are deterministic functions of the
prompt (:func:`answer_for`), streamed as JSON lines in several chunks. Knobs set the
latency to the first chunk, the delay between chunks and the number of chunks; the
:class:`Faults` knobs inject errors with seeded randomness. ``GET /stats`` returns
counters.

Use it in-process::

    async with Emulator(latency=0.05) as base_url:
        ...

or from the shell: ``aibatch emulate --port 0``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import secrets
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any

import anyio
from aiohttp import web

from ..errors import UsageError
from . import emulator_anthropic as anthropic
from .emulator_batch import BatchStore
from .emulator_batch_anthropic import AnthropicBatches
from .emulator_batch_openai import OpenAIBatches
from .emulator_images import image_note
from .emulator_json import invalid_json_for, json_answer_for
from .faults import PROTOCOLS, Faults
from .helpers import SCHEMA_INSTRUCTION, format_prompt

log = logging.getLogger(__name__)

__all__ = ["PROTOCOLS", "Emulator", "Faults", "answer_for"]

TOKEN_PATH = "/api/v1/user/getUniqueId"
# A request as large as an input cell may be (CSV fields up to 2 GiB), with room for the
# JSON around it; aiohttp's default refuses bodies over 1 MiB with 413.
MAX_BODY = 4 * 2**30
CHAT_PATH = "/aichatonline/api/chat/gpt"


def answer_for(prompt: str) -> str:
    """The emulator's answer to ``prompt``: a digest of it and its first words."""
    digest = hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    preview = " ".join(prompt.split())[:48]
    return f"[{digest}] You said {len(prompt)} characters: {preview}"


def split_chunks(text: str, chunks: int) -> list[str]:
    """Split ``text`` into at most ``chunks`` consecutive non-empty pieces."""
    n = max(1, min(chunks, len(text)))
    step, extra = divmod(len(text), n)
    pieces, start = [], 0
    for i in range(n):
        end = start + step + (1 if i < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces


@dataclass(slots=True)
class _TokenState:
    born: float
    uses: int = 0
    inflight: int = 0


@dataclass(slots=True)
class EmulatorStats:
    """Counters the emulator keeps; ``GET /stats`` returns them as JSON."""

    token_requests: int = 0
    chat_requests: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    inflight: int = 0
    max_inflight: int = 0
    prompts: Counter[str] = field(default_factory=Counter)
    files_uploaded: int = 0
    batches_created: int = 0
    batch_requests: int = 0
    batches_cancelled: int = 0

    def to_dict(self, *, prompts: bool = False) -> dict[str, Any]:
        """The counters as plain JSON-ready values."""
        data = asdict(self)
        data["outcomes"] = dict(self.outcomes)
        data["prompts"] = dict(self.prompts) if prompts else {}
        return data


class Emulator:
    """A local server of the AiChatOnline protocol, or of OpenAI's chat completions.

    Args:
        host: address to bind; loopback by default.
        port: port to bind; 0 lets the OS choose.
        latency: seconds before the first chunk.
        chunk_delay: seconds between chunks.
        chunks: chunks per answer.
        faults: what to inject.
        record_prompts: count chat requests per prompt in ``stats.prompts``.
        protocol: ``"aichatonline"``, ``"openai"`` for ``/v1/chat/completions``, or
            ``"anthropic"`` for ``/v1/messages`` (the prompt of a conversation is its
            ``format_prompt`` flattening).
        api_key: with ``"openai"`` or ``"anthropic"``, the key every request must carry
            (anthropic: as ``x-api-key`` or ``Authorization: Bearer``).
        batch_delay: with ``"openai"`` or ``"anthropic"``, seconds from a batch's
            creation (Batch APIs) to its end; 0 ends it at once.

    Raises:
        UsageError: a negative delay, no chunks, or an unknown protocol.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        chunk_delay: float = 0.0,
        chunks: int = 4,
        faults: Faults | None = None,
        record_prompts: bool = False,
        protocol: str = "aichatonline",
        api_key: str | None = None,
        batch_delay: float = 2.0,
    ) -> None:
        if latency < 0 or chunk_delay < 0 or batch_delay < 0 or chunks < 1:
            raise UsageError("latency, chunk_delay and batch_delay must be >= 0 and chunks >= 1")
        if not 0 <= port <= 65535:
            raise UsageError(f"port must be between 0 and 65535, not {port}")
        if protocol not in PROTOCOLS:
            raise UsageError(f"protocol must be one of {', '.join(PROTOCOLS)}")
        if protocol == "aichatonline" and (faults or Faults()).error_event_rate:
            raise UsageError("the aichatonline protocol has no error event (error_event_rate)")
        self.protocol = protocol
        self.api_key = api_key
        self.host = host
        self.port = port
        self.latency = latency
        self.chunk_delay = chunk_delay
        self.chunks = chunks
        self.faults = faults or Faults()
        self.record_prompts = record_prompts
        self.stats = EmulatorStats()
        self._rng = random.Random(self.faults.seed)
        self._tokens: dict[str, _TokenState] = {}
        self._issued: list[str] = []
        self._starts: deque[float] = deque()
        self._runner: web.AppRunner | None = None
        self.base_url = ""
        self._batches: BatchStore | None = None
        if protocol in ("openai", "anthropic"):
            store = OpenAIBatches if protocol == "openai" else AnthropicBatches
            self._batches = store(
                reply=openai_reply if protocol == "openai" else anthropic_reply,
                faults=self.faults,
                rng=self._rng,
                delay=batch_delay,
                stats=self.stats,
                check_key=self._check_key,
            )

    def __repr__(self) -> str:
        return f"Emulator(base_url={self.base_url!r})"

    def make_app(self) -> web.Application:
        """The aiohttp application, for running under another server."""
        app = web.Application(client_max_size=MAX_BODY)
        if self.protocol == "openai":
            app.router.add_post("/v1/chat/completions", self._openai_chat)
            app.router.add_get("/v1/models", self._models)
        elif self.protocol == "anthropic":
            app.router.add_post(anthropic.MESSAGES_PATH, self._anthropic_messages)
        else:
            app.router.add_get(TOKEN_PATH, self._token)
            app.router.add_post(CHAT_PATH, self._chat)
        app.router.add_get("/stats", self._stats)
        if self._batches is not None:
            app.router.add_routes(self._batches.routes())
        return app

    async def start(self) -> str:
        """Start serving; return the base URL (``http://host:port``, plus ``/v1`` for OpenAI)."""
        self._runner = web.AppRunner(
            self.make_app(), handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        # A deep accept queue: clients open hundreds of connections at once at high
        # concurrency, and overflowing the default (128) costs them a SYN retry (~1 s).
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True, backlog=4096)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.port = port
        self.base_url = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
        if self.protocol == "openai":
            self.base_url += "/v1"
        log.info("emulator serving at %s", self.base_url)
        return self.base_url

    async def stop(self) -> None:
        """Stop serving and close open connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> str:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def end_batches(self) -> int:
        """End every Batch API batch still running, now (for tests and demos).

        Returns:
            How many it ended.
        """
        return 0 if self._batches is None else self._batches.end_all()

    def issued_tokens(self) -> list[str]:
        """Every token this emulator ever handed out (for tests that search for leaks)."""
        return list(self._issued)

    # handlers

    async def _token(self, request: web.Request) -> web.Response:
        self.stats.token_requests += 1
        token = secrets.token_hex(16)
        self._tokens[token] = _TokenState(born=time.monotonic())
        self._issued.append(token)
        return web.json_response({"code": 200, "data": token, "message": "success"})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.to_dict(prompts="prompts" in request.query))

    async def _models(self, request: web.Request) -> web.Response:
        if (refused := self._check_key(request)) is not None:
            return refused
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": name, "object": "model", "created": 0, "owned_by": "aibatch-emulator"}
                    for name in OPENAI_MODELS
                ],
            }
        )

    def _refuse(self, outcome: str, status: int, message: str, **headers: str) -> web.Response:
        self.stats.outcomes[outcome] += 1
        if self.protocol == "openai":
            body: dict[str, Any] = openai_error_body(status, message)
        elif self.protocol == "anthropic":
            body = anthropic.error_body(status, message)
        else:
            body = {"code": status, "message": message}
        return web.json_response(body, status=status, headers=headers)

    def _rate_limited(self, message: str) -> web.Response:
        wait = self.faults.retry_after
        headers = {"Retry-After": f"{wait:g}", "retry-after-ms": f"{wait * 1000:g}"}
        if self.protocol == "anthropic":
            headers.update(anthropic.rate_limit_headers(wait))
        return self._refuse("rate_limited", 429, message, **headers)

    def _overloaded(self, message: str) -> web.Response:
        """Refuse a request above ``max_inflight`` with ``faults.overload_status``."""
        status = self.faults.overload_status
        if status == 429:
            return self._rate_limited(message)
        headers = {"Retry-After": f"{self.faults.retry_after:g}"}
        if status != 529:
            return self._refuse("overloaded", status, message, **headers)
        # 529 is Anthropic's own status: its body is Anthropic's, whatever the protocol
        self.stats.outcomes["overloaded"] += 1
        body = {"type": "error", "error": {"type": "overloaded_error", "message": message}}
        return web.json_response(body, status=status, headers=headers)

    def _check_token(self, token: str | None) -> web.Response | _TokenState:
        state = self._tokens.get(token) if token else None
        if state is None:
            return self._refuse("unauthorized", 401, "missing or unknown UniqueId")
        faults = self.faults
        expired = (faults.token_max_uses is not None and state.uses >= faults.token_max_uses) or (
            faults.token_max_age is not None
            and time.monotonic() - state.born >= faults.token_max_age
        )
        if expired:
            del self._tokens[token]  # type: ignore[arg-type]
            return self._refuse("unauthorized", 401, "UniqueId expired")
        return state

    def _check_key(self, request: web.Request) -> web.Response | None:
        if self.api_key is None:
            return None
        if self.protocol == "anthropic":
            if anthropic.key_of(request.headers) != self.api_key:
                return self._refuse("unauthorized", 401, "invalid x-api-key")
            return None
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._refuse("unauthorized", 401, "Incorrect API key provided")
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        """AiChatOnline: ``UniqueId`` header, body ``{"conversationId", "prompt"}``."""
        self.stats.chat_requests += 1
        state = self._check_token(request.headers.get("UniqueId"))
        if isinstance(state, web.Response):
            return state
        body = await _json_body(request)
        prompt = body.get("prompt") if body is not None else None
        if not isinstance(prompt, str):
            return self._refuse("bad_request", 400, "body needs a string 'prompt'")
        state.uses += 1
        if self.faults.token_concurrency is not None and (
            state.inflight >= self.faults.token_concurrency
        ):
            return self._rate_limited("too many requests in flight for this UniqueId")
        state.inflight += 1
        try:
            return await self._serve(request, prompt, _plain_answer(prompt))
        finally:
            state.inflight -= 1

    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        """OpenAI: ``Authorization`` when started with a key, body ``{"model", "messages"}``."""
        self.stats.chat_requests += 1
        if (refused := self._check_key(request)) is not None:
            return refused
        asked = read_openai_request(await _json_body(request))
        if isinstance(asked, str):
            return self._refuse("bad_request", 400, asked)
        return await self._serve(request, *asked)

    async def _anthropic_messages(self, request: web.Request) -> web.StreamResponse:
        """Anthropic: the key when started with one, body ``{"model", "max_tokens", ...}``."""
        self.stats.chat_requests += 1
        if (refused := self._check_key(request)) is not None:
            return refused
        asked = anthropic.read_request(await _json_body(request), answer_for)
        if isinstance(asked, str):
            return self._refuse("bad_request", 400, asked)
        return await self._serve(request, *asked)

    def _over_limits(self) -> web.Response | None:
        faults = self.faults
        if faults.max_inflight is not None and self.stats.inflight >= faults.max_inflight:
            return self._overloaded("too many requests in flight")
        if faults.max_rps is not None:
            now = time.monotonic()
            while self._starts and now - self._starts[0] >= 1.0:
                self._starts.popleft()
            if len(self._starts) >= faults.max_rps:
                return self._rate_limited("too many requests per second")
            self._starts.append(now)
        return None

    def _draw(self) -> str:
        faults = self.faults
        draw = self._rng.random()
        for name, rate in (
            ("server_error", faults.error_rate),
            ("rate_limited", faults.rate_limit_rate),
            ("cut", faults.cut_rate),
            ("garbage", faults.garbage_rate),
            ("stalled", faults.stall_rate),
            ("overloaded", faults.overload_rate),
            ("error_event", faults.error_event_rate),
            ("invalid_json", faults.invalid_json_rate),
        ):
            if draw < rate:
                return name
            draw -= rate
        return "ok"

    async def _serve(
        self, request: web.Request, prompt: str, answer: _Answer | anthropic.MessagesAnswer
    ) -> web.StreamResponse:
        """Admit a valid chat request (limits, faults), then answer it in its protocol."""
        if self.record_prompts:
            self.stats.prompts[prompt] += 1
        if (refused := self._over_limits()) is not None:
            return refused
        self.stats.inflight += 1
        self.stats.max_inflight = max(self.stats.max_inflight, self.stats.inflight)
        try:
            fault = self._draw()
            if fault == "server_error":
                return self._refuse("server_error", 500, "internal error (injected)")
            if fault == "rate_limited":
                return self._rate_limited("rate limited (injected)")
            if fault == "overloaded":
                status = 529 if self.protocol == "anthropic" else 503
                return self._refuse("overloaded", status, "Overloaded (injected)")
            if fault == "invalid_json" and answer.structured:
                answer.text = invalid_json_for(answer.text, answer.schema)
            delay = self.latency + (self.faults.stall_seconds if fault == "stalled" else 0.0)
            if delay:
                await anyio.sleep(delay)
            if isinstance(answer, anthropic.MessagesAnswer):
                pieces = self._anthropic_pieces(answer, fault)
            elif self.protocol == "openai":
                pieces = self._openai_pieces(answer, fault)
            else:
                pieces = self._aichatonline_pieces(answer, fault)
            return await self._stream(request, pieces, fault, answer.content_type())
        finally:
            self.stats.inflight -= 1

    def _noise(self, choices: Sequence[bytes]) -> bytes:
        return choices[self._rng.randrange(len(choices))]

    def _aichatonline_pieces(self, answer: _Answer, fault: str) -> list[bytes]:
        pieces = [
            json.dumps({"data": {"message": piece}}).encode() + b"\n"
            for piece in split_chunks(answer.text, self.chunks)
        ]
        if fault == "garbage":
            pieces = [line for piece in pieces for line in (self._noise(_NDJSON_NOISE), piece)]
        return pieces

    def _openai_pieces(self, answer: _Answer, fault: str) -> list[bytes]:
        if not answer.stream:
            return [json.dumps(answer.whole()).encode()]
        events = [answer.chunk({"role": "assistant", "content": ""})]
        events += [answer.chunk({"content": p}) for p in split_chunks(answer.text, self.chunks)]
        events.append(answer.chunk({}, finish=True))
        if answer.usage:
            events.append({**answer.chunk({}), "choices": [], "usage": answer.usage_counts()})
        if fault == "error_event":
            error = {"message": "The server had an error (injected)", "type": "server_error"}
            events[len(events) // 2 :] = [{"error": {**error, "code": None}}]
        pieces = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events]
        pieces.append(b"data: [DONE]\n\n")
        if fault == "garbage":
            pieces = [line for piece in pieces for line in (self._noise(_SSE_NOISE), piece)]
        return pieces

    def _anthropic_pieces(self, answer: anthropic.MessagesAnswer, fault: str) -> list[bytes]:
        if not answer.stream:
            return [answer.whole()]
        pieces = answer.events(
            split_chunks(answer.text, self.chunks), fail_midway=fault == "error_event"
        )
        if fault == "garbage":
            pieces = [line for piece in pieces for line in (self._noise(_SSE_NOISE), piece)]
        return pieces

    async def _stream(
        self, request: web.Request, pieces: list[bytes], fault: str, content_type: str
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type})
        try:
            await response.prepare(request)
            if fault == "cut":
                await response.write(pieces[0][: max(1, len(pieces[0]) // 2)])
                assert request.transport is not None
                request.transport.close()
                self.stats.outcomes["cut"] += 1
                return response
            if self.chunk_delay:
                for i, piece in enumerate(pieces):
                    if i:
                        await anyio.sleep(self.chunk_delay)
                    await response.write(piece)
            else:
                await response.write(b"".join(pieces))
            await response.write_eof()
        except ConnectionResetError:  # the client went away (a run stopped): not our error
            self.stats.outcomes["client_gone"] += 1
            return response
        self.stats.outcomes[fault] += 1
        return response


_NDJSON_NOISE = (b"\n", b"not json at all\n", b'{"data": 7}\n', b'{"data": {"message": null}}\n')
_SSE_NOISE = (b": keep-alive\n\n", b"\n", b"data: not json at all\n\n", b"event: ping\n\n")
OPENAI_MODELS = ("gpt-4o-mini", "gpt-4o", "llama3", "qwen2.5")


@dataclass(slots=True)
class _Answer:
    """One answer to serve, with what the OpenAI protocol reports about it."""

    text: str
    model: str = ""
    stream: bool = True
    prompt_tokens: int = 0
    finish_reason: str = "stop"
    usage: bool = False
    structured: bool = False  # asked for JSON: the invalid_json fault applies
    schema: str | None = None
    id: str = field(default_factory=lambda: f"chatcmpl-{secrets.token_hex(8)}")

    def content_type(self) -> str:
        if not self.model:
            return "application/x-ndjson"
        return "text/event-stream" if self.stream else "application/json"

    def usage_counts(self) -> dict[str, int]:
        completion = len(self.text.split())
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }

    def chunk(self, delta: dict[str, str], *, finish: bool = False) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "delta": delta,
                    "finish_reason": self.finish_reason if finish else None,
                }
            ],
        }

    def whole(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.text},
                    "finish_reason": self.finish_reason,
                }
            ],
            "usage": self.usage_counts(),
        }


def openai_error_body(status: int, message: str) -> dict[str, Any]:
    """The JSON body of an OpenAI error answer with ``status``."""
    kind = {401: "invalid_request_error", 429: "rate_limit_error"}.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    code = "invalid_api_key" if status == 401 else None
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def read_openai_request(body: dict[str, Any] | None) -> tuple[str, _Answer] | str:
    """The prompt of a chat completions body and the answer to serve, or what is wrong."""
    messages = body.get("messages") if body is not None else None
    if (
        body is None
        or not isinstance(body.get("model"), str)
        or not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages)
    ):
        return "body needs a 'model' and a list of 'messages'"
    prompt = format_prompt(messages)
    answer = _Answer(
        answer_for(prompt) + image_note(messages),
        model=body["model"],
        stream=bool(body.get("stream")),
        prompt_tokens=len(prompt.split()),
    )
    _structured(answer, prompt, body.get("response_format"))
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and 0 < max_tokens < len(answer.text.split()):
        answer.text = " ".join(answer.text.split()[:max_tokens])
        answer.finish_reason = "length"
    answer.usage = bool((body.get("stream_options") or {}).get("include_usage")) or (
        not answer.stream
    )
    return prompt, answer


def openai_reply(body: object) -> tuple[int, dict[str, Any]]:
    """What ``POST /v1/chat/completions`` answers to ``body`` without streaming.

    The status and the JSON object: the ``chat.completion``, or the error. A line of an
    OpenAI batch is answered by it, so a batch answers what the live endpoint does.
    """
    asked = read_openai_request(body if isinstance(body, dict) else None)
    if isinstance(asked, str):
        return 400, openai_error_body(400, asked)
    return 200, asked[1].whole()


def anthropic_reply(body: object) -> tuple[int, dict[str, Any]]:
    """What ``POST /v1/messages`` answers to ``body`` without streaming: status and JSON."""
    asked = anthropic.read_request(body if isinstance(body, dict) else None, answer_for)
    if isinstance(asked, str):
        return 400, anthropic.error_body(400, asked)
    answer = asked[1]
    answer.stream = False
    message: dict[str, Any] = json.loads(answer.whole())
    return 200, message


def _plain_answer(prompt: str) -> _Answer:
    """AiChatOnline: a JSON answer in a fenced block when the prompt carries a schema."""
    asked, found, schema = prompt.partition(SCHEMA_INSTRUCTION)
    if not found:
        return _Answer(answer_for(prompt))
    try:
        text = json_answer_for(asked, schema)
    except ValueError:
        return _Answer(answer_for(prompt))
    return _Answer(f"Here it is:\n```json\n{text}\n```", structured=True, schema=schema)


def _structured(answer: _Answer, prompt: str, response_format: object) -> None:
    """OpenAI: answer ``response_format``'s JSON (schema or any object) when it asks."""
    if not isinstance(response_format, dict):
        return
    kind = response_format.get("type")
    spec = response_format.get("json_schema")
    if kind == "json_schema" and isinstance(spec, dict) and isinstance(spec.get("schema"), dict):
        answer.schema = json.dumps(spec["schema"])
        answer.text = json_answer_for(prompt, answer.schema)
        answer.structured = True
    elif kind == "json_object":
        answer.text = json.dumps({"answer": answer.text})
        answer.structured = True


async def _json_body(request: web.Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
