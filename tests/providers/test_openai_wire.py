"""OpenAIChat on the wire: the SSE parser, requests, error mapping and the API key.

The parser is a pure unit, fed bytes in any split. The provider's HTTP is faked with
aioresponses (aiohttp's client only); nothing of aibatch is patched.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import anyio
import pytest
from aioresponses import CallbackResult, aioresponses
from yarl import URL

from aibatch.errors import (
    ConnectionRefused,
    Overloaded,
    PermanentError,
    ProviderError,
    RateLimited,
    TokenRejected,
    TransientError,
    Unauthorized,
)
from aibatch.providers._http import parse_duration, retry_after_from, status_error
from aibatch.providers.base import StreamInfo
from aibatch.providers.openai import OpenAIChat, SseParser, event_error, read_event
from aibatch.types import ChatRequest, Completion, Message
from tests.providers.compat import CompatResponse

BASE = "https://llm.test/v1"
CHAT_URL = f"{BASE}/chat/completions"
KEY = "sk-test-9c1f4e7a2b8d6053aa"


# what servers send


def chunk(content: str | None = None, *, finish: str | None = None, **delta: Any) -> dict[str, Any]:
    if content is not None:
        delta["content"] = content
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def usage_event(prompt: int = 11, completion: int = 7) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


def sse(*events: dict[str, Any] | str, done: bool = True, eol: bytes = b"\n") -> bytes:
    """A stream of ``data:`` events; a str is sent as the data as it is."""
    lines = [
        b"data: " + (e if isinstance(e, str) else json.dumps(e)).encode() + eol + eol
        for e in events
    ]
    if done:
        lines.append(b"data: [DONE]" + eol + eol)
    return b"".join(lines)


def whole(content: str | None, *, finish: str = "stop", usage: bool = True) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
            }
        ],
    }
    if usage:
        answer["usage"] = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    return answer


def error_body(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


STREAM = sse(
    chunk("", role="assistant"),
    chunk("Grüße, "),
    chunk("wie geht's? 🙂"),
    chunk(" Fine."),
    chunk(finish="stop"),
    usage_event(),
)
STREAM_TEXT = "Grüße, wie geht's? 🙂 Fine."


def parse(*pieces: bytes) -> tuple[list[str], SseParser]:
    parser = SseParser(StreamInfo(http_status=200))
    texts: list[str] = []
    for piece in pieces:
        texts += parser.feed(piece)
    texts += parser.close()
    return texts, parser


def split_every(data: bytes, sizes: list[int]) -> list[bytes]:
    pieces, start, i = [], 0, 0
    while start < len(data):
        pieces.append(data[start : start + sizes[i % len(sizes)]])
        start += sizes[i % len(sizes)]
        i += 1
    return pieces


# the SSE parser


def test_the_parser_reads_the_deltas_in_order():
    texts, parser = parse(STREAM)

    assert texts == ["Grüße, ", "wie geht's? 🙂", " Fine."]
    assert parser.done
    assert parser.info.finish_reason == "stop"
    assert parser.info.garbage_lines == 0


def test_the_parser_gives_the_same_text_fed_byte_by_byte():
    texts, parser = parse(*(STREAM[i : i + 1] for i in range(len(STREAM))))

    assert "".join(texts) == STREAM_TEXT
    assert parser.done
    assert (parser.info.prompt_tokens, parser.info.completion_tokens) == (11, 7)


@pytest.mark.parametrize("sizes", [[2], [3, 7], [5, 1, 13], [64], [1, 100]])
def test_the_parser_gives_the_same_text_in_odd_splits(sizes):
    texts, parser = parse(*split_every(STREAM, sizes))

    assert "".join(texts) == STREAM_TEXT
    assert parser.done
    assert parser.info.finish_reason == "stop"
    assert (parser.info.prompt_tokens, parser.info.completion_tokens) == (11, 7)


def test_the_parser_gives_the_same_text_split_at_any_single_point():
    # every cut, including inside a multi-byte character and between \r and \n
    for at in range(len(STREAM) + 1):
        texts, parser = parse(STREAM[:at], STREAM[at:])
        assert "".join(texts) == STREAM_TEXT, at
        assert parser.done


def test_crlf_line_endings_read_like_lf():
    stream = sse(chunk("Hel"), chunk("lo"), chunk(finish="stop"), usage_event(), eol=b"\r\n")

    whole_texts, whole_parser = parse(stream)
    split_texts, _ = parse(*split_every(stream, [1, 2]))

    assert whole_texts == split_texts == ["Hel", "lo"]
    assert whole_parser.done
    assert whole_parser.info.garbage_lines == 0
    assert whole_parser.info.prompt_tokens == 11


def test_a_lone_cr_ends_a_line_wherever_the_body_is_split():
    stream = sse(chunk("Hel"), chunk("lo"), chunk(finish="stop"), usage_event(), eol=b"\r")

    for at in range(len(stream) + 1):
        texts, parser = parse(stream[:at], stream[at:])
        assert texts == ["Hel", "lo"], at
        assert parser.done
        assert parser.info.garbage_lines == 0


def test_a_crlf_split_between_two_pieces_is_one_line_end():
    # Were the CR and the LF two line ends, the blank line between them would end the
    # event after its first data line, and each half would be garbage.
    event = json.dumps(chunk("joined"), indent=1).encode().split(b"\n")
    pieces = [b"data: " + line + b"\r" for line in event]
    pieces = [pieces[0]] + [b"\n" + piece for piece in pieces[1:]] + [b"\n\r\n"]

    texts, parser = parse(*pieces)

    assert texts == ["joined"]
    assert parser.info.garbage_lines == 0


def test_lines_ending_in_a_mix_of_cr_lf_and_crlf_are_read():
    stream = (
        b"data: " + json.dumps(chunk("a")).encode() + b"\r\r"
        b": comment\n\n"
        b"data: " + json.dumps(chunk("b")).encode() + b"\n\r\n"
        b"data: [DONE]\r\n\r"
    )

    texts, parser = parse(*split_every(stream, [1, 3]))

    assert texts == ["a", "b"]
    assert parser.done


def test_only_one_leading_space_of_a_field_value_is_dropped():
    # "data:  [DONE]" carries " [DONE]", which is not the end marker.
    texts, parser = parse(b"data: " + json.dumps(chunk("x")).encode() + b"\n\ndata:  [DONE]\n\n")

    assert texts == ["x"]
    assert not parser.done
    assert parser.info.garbage_lines == 1


def test_comments_and_event_id_and_retry_fields_carry_no_text():
    stream = (
        b": OPENROUTER PROCESSING\n\n"
        b":keep-alive\n\n"
        b"event: message\nid: 41\nretry: 1000\n"
        + b"data: "
        + json.dumps(chunk("only this")).encode()
        + b"\n\n"
        b"event: ping\n\n"
        b"id: 42\n\n"
        b"data: [DONE]\n\n"
    )

    texts, parser = parse(stream)

    assert texts == ["only this"]
    assert parser.done
    assert parser.info.garbage_lines == 0


def test_a_data_field_over_several_lines_is_joined_into_one_event():
    event = json.dumps(chunk("joined"), indent=1)
    stream = b"".join(b"data: " + line.encode() + b"\n" for line in event.splitlines())

    texts, parser = parse(stream + b"\n" + b"data: [DONE]\n\n")

    assert texts == ["joined"]
    assert parser.info.garbage_lines == 0


def test_data_without_a_space_after_the_colon_is_read():
    texts, parser = parse(b"data:" + json.dumps(chunk("tight")).encode() + b"\n\ndata:[DONE]\n\n")

    assert texts == ["tight"]
    assert parser.done


def test_done_ends_the_stream_and_adds_no_text():
    texts, parser = parse(b"data: [DONE]\n\n")

    assert texts == []
    assert parser.done
    assert parser.info.garbage_lines == 0


def test_a_stream_without_done_leaves_done_unset():
    _, parser = parse(sse(chunk("x"), done=False))

    assert not parser.done


def test_data_that_is_not_a_json_object_is_counted_as_garbage():
    stream = sse(
        "not json at all",
        chunk("kept"),
        "[1, 2]",
        '"a string"',
        "{truncated",
        "null",
    )

    texts, parser = parse(stream)

    assert texts == ["kept"]
    assert parser.info.garbage_lines == 5
    assert parser.done


def test_json_that_only_json_loads_reads_is_still_read():
    # the parser's fast path takes UTF-8 without padding; the rest goes to json.loads
    padded = b"  " + json.dumps(chunk("padded")).encode() + b" \t"
    bom = b"\xef\xbb\xbf" + json.dumps(chunk("bom")).encode()
    sixteen = json.dumps(chunk("sixteen")).encode("utf-16-le")
    two_values = b'{"a": 1} {"b": 2}'
    stream = b"".join(b"data: " + data + b"\n\n" for data in (padded, bom, sixteen, two_values))

    texts, parser = parse(stream)

    assert (texts, parser.info.garbage_lines) == (["padded", "bom", "sixteen"], 1)


def test_blank_lines_alone_are_not_garbage():
    texts, parser = parse(b"\n\n\r\n\n" + sse(chunk("a")) + b"\n\n")

    assert texts == ["a"]
    assert parser.info.garbage_lines == 0


def test_an_event_without_its_blank_line_is_taken_when_the_body_ends():
    parser = SseParser(StreamInfo())

    assert parser.feed(b"data: " + json.dumps(chunk("last")).encode()) == []
    assert parser.close() == ["last"]


def test_done_without_its_blank_line_is_taken_when_the_body_ends():
    _, parser = parse(sse(chunk("a"), done=False) + b"data: [DONE]")

    assert parser.done


def test_role_only_empty_and_null_deltas_add_no_text():
    stream = sse(
        chunk("", role="assistant"),
        chunk(None),
        {**chunk("x"), "choices": [{"index": 0, "delta": {"content": None}}]},
        chunk("a"),
        {"choices": []},
        {"choices": [None]},
        {"choices": "no"},
        chunk(finish="stop"),
    )

    texts, parser = parse(stream)

    assert texts == ["a"]
    assert parser.info.garbage_lines == 0


def test_usage_only_in_the_last_event_fills_the_token_counts():
    stream = sse(
        {**chunk("a"), "usage": None},
        {**chunk("b"), "usage": None},
        {**chunk(finish="stop"), "usage": None},
        usage_event(prompt=21, completion=2),
    )

    texts, parser = parse(stream)

    assert texts == ["a", "b"]
    assert (parser.info.prompt_tokens, parser.info.completion_tokens) == (21, 2)
    assert parser.info.finish_reason == "stop"


def test_without_usage_the_token_counts_stay_unknown():
    _, parser = parse(sse(chunk("a"), chunk(finish="stop")))

    assert parser.info.prompt_tokens is None
    assert parser.info.completion_tokens is None


def test_token_counts_that_are_not_whole_numbers_are_unknown():
    bad = {"choices": [], "usage": {"prompt_tokens": "11", "completion_tokens": True}}

    _, parser = parse(sse(chunk("a"), bad))

    assert parser.info.prompt_tokens is None
    assert parser.info.completion_tokens is None


def test_the_finish_reason_length_is_kept():
    _, parser = parse(sse(chunk("cut sh"), chunk(finish="length")))

    assert parser.info.finish_reason == "length"


ERRORS = [
    ({"type": "tokens", "code": "rate_limit_exceeded"}, RateLimited),
    ({"type": "rate_limit_error", "code": None}, RateLimited),
    ({"type": "invalid_request_error", "code": "invalid_api_key"}, Unauthorized),
    ({"type": "authentication_error", "code": None}, Unauthorized),
    ({"type": "permission_error", "code": None}, Unauthorized),
    ({"type": "invalid_request_error", "code": "context_length_exceeded"}, PermanentError),
    ({"type": "invalid_request_error", "code": None}, PermanentError),
    ({"type": "server_error", "code": None}, TransientError),
    ({"type": None, "code": None}, TransientError),
]
ERROR_IDS = [
    "rate-limit-code",
    "rate-limit-type",
    "invalid-api-key",
    "authentication",
    "permission",
    "context-length",
    "invalid-request",
    "server-error",
    "untyped",
]


@pytest.mark.parametrize(("fields", "expected"), ERRORS, ids=ERROR_IDS)
def test_an_error_event_raises_the_mapped_class(fields, expected):
    parser = SseParser(StreamInfo(http_status=200))
    stream = sse(chunk("partial "), {"error": {"message": "it went wrong", **fields}})

    with pytest.raises(ProviderError) as caught:
        parser.feed(stream)

    assert type(caught.value) is expected
    assert "it went wrong" in str(caught.value)
    assert caught.value.http_status == 200


def test_an_error_event_is_never_taken_as_text():
    parser = SseParser(StreamInfo())

    assert parser.feed(sse(chunk("partial "), done=False)) == ["partial "]
    with pytest.raises(TransientError):
        parser.feed(sse({"error": {"message": "overloaded", "type": "server_error"}}))


@pytest.mark.parametrize(
    "fields",
    [{"type": "overloaded_error", "code": None}, {"type": "server_error", "code": "overloaded"}],
    ids=["type", "code"],
)
def test_an_overload_error_event_is_overloaded_as_a_503(fields):
    parser = SseParser(StreamInfo(http_status=200))
    stream = sse(chunk("partial "), {"error": {"message": "too busy", **fields}})

    with pytest.raises(ProviderError) as caught:
        parser.feed(stream)

    assert type(caught.value) is Overloaded
    assert caught.value.http_status == 503


def test_an_error_that_is_a_plain_string_is_transient_and_quoted():
    error = event_error("upstream exploded", 200)

    assert type(error) is TransientError
    assert "upstream exploded" in str(error)


def test_a_whole_answer_is_read_from_its_message():
    info = StreamInfo()

    text = read_event(whole("All of it.", finish="length"), info, delta=False)

    assert text == "All of it."
    assert info.finish_reason == "length"
    assert (info.prompt_tokens, info.completion_tokens) == (5, 3)


# durations and Retry-After, pure


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1.5s", 1.5),
        ("1h2m3s", 3723.0),
        ("0s", 0.0),
        ("250ms", 0.25),
        ("2m30.5s", 150.5),
    ],
)
def test_a_reset_duration_is_read_in_seconds(value, seconds):
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [None, "", "soon", "1.5", "6m0", "-1s", "1s later", "s"])
def test_a_duration_that_cannot_be_read_is_none(value):
    assert parse_duration(value) is None


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "2"}, 2.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"x-ratelimit-reset-requests": "6m0s"}, 360.0),
        ({"x-ratelimit-reset-tokens": "20ms"}, 0.02),
        ({"x-ratelimit-reset-requests": "1.5s", "x-ratelimit-reset-tokens": "20ms"}, 1.5),
        ({"x-ratelimit-reset-requests": "20ms", "x-ratelimit-reset-tokens": "1.5s"}, 1.5),
        ({"x-ratelimit-reset-requests": "junk", "x-ratelimit-reset-tokens": "20ms"}, 0.02),
        ({"Retry-After": "1", "retry-after-ms": "5000", "x-ratelimit-reset-tokens": "9s"}, 1.0),
        ({"retry-after-ms": "300", "x-ratelimit-reset-tokens": "9s"}, 0.3),
        ({"Retry-After": "soon", "retry-after-ms": "300"}, 0.3),
        ({}, None),
        ({"x-ratelimit-reset-requests": "soon"}, None),
    ],
)
def test_the_wait_a_429_asks_for_comes_from_the_first_header_that_says(headers, seconds):
    wait = retry_after_from(headers)

    assert wait == (None if seconds is None else pytest.approx(seconds))


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, PermanentError),
        (401, Unauthorized),
        (403, Unauthorized),
        (404, PermanentError),
        (408, TransientError),
        (422, PermanentError),
        (429, RateLimited),
        (500, TransientError),
        (503, Overloaded),
        (529, Overloaded),
    ],
)
def test_statuses_map_to_classes_with_unauthorized_for_401_and_403(status, expected):
    error = status_error(status, "detail", retry_after=4.0, auth_error=Unauthorized)

    assert type(error) is expected
    assert error.http_status == status


# the provider over faked HTTP


class FakeServer:
    """The chat-completions endpoint, answered by aioresponses as each test scripts."""

    def __init__(self, mocked: aioresponses, url: str = CHAT_URL) -> None:
        self.mocked = mocked
        self.url = url

    def answer(
        self,
        body: bytes | str | dict[str, Any] = b"",
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
        content_type: str = "text/event-stream",
        exception: Exception | None = None,
        callback: Any = None,
        repeat: bool = False,
    ) -> None:
        if isinstance(body, dict):
            body, content_type = json.dumps(body), "application/json"
        self.mocked.post(
            self.url,
            status=status,
            body=body,
            content_type=content_type,
            headers=headers,
            exception=exception,
            callback=callback,
            repeat=repeat,
            response_class=CompatResponse,
        )

    @property
    def calls(self) -> list[tuple[URL, dict[str, Any]]]:
        return [
            (url, call.kwargs)
            for (verb, url), calls in self.mocked.requests.items()
            if verb == "POST"
            for call in calls
        ]

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(kwargs["data"]) for _, kwargs in self.calls]


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with aioresponses() as mocked:
        yield FakeServer(mocked)


@pytest.fixture
async def provider() -> AsyncIterator[OpenAIChat]:
    async with OpenAIChat(base_url=BASE, api_key=KEY) as p:
        yield p


@pytest.fixture
async def plain_provider() -> AsyncIterator[OpenAIChat]:
    """Asks for one JSON answer (``--no-stream``)."""
    async with OpenAIChat(base_url=BASE, api_key=KEY, stream=False) as p:
        yield p


def ask(*contents: str, system: str | None = None, **options: Any) -> ChatRequest:
    roles = ["user", "assistant"]
    messages = tuple(Message(roles[i % 2], c) for i, c in enumerate(contents))
    if system is not None:
        messages = (Message("system", system), *messages)
    return ChatRequest(
        messages=messages, model="gpt-4o-mini", options=tuple(sorted(options.items()))
    )


async def complete(provider: OpenAIChat, request: ChatRequest | None = None) -> Completion:
    with anyio.fail_after(5):
        return await provider.complete(request or ask("Hi"))


async def chunks_of(provider: OpenAIChat, info: StreamInfo, **options: Any) -> list[str]:
    messages = [{"role": "user", "content": "Hi"}]
    with anyio.fail_after(5):
        return [
            c
            async for c in provider.create_async_generator(
                "gpt-4o-mini", messages, info=info, **options
            )
        ]


async def failure(provider: OpenAIChat, request: ChatRequest | None = None) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await complete(provider, request)
    return caught.value


async def stream_failure(provider: OpenAIChat) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await chunks_of(provider, StreamInfo())
    return caught.value


def shown(exc: BaseException) -> list[str]:
    return [str(exc), repr(exc), "".join(traceback.format_exception(exc))]


def assert_key_kept(exc: BaseException) -> None:
    for text in shown(exc):
        assert KEY not in text


# requests


async def test_the_request_goes_to_chat_completions_under_the_base_url(server, provider):
    server.answer(STREAM)

    await complete(provider)

    [(url, _)] = server.calls
    assert url == URL(CHAT_URL)


async def test_a_trailing_slash_on_the_base_url_is_dropped():
    with aioresponses() as mocked:
        server = FakeServer(mocked)
        server.answer(STREAM)
        async with OpenAIChat(base_url=f"{BASE}/") as p:
            await complete(p)

    [(url, _)] = server.calls
    assert url == URL(CHAT_URL)


async def test_the_body_keeps_the_roles_and_asks_for_a_stream_with_usage(server, provider):
    server.answer(STREAM)
    request = ask("Hi", "Hello", "Bye", system="Be brief.")

    await complete(provider, request)

    [body] = server.bodies
    assert body == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_sampling_options_are_sent_only_when_set_and_stop_as_a_list(server, provider):
    server.answer(STREAM, repeat=True)

    await complete(provider, ask("Hi"))
    await complete(
        provider,
        ask("Hi", temperature=0.0, top_p=0.5, max_tokens=64, seed=7, stop=("\n\n", "END")),
    )
    await complete(provider, ask("Hi", seed=0))

    plain, sampled, seeded = server.bodies
    assert not {"temperature", "top_p", "max_tokens", "seed", "stop"} & set(plain)
    assert {k: sampled[k] for k in ("temperature", "top_p", "max_tokens", "seed", "stop")} == {
        "temperature": 0.0,
        "top_p": 0.5,
        "max_tokens": 64,
        "seed": 7,
        "stop": ["\n\n", "END"],
    }
    assert seeded["seed"] == 0


async def test_options_the_provider_does_not_take_are_not_sent(server, provider):
    server.answer(STREAM)

    await chunks_of(provider, StreamInfo(), temperature=0.2, logit_bias={"1": 5}, user="me")

    [body] = server.bodies
    assert body["temperature"] == 0.2
    assert "logit_bias" not in body and "user" not in body


async def test_the_generator_and_complete_send_the_same_body(server, provider):
    server.answer(STREAM, repeat=True)

    await chunks_of(provider, StreamInfo(), max_tokens=5, stop=("x",))
    await complete(provider, ask("Hi", max_tokens=5, stop=("x",)))

    first, second = server.bodies
    assert first == second


@pytest.mark.parametrize("model", ["", "my-local-model"])
async def test_any_model_is_sent_and_none_means_the_default(server, provider, model):
    server.answer(STREAM)
    request = ChatRequest(messages=(Message("user", "Hi"),), model=model)

    await complete(provider, request)

    assert server.bodies[0]["model"] == (model or "gpt-4o-mini")


async def test_a_call_that_names_no_model_sends_the_instances(server):
    server.answer(STREAM)

    async with OpenAIChat(base_url=BASE, model="llama3") as p:
        await complete(p, ChatRequest(messages=(Message("user", "Hi"),), model=""))

    assert server.bodies[0]["model"] == "llama3"


async def test_without_stream_the_body_asks_for_one_answer(server, plain_provider):
    server.answer(whole("ok"))

    await complete(plain_provider)

    [body] = server.bodies
    assert "stream" not in body and "stream_options" not in body


async def test_the_key_is_sent_as_a_bearer_token(server, provider):
    server.answer(STREAM)

    await complete(provider)

    [(_, kwargs)] = server.calls
    assert kwargs["headers"] == {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {KEY}",
    }


@pytest.mark.parametrize("key", [None, ""])
async def test_without_a_key_no_authorization_header_is_sent(server, key):
    server.answer(STREAM)

    async with OpenAIChat(base_url=BASE, api_key=key) as p:
        await complete(p)

    [(_, kwargs)] = server.calls
    assert "Authorization" not in kwargs["headers"]


async def test_the_proxy_is_passed_with_the_request(server):
    server.answer(STREAM)

    async with OpenAIChat(base_url=BASE, proxy="http://proxy.test:3128") as p:
        await complete(p)

    assert server.calls[0][1]["proxy"] == "http://proxy.test:3128"


async def test_render_is_the_messages_sent_as_json(provider):
    request = ask("Hi", "Grüße", system="Be brief.")

    assert json.loads(provider.render(request)) == request.message_dicts
    assert "Grüße" in provider.render(request)


# answers


async def test_the_generator_yields_the_deltas_and_fills_the_stream_info(server, provider):
    server.answer(STREAM)
    info = StreamInfo()

    got = await chunks_of(provider, info)

    assert got == ["Grüße, ", "wie geht's? 🙂", " Fine."]
    assert info.http_status == 200
    assert (info.prompt_tokens, info.completion_tokens, info.finish_reason) == (11, 7, "stop")


async def test_complete_returns_the_answer_its_usage_and_finish_reason(server, provider):
    server.answer(STREAM)

    completion = await complete(provider)

    assert completion.text == STREAM_TEXT
    assert completion.http_status == 200
    assert (completion.prompt_tokens, completion.completion_tokens) == (11, 7)
    assert completion.finish_reason == "stop"
    assert completion.ttfb_ms is not None and completion.ttfb_ms >= 0


async def test_garbage_between_events_is_counted_and_the_answer_kept(server, provider):
    server.answer(b"data: <html>\n\n" + STREAM + b"data: oops\n\n")

    completion = await complete(provider)

    assert completion.text == STREAM_TEXT
    assert completion.garbage_lines == 2


async def test_a_stream_with_a_finish_reason_but_no_done_is_complete(server, provider):
    server.answer(sse(chunk("fine"), chunk(finish="stop"), done=False))

    assert (await complete(provider)).text == "fine"


async def test_a_stream_with_done_but_no_finish_reason_is_complete(server, provider):
    server.answer(sse(chunk("fine")))

    assert (await complete(provider)).text == "fine"


@pytest.mark.parametrize("path", ["complete", "generator"])
async def test_a_stream_ending_without_done_or_finish_reason_is_transient(server, provider, path):
    server.answer(sse(chunk("half an ans"), done=False))

    error = await (failure(provider) if path == "complete" else stream_failure(provider))

    assert type(error) is TransientError
    assert "[DONE]" in str(error)
    assert error.http_status == 200


@pytest.mark.parametrize("body", [b"", b"\n\n", sse(), sse(chunk("", role="assistant"))])
async def test_a_stream_without_text_is_transient(server, provider, body):
    server.answer(body)

    error = await failure(provider)

    assert type(error) is TransientError


@pytest.mark.parametrize(("fields", "expected"), ERRORS, ids=ERROR_IDS)
async def test_an_error_event_in_a_200_stream_raises_the_mapped_class(
    server, provider, fields, expected
):
    server.answer(sse(chunk("partial "), {"error": {"message": "mid-stream", **fields}}))

    error = await failure(provider)

    assert type(error) is expected
    assert error.http_status == 200
    assert "mid-stream" in str(error)


async def test_the_generator_raises_an_error_event_instead_of_yielding_it(server, provider):
    server.answer(sse(chunk("partial "), error_body("overloaded", "server_error")))
    got: list[str] = []

    with pytest.raises(TransientError) as caught, anyio.fail_after(5):
        async for text in provider.create_async_generator(
            "gpt-4o-mini", [{"role": "user", "content": "Hi"}]
        ):
            got.append(text)

    assert "overloaded" in str(caught.value)
    assert not any("overloaded" in text for text in got)


async def test_no_stream_reads_one_json_answer(server, plain_provider):
    server.answer(whole("The whole answer.", finish="length"))

    completion = await complete(plain_provider)

    assert completion.text == "The whole answer."
    assert completion.finish_reason == "length"
    assert (completion.prompt_tokens, completion.completion_tokens) == (5, 3)
    assert completion.http_status == 200


async def test_no_stream_through_the_generator_yields_the_answer_once(server, plain_provider):
    server.answer(whole("once"))
    info = StreamInfo()

    assert await chunks_of(plain_provider, info) == ["once"]
    assert info.finish_reason == "stop"


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", b'"text"', b""],
    ids=["not-json", "list", "string", "empty"],
)
async def test_no_stream_with_an_answer_that_is_not_a_json_object_is_transient(
    server, plain_provider, body
):
    server.answer(body, content_type="application/json")

    error = await failure(plain_provider)

    assert type(error) is TransientError
    assert error.http_status == 200


@pytest.mark.parametrize("content", [None, ""])
async def test_no_stream_with_an_empty_answer_is_transient(server, plain_provider, content):
    server.answer(whole(content))

    error = await failure(plain_provider)

    assert type(error) is TransientError
    assert "empty answer" in str(error)


async def test_no_stream_with_an_error_object_raises_the_mapped_class(server, plain_provider):
    server.answer(error_body("too long", "invalid_request_error", "context_length_exceeded"))

    error = await failure(plain_provider)

    assert type(error) is PermanentError
    assert "too long" in str(error)


# error mapping


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "17"}, 17.0),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after-ms": "20"}, 0.02),
        ({"x-ratelimit-reset-requests": "6m0s"}, 360.0),
        ({"x-ratelimit-reset-tokens": "20ms"}, 0.02),
        ({"x-ratelimit-reset-requests": "1.5s", "x-ratelimit-reset-tokens": "20ms"}, 1.5),
        (None, None),
    ],
)
async def test_429_is_rate_limited_with_the_wait_the_headers_ask_for(
    server, provider, headers, seconds
):
    server.answer(
        error_body("Rate limit reached", "tokens", "rate_limit_exceeded"),
        status=429,
        headers=headers,
    )

    error = await failure(provider)

    assert isinstance(error, RateLimited)
    assert error.http_status == 429
    assert error.retry_after == (None if seconds is None else pytest.approx(seconds))
    assert "Rate limit reached" in str(error)


@pytest.mark.parametrize("status", [401, 403])
async def test_401_and_403_are_unauthorized_and_sent_once(server, provider, status):
    server.answer(
        error_body("Incorrect API key provided", "invalid_request_error", "invalid_api_key"),
        status=status,
        repeat=True,
    )

    error = await failure(provider)

    assert type(error) is Unauthorized
    assert isinstance(error, PermanentError)  # never retried
    assert not isinstance(error, TokenRejected)
    assert error.http_status == status
    assert len(server.calls) == 1


@pytest.mark.parametrize("status", [400, 404, 413, 422])
async def test_other_client_errors_are_permanent(server, provider, status):
    server.answer(
        error_body("This model's maximum context length is 8192 tokens", "invalid_request_error"),
        status=status,
    )

    error = await failure(provider)

    assert type(error) is PermanentError
    assert error.http_status == status
    assert "maximum context length" in str(error)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (500, TransientError),
        (502, TransientError),
        (503, Overloaded),
        (504, TransientError),
        (408, TransientError),
    ],
)
async def test_server_trouble_is_transient(server, provider, status, expected):
    server.answer(b"<html>Bad Gateway</html>", status=status, content_type="text/html")

    error = await failure(provider)

    assert type(error) is expected
    assert isinstance(error, TransientError)
    assert error.http_status == status
    assert f"HTTP {status}" in str(error)


async def test_an_error_message_quotes_only_the_start_of_the_body(server, provider):
    server.answer(b'{"error": {"message": "bad request"}}' + b"x" * 5000, status=400)

    error = await failure(provider)

    assert "bad request" in str(error)
    assert len(str(error)) < 400


@pytest.mark.parametrize(
    ("exception", "expected"),
    [
        (aiohttp.ClientConnectionError("connection reset by peer"), TransientError),
        (aiohttp.ServerDisconnectedError(), ConnectionRefused),
        (aiohttp.ClientPayloadError("Response payload is not completed"), TransientError),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), ConnectionRefused),
    ],
    ids=["connection-error", "server-disconnected", "payload-cut", "os-error"],
)
async def test_a_connection_failure_is_transient(server, provider, exception, expected):
    server.answer(exception=exception)

    error = await failure(provider)

    assert type(error) is expected
    assert isinstance(error, TransientError)
    assert error.__cause__ is exception


@pytest.mark.parametrize(
    "exception",
    [TimeoutError(), aiohttp.ServerTimeoutError("read timed out")],
    ids=["timeout", "server-timeout"],
)
async def test_a_timeout_is_transient_and_names_the_option(server, exception):
    server.answer(exception=exception)

    async with OpenAIChat(base_url=BASE, timeout=7.5) as p:
        error = await failure(p)

    assert type(error) is TransientError
    assert "7.5 s (--timeout)" in str(error)


# the key stays secret


@pytest.mark.parametrize(
    "script",
    [
        {"status": 401, "body": error_body("bad key", "invalid_request_error", "invalid_api_key")},
        {"status": 403, "body": b"forbidden"},
        {"status": 429, "body": b"slow", "headers": {"Retry-After": "1"}},
        {"status": 500, "body": b"boom"},
        {"status": 400, "body": b"bad"},
        {"exception": aiohttp.ClientConnectionError("reset")},
        {"exception": aiohttp.ClientPayloadError("cut")},
        {"body": sse(chunk("half"), done=False)},
        {"body": b"data: garbage only\n\n"},
    ],
    ids=["401", "403", "429", "500", "400", "reset", "cut", "no-done", "garbage"],
)
async def test_no_error_shows_the_key(server, provider, script):
    server.answer(repeat=True, **script)

    error = await failure(provider)

    assert_key_kept(error)


@pytest.mark.parametrize("status", [400, 401, 403, 429, 500])
async def test_a_server_echoing_the_key_in_its_error_body_does_not_leak_it(
    server, provider, status
):
    def echo(url: URL, **kwargs: Any) -> CallbackResult:
        sent = kwargs["headers"]["Authorization"].removeprefix("Bearer ")
        message = f"Incorrect API key provided: {sent}. You can find your API key at ..."
        return CallbackResult(
            status=status,
            body=json.dumps(error_body(message, "invalid_request_error", "invalid_api_key")),
            content_type="application/json",
            response_class=CompatResponse,
        )

    server.answer(callback=echo)

    error = await failure(provider)

    assert_key_kept(error)
    assert "Incorrect API key provided: ***" in str(error)


async def test_a_chat_error_raised_through_aiohttp_does_not_show_the_key(server, provider):
    # A ClientResponseError carries the request's headers in its request_info.
    def raise_response_error(url: URL, **kwargs: Any) -> CallbackResult:
        info = aiohttp.RequestInfo(url, "POST", kwargs["headers"], url)
        raise aiohttp.ClientResponseError(info, (), status=502, message="Bad Gateway")

    server.answer(callback=raise_response_error)

    error = await failure(provider)

    assert type(error) is TransientError
    assert_key_kept(error)


@pytest.mark.parametrize("stream", [True, False], ids=["stream-event", "json-answer"])
async def test_a_server_echoing_the_key_in_an_error_object_does_not_leak_it(
    server, stream, request
):
    message = f"Incorrect API key provided: {KEY}"
    body = error_body(message, "invalid_request_error", "invalid_api_key")
    server.answer(sse(body) if stream else body)

    async with OpenAIChat(base_url=BASE, api_key=KEY, stream=stream) as p:
        error = await failure(p)

    assert type(error) is Unauthorized
    assert_key_kept(error)


async def test_the_reprs_of_the_provider_do_not_show_the_key(provider):
    for text in (repr(provider), str(provider), str(provider.stats)):
        assert KEY not in text
