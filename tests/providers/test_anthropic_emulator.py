"""The emulator in Anthropic mode over loopback: AnthropicMessages and the official SDK.

The emulator is the reference peer of ``--provider anthropic --emulate``; the official
``anthropic`` SDK checks that it speaks the real protocol, streamed and not.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import anthropic
import anyio
import pytest

from aibatch.errors import ProviderError, RateLimited, TransientError, Unauthorized, UsageError
from aibatch.providers.anthropic import AnthropicMessages
from aibatch.providers.base import StreamInfo
from aibatch.providers.emulator import Emulator, Faults, answer_for
from aibatch.providers.helpers import format_prompt
from aibatch.types import ChatRequest, Completion, Message
from tests.conftest import emulator_in_thread

KEY = "sk-ant-emulated-8d2f61c0b9a4e375"
MODEL = "claude-haiku-4-5"


def ask(*contents: str, system: str | None = None, **options: object) -> ChatRequest:
    roles = ["user", "assistant"]
    messages = tuple(Message(roles[i % 2], c) for i, c in enumerate(contents))
    if system is not None:
        messages = (Message("system", system), *messages)
    return ChatRequest(messages=messages, model=MODEL, options=tuple(sorted(options.items())))


def expected(request: ChatRequest) -> str:
    return answer_for(format_prompt(request.message_dicts))


@pytest.fixture
async def served() -> AsyncIterator[Emulator]:
    """An Anthropic-mode emulator that requires ``KEY``, in the test's event loop."""
    emu = Emulator(protocol="anthropic", api_key=KEY, record_prompts=True)
    async with emu:
        yield emu


async def serve(stack: AsyncExitStack, **options: Any) -> Emulator:
    emu = Emulator(protocol="anthropic", **options)
    await stack.enter_async_context(emu)
    return emu


async def complete(
    emu: Emulator, request: ChatRequest, *, key: str | None = KEY, stream: bool = True
) -> Completion:
    async with AnthropicMessages(base_url=emu.base_url, api_key=key, stream=stream) as p:
        with anyio.fail_after(10):
            return await p.complete(request)


async def failure(emu: Emulator, request: ChatRequest, **options: Any) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await complete(emu, request, **options)
    return caught.value


async def post(
    emu: Emulator, body: object, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{emu.base_url}/v1/messages", json=body, headers=headers) as response,
    ):
        return response.status, dict(response.headers), await response.read()


def body_of(**extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "x"}],
        **extra,
    }


# AnthropicMessages against the emulator


async def test_the_base_url_is_the_host_without_a_path(served):
    assert served.base_url.startswith("http://127.0.0.1:")
    assert served.base_url.count("/") == 2


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "no-stream"])
async def test_the_answer_is_answer_for_the_flattened_conversation(served, stream):
    request = ask("Hi", "Hello", "What is 2 + 2?", system="Be brief.")

    completion = await complete(served, request, stream=stream)

    assert completion.text == expected(request)
    assert completion.finish_reason == "stop"
    assert served.stats.prompts == {format_prompt(request.message_dicts): 1}


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "no-stream"])
async def test_usage_counts_come_back_streaming_or_not(served, stream):
    request = ask("one two three four")

    completion = await complete(served, request, stream=stream)

    assert completion.prompt_tokens == 4
    assert completion.completion_tokens == len(expected(request).split())


async def test_the_generator_yields_the_answer_in_several_chunks(served):
    info = StreamInfo()
    async with AnthropicMessages(base_url=served.base_url, api_key=KEY) as p:
        with anyio.fail_after(10):
            chunks = [
                c
                async for c in p.create_async_generator(
                    MODEL, [{"role": "user", "content": "chunk me"}], info=info
                )
            ]

    assert "".join(chunks) == answer_for("chunk me")
    assert len(chunks) == 4


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "no-stream"])
async def test_max_tokens_cuts_the_answer_with_finish_reason_length(served, stream):
    request = ask("Tell me everything", max_tokens=3)

    completion = await complete(served, request, stream=stream)

    assert completion.text == " ".join(expected(request).split()[:3])
    assert completion.finish_reason == "length"
    assert completion.completion_tokens == 3


async def test_a_stop_sequence_cuts_the_answer_and_its_reason_is_kept_raw(served):
    request = ask("Stop here", stop=("said",))

    completion = await complete(served, request)

    assert completion.text == expected(request).split("said")[0]
    assert completion.finish_reason == "stop_sequence"


@pytest.mark.parametrize("key", ["sk-wrong", None], ids=["wrong-key", "no-key"])
async def test_a_wrong_or_missing_key_is_unauthorized(served, key):
    error = await failure(served, ask("Hi"), key=key)

    assert type(error) is Unauthorized
    assert error.http_status == 401
    assert served.stats.outcomes["unauthorized"] == 1


@pytest.mark.parametrize(
    "headers",
    [
        {"x-api-key": KEY, "anthropic-version": "2023-06-01"},
        {"Authorization": f"Bearer {KEY}", "anthropic-version": "2026-10-21"},
        {"x-api-key": KEY},
    ],
    ids=["x-api-key", "bearer-newer-version", "no-version"],
)
async def test_the_key_is_taken_as_x_api_key_or_bearer_with_any_version(served, headers):
    status, _, _ = await post(served, body_of(), headers)

    assert status == 200


