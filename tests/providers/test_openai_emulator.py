"""The emulator in OpenAI mode over loopback: OpenAIChat and the official openai SDK.

The emulator is the reference peer of ``--provider openai --emulate``; the official SDK
checks that it speaks the real protocol, streaming and not.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import aiohttp
import anyio
import openai
import pytest

from aibatch.errors import ProviderError, RateLimited, TransientError, Unauthorized
from aibatch.providers.base import StreamInfo
from aibatch.providers.emulator import OPENAI_MODELS, Emulator, Faults, answer_for
from aibatch.providers.helpers import format_prompt
from aibatch.providers.openai import OpenAIChat
from aibatch.types import ChatRequest, Completion, Message
from tests.conftest import emulator_in_thread

KEY = "sk-emulated-3b7e91c04d2a58f6"
MODEL = "gpt-4o-mini"


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
    """An OpenAI-mode emulator that requires ``KEY``, in the test's event loop."""
    emu = Emulator(protocol="openai", api_key=KEY, record_prompts=True)
    async with emu:
        yield emu


async def serve(stack: AsyncExitStack, **options: object) -> Emulator:
    emu = Emulator(protocol="openai", **options)  # type: ignore[arg-type]
    await stack.enter_async_context(emu)
    return emu


async def complete(
    emu: Emulator, request: ChatRequest, *, key: str | None = KEY, stream: bool = True
) -> Completion:
    async with OpenAIChat(base_url=emu.base_url, api_key=key, stream=stream) as p:
        with anyio.fail_after(10):
            return await p.complete(request)


async def failure(emu: Emulator, request: ChatRequest, **options: object) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await complete(emu, request, **options)  # type: ignore[arg-type]
    return caught.value


# OpenAIChat against the emulator


async def test_the_base_url_ends_in_v1(served):
    assert served.base_url.startswith("http://127.0.0.1:")
    assert served.base_url.endswith("/v1")


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "no-stream"])
async def test_the_answer_is_answer_for_the_flattened_conversation(served, stream):
    request = ask("Hi", "Hello", "What is 2 + 2?", system="Be brief.")

    completion = await complete(served, request, stream=stream)

    assert completion.text == expected(request)
    assert completion.finish_reason == "stop"
    assert completion.http_status == 200
    assert completion.garbage_lines == 0
    assert served.stats.prompts == {format_prompt(request.message_dicts): 1}


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "no-stream"])
async def test_usage_counts_come_back_streaming_or_not(served, stream):
    request = ask("one two three four")

    completion = await complete(served, request, stream=stream)

    assert completion.prompt_tokens == 4
    assert completion.completion_tokens == len(expected(request).split())


async def test_the_generator_yields_the_answer_in_several_chunks(served):
    info = StreamInfo()
    async with OpenAIChat(base_url=served.base_url, api_key=KEY) as p:
        with anyio.fail_after(10):
            chunks = [
                c
                async for c in p.create_async_generator(
                    MODEL, [{"role": "user", "content": "chunk me"}], info=info
                )
            ]

    assert "".join(chunks) == answer_for("chunk me")
    assert len(chunks) == 4
    assert info.finish_reason == "stop"


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "no-stream"])
async def test_max_tokens_cuts_the_answer_with_finish_reason_length(served, stream):
    request = ask("Tell me everything", max_tokens=3)

    completion = await complete(served, request, stream=stream)

    assert completion.text == " ".join(expected(request).split()[:3])
    assert completion.finish_reason == "length"
    assert completion.completion_tokens == 3


async def test_max_tokens_above_the_answer_length_changes_nothing(served):
    request = ask("short", max_tokens=500)

    completion = await complete(served, request)

    assert completion.text == expected(request)
    assert completion.finish_reason == "stop"


@pytest.mark.parametrize("key", ["sk-wrong", None], ids=["wrong-key", "no-key"])
async def test_a_wrong_or_missing_key_is_unauthorized(served, key):
    error = await failure(served, ask("Hi"), key=key)

    assert type(error) is Unauthorized
    assert error.http_status == 401
    assert served.stats.outcomes["unauthorized"] == 1


