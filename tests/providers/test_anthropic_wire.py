"""AnthropicMessages on the wire: the event parser, requests, error mapping and the key.

The parser is a pure unit, fed bytes in any split. The provider's HTTP is faked with
aioresponses (aiohttp's client only); nothing of aibatch is patched.
"""

from __future__ import annotations

import datetime
import json
import traceback
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from aioresponses import aioresponses
from yarl import URL

from aibatch.errors import (
    Overloaded,
    PermanentError,
    ProviderError,
    RateLimited,
    TransientError,
    Unauthorized,
)
from aibatch.providers._http import parse_reset_time, retry_after_from
from aibatch.providers.anthropic import AnthropicMessages, AnthropicSseParser, split_system
from aibatch.providers.base import StreamInfo
from aibatch.types import ChatRequest, Completion, Message
from tests.providers.compat import CompatResponse

BASE = "https://claude.test"
MESSAGES_URL = f"{BASE}/v1/messages"
KEY = "sk-ant-test-4f2a9c7e1b3d8065"
MODEL = "claude-haiku-4-5"


# what the service sends


def event(name: str, data: dict[str, Any] | str, *, eol: bytes = b"\n") -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data)
    return b"event: " + name.encode() + eol + b"data: " + payload.encode() + eol + eol


def start(input_tokens: int = 11, **usage: int) -> bytes:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1, **usage},
    }
    return event("message_start", {"type": "message_start", "message": message})


def delta(text: str, kind: str = "text_delta") -> bytes:
    field = {"text_delta": "text", "thinking_delta": "thinking"}.get(kind, "partial_json")
    body = {"type": "content_block_delta", "index": 0, "delta": {"type": kind, field: text}}
    return event("content_block_delta", body)


def stop(reason: str = "end_turn", output_tokens: int = 7) -> bytes:
    body = {
        "type": "message_delta",
        "delta": {"stop_reason": reason, "stop_sequence": None},
        "usage": {"output_tokens": output_tokens},
    }
    return event("message_delta", body) + event("message_stop", {"type": "message_stop"})


def error_event(kind: str, message: str = "Overloaded") -> bytes:
    return event("error", {"type": "error", "error": {"type": kind, "message": message}})


BLOCK_START = event(
    "content_block_start",
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
)
PING = event("ping", {"type": "ping"})
BLOCK_STOP = event("content_block_stop", {"type": "content_block_stop", "index": 0})
STREAM = (
    start()
    + BLOCK_START
    + PING
    + delta("Grüße, ")
    + delta("wie geht's? 🙂")
    + PING
    + delta(" Fine.")
    + BLOCK_STOP
    + stop()
)
STREAM_TEXT = "Grüße, wie geht's? 🙂 Fine."


def whole(text: str, *, reason: str = "end_turn", **extra: Any) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": text}],
        "stop_reason": reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 3},
        **extra,
    }


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def parse(*pieces: bytes) -> tuple[list[str], AnthropicSseParser]:
    parser = AnthropicSseParser(StreamInfo(http_status=200))
    texts: list[str] = []
    for piece in pieces:
        texts += parser.feed(piece)
    texts += parser.close()
    return texts, parser


# the event parser


def test_the_parser_reads_the_text_deltas_in_order_past_pings():
    texts, parser = parse(STREAM)

    assert texts == ["Grüße, ", "wie geht's? 🙂", " Fine."]
    assert parser.done
    assert parser.info.garbage_lines == 0


def test_the_parser_gives_the_same_text_split_at_any_single_point():
    for at in range(len(STREAM) + 1):
        texts, parser = parse(STREAM[:at], STREAM[at:])
        assert "".join(texts) == STREAM_TEXT, at
        assert parser.done


def test_crlf_line_endings_read_like_lf():
    stream = (
        event("message_start", {"type": "message_start", "message": {}}, eol=b"\r\n")
        + delta("Hel").replace(b"\n", b"\r\n")
        + delta("lo").replace(b"\n", b"\r\n")
        + stop().replace(b"\n", b"\r\n")
    )

    texts, parser = parse(*(stream[i : i + 3] for i in range(0, len(stream), 3)))

    assert texts == ["Hel", "lo"]
    assert parser.done


def test_message_start_gives_the_input_tokens_and_message_delta_the_output_tokens():
    _, parser = parse(start(input_tokens=21) + delta("x") + stop(output_tokens=9))

    assert (parser.info.prompt_tokens, parser.info.completion_tokens) == (21, 9)