async def test_an_emulator_without_a_key_takes_any_or_none():
    async with AsyncExitStack() as stack:
        emu = await serve(stack)
        for key in (None, "sk-anything"):
            assert (await complete(emu, ask("Hi"), key=key)).text == answer_for("Hi")


# faults


async def test_an_injected_500_is_transient_with_an_api_error_body():
    async with AsyncExitStack() as stack:
        emu = await serve(stack, faults=Faults(error_rate=1.0))
        error = await failure(emu, ask("Hi"), key=None)

    assert type(error) is TransientError
    assert error.http_status == 500
    assert "api_error: internal error (injected)" in str(error)


async def test_an_injected_overload_is_a_529_overloaded_error():
    async with AsyncExitStack() as stack:
        emu = await serve(stack, faults=Faults(overload_rate=1.0))
        status, _, raw = await post(emu, body_of())
        error = await failure(emu, ask("Hi"), key=None)

    assert status == 529
    assert json.loads(raw)["error"]["type"] == "overloaded_error"
    assert isinstance(error, TransientError)
    assert error.http_status == 529
    assert emu.stats.outcomes["overloaded"] == 2


async def test_an_injected_429_carries_retry_after_and_the_ratelimit_headers():
    async with AsyncExitStack() as stack:
        emu = await serve(stack, faults=Faults(rate_limit_rate=1.0, retry_after=2))
        status, headers, raw = await post(emu, body_of())

    assert status == 429
    assert json.loads(raw)["error"]["type"] == "rate_limit_error"
    assert headers["Retry-After"] == "2"
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert "anthropic-ratelimit-requests-reset" in headers


async def test_an_injected_429_is_rate_limited_with_its_retry_after():
    async with AsyncExitStack() as stack:
        emu = await serve(stack, faults=Faults(rate_limit_rate=1.0, retry_after=0.25))
        error = await failure(emu, ask("Hi"), key=None)

    assert isinstance(error, RateLimited)
    assert error.retry_after == 0.25


async def test_an_injected_error_event_fails_the_stream_after_part_of_the_text():
    async with AsyncExitStack() as stack:
        emu = await serve(stack, faults=Faults(error_event_rate=1.0))
        info = StreamInfo()
        chunks: list[str] = []
        async with AnthropicMessages(base_url=emu.base_url) as p:
            with pytest.raises(TransientError) as caught, anyio.fail_after(10):
                messages = [{"role": "user", "content": "Hi"}]
                async for chunk in p.create_async_generator(MODEL, messages, info=info):
                    chunks.append(chunk)

    assert 0 < len("".join(chunks)) < len(answer_for("Hi"))
    assert "overloaded_error" in str(caught.value)
    assert emu.stats.outcomes["error_event"] == 1


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "no-stream"])
async def test_a_cut_answer_is_transient(stream):
    async with AsyncExitStack() as stack:
        emu = await serve(stack, faults=Faults(cut_rate=1.0))
        error = await failure(emu, ask("Hi"), key=None, stream=stream)

    assert type(error) is TransientError
    assert emu.stats.outcomes["cut"] == 1


async def test_garbage_in_the_stream_is_counted_and_the_answer_still_right():
    prompts = [f"question {i}" for i in range(8)]
    async with AsyncExitStack() as stack:
        emu = await serve(stack, faults=Faults(garbage_rate=1.0, seed=3))
        completions = [await complete(emu, ask(p), key=None) for p in prompts]

    assert [c.text for c in completions] == [answer_for(p) for p in prompts]
    assert sum(c.garbage_lines for c in completions) > 0


def test_the_aichatonline_protocol_refuses_error_events():
    with pytest.raises(UsageError, match="no error event"):
        Emulator(faults=Faults(error_event_rate=0.5))


# the raw protocol


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        (body_of(model=None), "model"),
        (body_of(messages=[]), "messages"),
        (body_of(messages=[{"role": "system", "content": "x"}]), "top-level system"),
        (body_of(temperature=1.5), "temperature"),
        ([1], "JSON object"),
    ],
    ids=["no-max-tokens", "no-model", "no-messages", "system-role", "temperature", "not-object"],
)
async def test_a_bad_body_is_a_400_invalid_request_error(served, body, words):
    status, _, raw = await post(served, body, {"x-api-key": KEY})

    error = json.loads(raw)
    assert status == 400
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert words in error["error"]["message"]


async def test_the_stream_is_the_messages_event_sequence_with_a_ping(served):
    status, headers, raw = await post(served, body_of(stream=True), {"x-api-key": KEY})

    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    events = [e.split(b"\n")[0].removeprefix(b"event: ").decode() for e in raw.split(b"\n\n") if e]
    assert events == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