async def test_an_emulator_without_a_key_takes_any_or_none():
    async with AsyncExitStack() as stack:
        emu = await serve(stack)
        for key in (None, "sk-anything"):
            assert (await complete(emu, ask("Hi"), key=key)).text == answer_for("Hi")


# faults


async def test_an_injected_500_is_transient():
    async with AsyncExitStack() as stack:
        emu = await serve(stack, faults=Faults(error_rate=1.0))
        error = await failure(emu, ask("Hi"), key=None)

    assert type(error) is TransientError
    assert error.http_status == 500
    assert "internal error (injected)" in str(error)


async def test_an_injected_overload_is_a_503():
    async with AsyncExitStack() as stack:
        emu = await serve(stack, faults=Faults(overload_rate=1.0))
        error = await failure(emu, ask("Hi"), key=None)

    assert isinstance(error, TransientError)
    assert error.http_status == 503
    assert emu.stats.outcomes["overloaded"] == 1


async def test_an_injected_error_event_fails_the_stream():
    async with AsyncExitStack() as stack:
        emu = await serve(stack, faults=Faults(error_event_rate=1.0))
        error = await failure(emu, ask("Hi"), key=None)

    assert type(error) is TransientError
    assert "The server had an error (injected)" in str(error)
    assert emu.stats.outcomes["error_event"] == 1


async def test_an_injected_429_is_rate_limited_with_its_retry_after():
    async with AsyncExitStack() as stack:
        emu = await serve(stack, faults=Faults(rate_limit_rate=1.0, retry_after=0.25))
        error = await failure(emu, ask("Hi"), key=None)

    assert isinstance(error, RateLimited)
    assert error.retry_after == 0.25


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
    assert emu.stats.outcomes["garbage"] == 8


async def test_requests_beyond_max_inflight_get_429():
    async with AsyncExitStack() as stack:
        emu = await serve(stack, chunk_delay=2.0, faults=Faults(max_inflight=2, retry_after=0.5))
        session = await stack.enter_async_context(aiohttp.ClientSession())
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hold"}], "stream": True}
        with anyio.fail_after(10):
            # the answer's headers are sent before its first chunk: both are being served
            for _ in range(2):
                held = await stack.enter_async_context(
                    session.post(f"{emu.base_url}/chat/completions", json=body)
                )
                assert held.status == 200
            error = await failure(emu, ask("one too many"), key=None)
            assert emu.stats.inflight == 2

    assert isinstance(error, RateLimited)
    assert error.retry_after == 0.5
    assert emu.stats.max_inflight == 2
    assert emu.stats.outcomes["rate_limited"] == 1


async def test_requests_beyond_max_rps_get_429():
    async with AsyncExitStack() as stack:
        emu = await serve(stack, faults=Faults(max_rps=3, retry_after=0.1))
        outcomes: list[str] = []

        async def one(i: int) -> None:
            try:
                await complete(emu, ask(f"q{i}"), key=None)
                outcomes.append("ok")
            except RateLimited:
                outcomes.append("429")

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(one, i)

    assert sorted(outcomes) == ["429", "ok", "ok", "ok"]


# the raw protocol


async def test_a_body_without_model_or_messages_is_a_400_in_openai_form(served):
    bad_bodies = [{"messages": [{"role": "user", "content": "x"}]}, {"model": MODEL}, [1]]
    async with aiohttp.ClientSession() as session:
        for body in bad_bodies:
            async with session.post(
                f"{served.base_url}/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {KEY}"},
            ) as response:
                assert response.status == 400
                error = (await response.json())["error"]
                assert error["type"] == "invalid_request_error"
                assert "model" in error["message"]