def test_prompt_tokens_count_cache_reads_and_writes_too():
    stream = start(input_tokens=3, cache_creation_input_tokens=100, cache_read_input_tokens=50)

    _, parser = parse(stream + delta("x") + stop())

    assert parser.info.prompt_tokens == 153


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("stop_sequence", "stop_sequence"),
        ("refusal", "refusal"),
        ("tool_use", "tool_use"),
    ],
)
def test_the_stop_reason_maps_to_stop_or_length_and_any_other_is_kept_raw(reason, finish):
    _, parser = parse(start() + delta("x") + stop(reason))

    assert parser.info.finish_reason == finish


def test_thinking_and_tool_input_deltas_are_no_answer_text():
    stream = start() + delta("hmm", "thinking_delta") + delta('{"a"', "input_json_delta")

    texts, parser = parse(stream + delta("answer") + stop())

    assert texts == ["answer"]
    assert parser.info.garbage_lines == 0


def test_unknown_events_and_comments_are_ignored():
    stream = (
        b": keep-alive\n\n"
        + event("future_event", {"type": "future_event", "x": 1})
        + b"id: 3\nretry: 100\n\n"
        + start()
        + delta("a")
        + stop()
    )

    texts, parser = parse(stream)

    assert texts == ["a"]
    assert parser.done
    assert parser.info.garbage_lines == 0


def test_data_that_is_not_a_json_object_is_counted_as_garbage():
    stream = event("content_block_delta", "not json") + event("message_delta", "[1]")

    texts, parser = parse(start() + stream + delta("kept") + stop())

    assert texts == ["kept"]
    assert parser.info.garbage_lines == 2


def test_an_error_event_ends_the_reading_keeping_the_text_before_it():
    texts, parser = parse(
        start() + delta("partial ") + error_event("overloaded_error", "Overloaded") + delta("no")
    )

    assert texts == ["partial "]
    assert isinstance(parser.error, TransientError)
    assert "overloaded_error: Overloaded" in str(parser.error)


@pytest.mark.parametrize(
    ("kind", "error_class", "status"),
    [
        ("overloaded_error", Overloaded, 529),
        ("api_error", TransientError, 500),
        ("rate_limit_error", RateLimited, 429),
        ("invalid_request_error", PermanentError, 400),
        ("authentication_error", Unauthorized, 401),
        ("something_new", TransientError, None),
    ],
)
def test_an_error_events_type_decides_its_class(kind, error_class, status):
    _, parser = parse(start() + error_event(kind, "went wrong"))

    assert type(parser.error) is error_class
    assert parser.error.http_status == status


def test_a_stream_without_message_stop_leaves_done_unset():
    _, parser = parse(start() + delta("x"))

    assert not parser.done


def test_an_event_without_its_blank_line_is_taken_when_the_body_ends():
    parser = AnthropicSseParser(StreamInfo())

    assert parser.feed(delta("last").rstrip(b"\n")) == []
    assert parser.close() == ["last"]


# the Retry-After family: Anthropic's reset times


def in_seconds(seconds: float) -> str:
    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)
    return when.isoformat().replace("+00:00", "Z")


def test_an_rfc_3339_reset_time_is_read_as_seconds_from_now():
    assert 99 <= parse_reset_time(in_seconds(100)) <= 100  # type: ignore[operator]


@pytest.mark.parametrize("value", ["", "soon", "12", None])
def test_an_unreadable_reset_time_is_none(value):
    assert parse_reset_time(value) is None


def test_a_reset_time_in_the_past_waits_zero():
    assert parse_reset_time(in_seconds(-60)) == 0.0


def test_retry_after_wins_over_the_reset_times():
    headers = {"Retry-After": "3", "anthropic-ratelimit-requests-reset": in_seconds(60)}

    assert retry_after_from(headers) == 3.0


def test_without_retry_after_the_reset_of_the_spent_limit_is_waited():
    headers = {
        "anthropic-ratelimit-requests-remaining": "12",
        "anthropic-ratelimit-requests-reset": in_seconds(50),
        "anthropic-ratelimit-input-tokens-remaining": "0",
        "anthropic-ratelimit-input-tokens-reset": in_seconds(5),
    }

    assert 4 <= retry_after_from(headers) <= 5  # type: ignore[operator]


def test_without_a_spent_limit_the_latest_reset_is_waited():
    headers = {
        "anthropic-ratelimit-requests-reset": in_seconds(5),
        "anthropic-ratelimit-tokens-reset": in_seconds(20),
    }

    assert 19 <= retry_after_from(headers) <= 20  # type: ignore[operator]