async def test_stats_count_requests_and_outcomes(served):
    await complete(served, ask("a"))
    await failure(served, ask("b"), key="sk-wrong")

    async with (
        aiohttp.ClientSession() as session,
        session.get(served.base_url + "/stats") as response,
    ):
        stats = await response.json()

    assert stats["chat_requests"] == 2
    assert stats["outcomes"] == {"ok": 1, "unauthorized": 1}


# the official anthropic SDK


def sdk(base_url: str, key: str = KEY, **options: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=base_url,
        api_key=key,
        max_retries=0,
        timeout=10,
        http_client=anthropic.DefaultAsyncHttpxClient(trust_env=False),
        **options,
    )


async def test_the_sdk_gets_a_whole_message_with_usage(served):
    async with sdk(served.base_url) as client:
        message = await client.messages.create(
            model=MODEL,
            max_tokens=200,
            system="Be brief.",
            messages=[{"role": "user", "content": "Why is the sky blue?"}],
        )

    prompt = "System: Be brief.\nUser: Why is the sky blue?\nAssistant:"
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == MODEL
    assert message.id.startswith("msg_")
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == answer_for(prompt)  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == len(prompt.split())
    assert message.usage.output_tokens == len(answer_for(prompt).split())


async def test_the_sdk_streams_the_events_with_usage(served):
    async with sdk(served.base_url) as client:
        stream = await client.messages.create(
            model=MODEL,
            max_tokens=200,
            messages=[{"role": "user", "content": "Stream this, please."}],
            stream=True,
        )
        events = [e async for e in stream]

    text = "".join(
        e.delta.text
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )
    assert text == answer_for("Stream this, please.")
    assert events[0].type == "message_start"
    assert events[0].message.usage.input_tokens == 3  # type: ignore[union-attr]
    assert events[-1].type == "message_stop"
    (last,) = [e for e in events if e.type == "message_delta"]
    assert last.delta.stop_reason == "end_turn"  # type: ignore[union-attr]
    assert last.usage.output_tokens == len(text.split())  # type: ignore[union-attr]


async def test_the_sdk_stream_helper_accumulates_the_final_message(served):
    async with (
        sdk(served.base_url) as client,
        client.messages.stream(
            model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "Go on and on"}]
        ) as stream,
    ):
        text = "".join([t async for t in stream.text_stream])
        message = await stream.get_final_message()

    assert text == " ".join(answer_for("Go on and on").split()[:2])
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 2


async def test_the_sdk_authenticates_with_a_bearer_token_too(served):
    client = anthropic.AsyncAnthropic(
        base_url=served.base_url,
        auth_token=KEY,
        api_key=None,
        max_retries=0,
        http_client=anthropic.DefaultAsyncHttpxClient(trust_env=False),
    )
    async with client:
        message = await client.messages.create(
            model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "x"}]
        )

    assert message.content[0].text == answer_for("x")  # type: ignore[union-attr]


async def test_the_sdk_raises_authentication_error_for_a_wrong_key(served):
    async with sdk(served.base_url, key="sk-wrong") as client:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await client.messages.create(
                model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "x"}]
            )

    assert caught.value.status_code == 401


async def test_the_sdk_raises_rate_limit_error_for_a_429():
    async with AsyncExitStack() as stack:
        emu = await serve(stack, faults=Faults(rate_limit_rate=1.0, retry_after=0.01))
        client = await stack.enter_async_context(sdk(emu.base_url))
        with pytest.raises(anthropic.RateLimitError) as caught:
            await client.messages.create(
                model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "x"}]
            )

    assert caught.value.status_code == 429


async def test_the_sdk_raises_overloaded_error_for_a_529():
    async with AsyncExitStack() as stack:
        emu = await serve(stack, faults=Faults(overload_rate=1.0))
        client = await stack.enter_async_context(sdk(emu.base_url))
        with pytest.raises(anthropic.OverloadedError) as caught:
            await client.messages.create(
                model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "x"}]
            )

    assert caught.value.status_code == 529


async def test_the_sdk_raises_for_an_error_event_mid_stream():
    async with AsyncExitStack() as stack:
        emu = await serve(stack, faults=Faults(error_event_rate=1.0))
        client = await stack.enter_async_context(sdk(emu.base_url))
        stream = await client.messages.create(
            model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "x"}], stream=True
        )
        seen: list[str] = []
        with pytest.raises(anthropic.APIStatusError) as caught:
            async for e in stream:
                seen.append(e.type)

    assert "content_block_delta" in seen
    assert caught.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


def test_the_synchronous_sdk_works_streamed_and_not():
    with emulator_in_thread(protocol="anthropic", api_key=KEY) as emu:
        client = anthropic.Anthropic(
            base_url=emu.base_url,
            api_key=KEY,
            max_retries=0,
            timeout=10,
            http_client=anthropic.DefaultHttpxClient(trust_env=False),
        )
        with client:
            messages = [{"role": "user", "content": "Sync?"}]
            message = client.messages.create(model=MODEL, max_tokens=100, messages=messages)
            with client.messages.stream(model=MODEL, max_tokens=100, messages=messages) as s:
                streamed = "".join(s.text_stream)

    assert message.content[0].text == streamed == answer_for("Sync?")  # type: ignore[union-attr]