async def test_a_429_carries_retry_after_in_seconds_and_milliseconds():
    async with AsyncExitStack() as stack:
        emu = await serve(stack, faults=Faults(rate_limit_rate=1.0, retry_after=1.5))
        session = await stack.enter_async_context(aiohttp.ClientSession())
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
        async with session.post(f"{emu.base_url}/chat/completions", json=body) as response:
            assert response.status == 429
            assert response.headers["Retry-After"] == "1.5"
            assert response.headers["retry-after-ms"] == "1500"
            assert (await response.json())["error"]["type"] == "rate_limit_error"


async def test_the_stream_is_server_sent_events_ending_in_done(served):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{served.base_url}/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {KEY}"},
        ) as response,
    ):
        assert response.headers["Content-Type"].startswith("text/event-stream")
        raw = await response.read()

    events = [e for e in raw.split(b"\n\n") if e]
    assert all(e.startswith(b"data: ") for e in events)
    assert events[-1] == b"data: [DONE]"
    # no include_usage asked: no usage event
    assert all("usage" not in json.loads(e[6:]) for e in events[:-1])


async def test_stats_count_requests_and_outcomes(served):
    await complete(served, ask("a"))
    await failure(served, ask("b"), key="sk-wrong")

    async with (
        aiohttp.ClientSession() as session,
        session.get(served.base_url.removesuffix("/v1") + "/stats") as response,
    ):
        stats = await response.json()

    assert stats["chat_requests"] == 2
    assert stats["outcomes"] == {"ok": 1, "unauthorized": 1}
    assert stats["token_requests"] == 0


# the official openai SDK


def sdk(base_url: str, key: str = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=base_url,
        api_key=key,
        max_retries=0,
        timeout=10,
        http_client=openai.DefaultAsyncHttpxClient(trust_env=False),
    )


async def test_the_sdk_gets_a_whole_answer_with_usage(served):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Why is the sky blue?"},
    ]
    async with sdk(served.base_url) as client:
        answer = await client.chat.completions.create(model=MODEL, messages=messages)

    prompt = format_prompt(messages)
    assert answer.object == "chat.completion"
    assert answer.model == MODEL
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == answer_for(prompt)
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == len(prompt.split())
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


async def test_the_sdk_streams_the_answer_with_usage_in_the_last_chunk(served):
    messages = [{"role": "user", "content": "Stream this, please."}]
    async with sdk(served.base_url) as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer_for("Stream this, please.")
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert [c.usage is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].choices == []
    assert len({c.id for c in chunks}) == 1


async def test_the_sdk_stream_without_include_usage_has_no_usage(served):
    async with sdk(served.base_url) as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
        )
        chunks = [c async for c in stream]

    assert all(c.usage is None for c in chunks)


async def test_the_sdk_sees_max_tokens_as_finish_reason_length(served):
    async with sdk(served.base_url) as client:
        answer = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Go on and on"}], max_tokens=2
        )

    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 2


async def test_the_sdk_lists_the_models(served):
    async with sdk(served.base_url) as client:
        models = await client.models.list()

    assert [m.id for m in models.data] == list(OPENAI_MODELS)


async def test_the_sdk_raises_authentication_error_for_a_wrong_key(served):
    async with sdk(served.base_url, key="sk-wrong") as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}]
            )

    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"


async def test_the_sdk_raises_rate_limit_error_for_a_429():
    async with AsyncExitStack() as stack:
        emu = await serve(stack, faults=Faults(rate_limit_rate=1.0, retry_after=0.01))
        client = await stack.enter_async_context(sdk(emu.base_url))
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}]
            )

    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after-ms"] == "10"


def test_the_synchronous_sdk_works_streaming_and_not():
    with emulator_in_thread(protocol="openai", api_key=KEY) as emu:
        client = openai.OpenAI(
            base_url=emu.base_url,
            api_key=KEY,
            max_retries=0,
            timeout=10,
            http_client=openai.DefaultHttpxClient(trust_env=False),
        )
        with client:
            messages = [{"role": "user", "content": "Sync?"}]
            answer = client.chat.completions.create(model=MODEL, messages=messages)
            stream = client.chat.completions.create(model=MODEL, messages=messages, stream=True)
            streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    assert answer.choices[0].message.content == streamed == answer_for("Sync?")