# requests


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with aioresponses() as m:
        yield m


@pytest.fixture
async def provider() -> AsyncIterator[AnthropicMessages]:
    async with AnthropicMessages(base_url=BASE, api_key=KEY) as p:
        yield p


def answer(
    mocked: aioresponses,
    body: bytes | dict[str, Any] = STREAM,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> None:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    content_type = "application/json" if isinstance(body, dict) else "text/event-stream"
    mocked.post(
        MESSAGES_URL,
        status=status,
        body=data,
        content_type=content_type,
        headers=headers,
        response_class=CompatResponse,
    )


def sent(mocked: aioresponses) -> list[dict[str, Any]]:
    return [call.kwargs for call in mocked.requests[("POST", URL(MESSAGES_URL))]]


def sent_body(mocked: aioresponses) -> dict[str, Any]:
    (kwargs,) = sent(mocked)
    return json.loads(kwargs["data"])


def ask(*contents: str, system: str | None = None, **options: object) -> ChatRequest:
    roles = ["user", "assistant"]
    messages = tuple(Message(roles[i % 2], c) for i, c in enumerate(contents))
    if system is not None:
        messages = (Message("system", system), *messages)
    return ChatRequest(messages=messages, model=MODEL, options=tuple(sorted(options.items())))


async def complete(provider: AnthropicMessages, request: ChatRequest | None = None) -> Completion:
    with anyio.fail_after(5):
        return await provider.complete(request or ask("Hi"))


async def failure(provider: AnthropicMessages, request: ChatRequest | None = None) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await complete(provider, request)
    return caught.value


async def test_the_request_carries_the_key_the_version_and_json(mocked, provider):
    answer(mocked)

    await complete(provider)

    (kwargs,) = sent(mocked)
    assert kwargs["headers"] == {
        "x-api-key": KEY,
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
    }


async def test_without_a_key_no_key_header_is_sent(mocked):
    answer(mocked)
    async with AnthropicMessages(base_url=BASE) as p:
        await complete(p)

    (kwargs,) = sent(mocked)
    assert "x-api-key" not in kwargs["headers"]


async def test_the_system_message_goes_in_the_system_field_and_roles_are_kept(mocked, provider):
    answer(mocked)

    await complete(provider, ask("Hi", "Hello", "And now?", system="Be brief."))

    body = sent_body(mocked)
    assert body["system"] == "Be brief."
    assert body["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "And now?"},
    ]
    assert (body["model"], body["stream"]) == (MODEL, True)


async def test_max_tokens_is_1024_unless_the_job_sets_it(mocked, provider):
    answer(mocked)
    answer(mocked)

    await complete(provider, ask("Hi"))
    await complete(provider, ask("Hi", max_tokens=77))

    assert [json.loads(k["data"])["max_tokens"] for k in sent(mocked)] == [1024, 77]


async def test_sampling_options_are_sent_with_stop_as_stop_sequences(mocked, provider):
    answer(mocked)

    await complete(provider, ask("Hi", temperature=0.2, top_p=0.9, top_k=40, stop=("###", "END")))

    body = sent_body(mocked)
    assert {k: body[k] for k in ("temperature", "top_p", "top_k", "stop_sequences")} == {
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "stop_sequences": ["###", "END"],
    }
    assert "stop" not in body and "seed" not in body


def test_system_messages_anywhere_are_joined_into_the_system_field():
    system, turns = split_system(
        [
            {"role": "system", "content": "One."},
            {"role": "user", "content": "Hi"},
            {"role": "developer", "content": [{"type": "text", "text": "Two."}]},
        ]
    )

    assert system == "One.\n\nTwo."
    assert turns == [{"role": "user", "content": "Hi"}]


def test_render_shows_the_system_field_and_the_messages():
    provider = AnthropicMessages(base_url=BASE, api_key=KEY)

    shown = json.loads(provider.render(ask("Hi", system="Be brief.")))

    assert shown == {"system": "Be brief.", "messages": [{"role": "user", "content": "Hi"}]}


async def test_complete_returns_the_text_usage_and_finish_reason(mocked, provider):
    answer(mocked)

    completion = await complete(provider)

    assert completion.text == STREAM_TEXT
    assert (completion.prompt_tokens, completion.completion_tokens) == (11, 7)
    assert completion.finish_reason == "stop"
    assert completion.http_status == 200


async def test_a_stream_cut_before_its_stop_is_transient(mocked, provider):
    answer(mocked, start() + delta("half"))

    error = await failure(provider)

    assert type(error) is TransientError
    assert "message_stop" in str(error)


async def test_an_error_event_mid_stream_fails_the_request(mocked, provider):
    answer(mocked, start() + delta("half") + error_event("api_error"))

    error = await failure(provider)

    assert type(error) is TransientError
    assert "api_error" in str(error)


async def test_an_overloaded_error_mid_stream_is_overloaded_as_a_529(mocked, provider):
    answer(mocked, start() + delta("half") + error_event("overloaded_error"))

    error = await failure(provider)

    assert type(error) is Overloaded
    assert error.http_status == 529


# --no-stream


@pytest.fixture
async def whole_provider() -> AsyncIterator[AnthropicMessages]:
    async with AnthropicMessages(base_url=BASE, api_key=KEY, stream=False) as p:
        yield p


async def test_without_stream_the_body_asks_for_no_stream(mocked, whole_provider):
    answer(mocked, whole("ok"))

    await complete(whole_provider)

    assert "stream" not in sent_body(mocked)


async def test_without_stream_the_text_blocks_are_joined_with_usage_and_reason(
    mocked, whole_provider
):
    content = [
        {"type": "thinking", "thinking": "hmm"},
        {"type": "text", "text": "Hello, "},
        {"type": "text", "text": "world"},
    ]
    answer(mocked, whole("", reason="max_tokens", content=content))

    completion = await complete(whole_provider)

    assert completion.text == "Hello, world"
    assert completion.finish_reason == "length"
    assert (completion.prompt_tokens, completion.completion_tokens) == (5, 3)


async def test_without_stream_an_answer_that_is_not_json_is_transient(mocked, whole_provider):
    mocked.post(
        MESSAGES_URL, status=200, body=b"<html>", content_type="text/html",
        response_class=CompatResponse,
    )  # fmt: skip

    error = await failure(whole_provider)

    assert type(error) is TransientError


# error statuses


async def test_429_is_rate_limited_with_retry_after(mocked, provider):
    answer(mocked, error_body("rate_limit_error", "slow down"), status=429,
           headers={"retry-after": "7"})  # fmt: skip

    error = await failure(provider)

    assert isinstance(error, RateLimited)
    assert error.retry_after == 7.0
    assert "rate_limit_error: slow down" in str(error)


async def test_429_without_retry_after_waits_for_the_ratelimit_reset(mocked, provider):
    headers = {
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": in_seconds(30),
    }
    answer(mocked, error_body("rate_limit_error", "slow down"), status=429, headers=headers)

    error = await failure(provider)

    assert isinstance(error, RateLimited)
    assert 29 <= error.retry_after <= 30  # type: ignore[operator]


@pytest.mark.parametrize("status", [500, 502, 503, 529])
async def test_overloaded_and_server_errors_are_transient(mocked, provider, status):
    answer(mocked, error_body("overloaded_error", "Overloaded"), status=status)

    error = await failure(provider)

    assert isinstance(error, TransientError)
    assert not isinstance(error, RateLimited)
    assert error.http_status == status


@pytest.mark.parametrize("status", [400, 404, 413])
async def test_a_bad_request_is_permanent_and_quotes_the_error(mocked, provider, status):
    answer(mocked, error_body("invalid_request_error", "max_tokens: too big"), status=status)

    error = await failure(provider)

    assert type(error) is PermanentError
    assert str(error) == f"HTTP {status}: messages request failed: invalid_request_error:" \
        " max_tokens: too big"  # fmt: skip


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_key_is_unauthorized(mocked, provider, status):
    answer(mocked, error_body("authentication_error", "invalid x-api-key"), status=status)

    error = await failure(provider)

    assert type(error) is Unauthorized


async def test_a_key_echoed_in_an_error_is_blanked(mocked, provider):
    answer(mocked, error_body("authentication_error", f"bad key {KEY}"), status=401)
    answer(mocked, start() + error_event("api_error", f"key {KEY} broke"))

    errors = [await failure(provider), await failure(provider)]

    for error in errors:
        shown = str(error) + repr(error) + "".join(traceback.format_exception(error))
        assert KEY not in shown
        assert "***" in str(error)


def test_the_repr_shows_no_key():
    assert KEY not in repr(AnthropicMessages(base_url=BASE, api_key=KEY))
