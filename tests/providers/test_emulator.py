"""The provider against the real emulator over loopback: answers, tokens, faults, limits."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing, suppress
from typing import Any

import aiohttp
import anyio
import pytest
from yarl import URL

from aibatch.errors import (
    ConnectionRefused,
    Overloaded,
    ProviderError,
    RateLimited,
    TokenRejected,
    TransientError,
    UsageError,
)
from aibatch.providers.aichatonline import AiChatOnline
from aibatch.providers.base import StreamInfo
from aibatch.providers.emulator import Emulator, Faults, answer_for
from aibatch.providers.helpers import format_prompt
from aibatch.types import ChatRequest, Completion, Message

MODEL = "gpt-4o-mini"
TOKEN_PATH = "/api/v1/user/getUniqueId"
CHAT_PATH = "/aichatonline/api/chat/gpt"


def ask(content: str) -> ChatRequest:
    return ChatRequest(messages=(Message("user", content),), model=MODEL)


async def complete(provider: AiChatOnline, request: ChatRequest) -> Completion:
    with anyio.fail_after(10):
        return await provider.complete(request)


async def failure(provider: AiChatOnline, request: ChatRequest) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await complete(provider, request)
    return caught.value


async def raw_token(session: aiohttp.ClientSession, base_url: str) -> str:
    async with session.get(f"{base_url}{TOKEN_PATH}", params={"canvas": "-abcdefghij"}) as r:
        assert r.status == 200
        return str((await r.json())["data"])


# answers


async def test_the_answer_is_answer_for_the_prompt(emulator):
    async with AiChatOnline(base_url=emulator.base_url) as p:
        completion = await complete(p, ask("What is the capital of France?"))

    assert completion.text == answer_for("What is the capital of France?")
    assert completion.http_status == 200
    assert completion.garbage_lines == 0


async def test_a_conversation_is_answered_for_its_formatted_prompt(emulator):
    request = ChatRequest(
        messages=(Message("system", "Be brief."), Message("user", "Hi")), model=MODEL
    )

    async with AiChatOnline(base_url=emulator.base_url) as p:
        completion = await complete(p, request)

    prompt = format_prompt(request.message_dicts)
    assert completion.text == answer_for(prompt)
    assert emulator.stats.prompts == {prompt: 1}


@pytest.mark.parametrize("chunks", [1, 3, 7])
async def test_the_answer_arrives_in_the_configured_number_of_chunks(chunks):
    prompt = "Tell me a story about a lighthouse."
    async with (
        Emulator(chunks=chunks) as base_url,
        AiChatOnline(base_url=base_url) as p,
    ):
        info = StreamInfo()
        with anyio.fail_after(10):
            got = [
                c
                async for c in p.create_async_generator(
                    MODEL, [{"role": "user", "content": prompt}], info=info
                )
            ]

    assert len(got) == chunks
    assert all(got)
    assert "".join(got) == answer_for(prompt)
    assert info.http_status == 200


async def test_chunks_spread_over_time_still_join_to_the_answer():
    async with (
        Emulator(chunks=5, latency=0.01, chunk_delay=0.01) as base_url,
        AiChatOnline(base_url=base_url) as p,
    ):
        completion = await complete(p, ask("slowly"))

    assert completion.text == answer_for("slowly")
    assert completion.ttfb_ms is not None


async def test_500_prompts_at_concurrency_50_each_get_their_own_answer():
    # A little latency so that requests really overlap on the server.
    emulator = Emulator(latency=0.01, record_prompts=True)
    prompts = [f"prompt number {i}: {'x' * (i % 17)}" for i in range(500)]
    answers: dict[str, str] = {}
    send, receive = anyio.create_memory_object_stream[str](max_buffer_size=50)

    async def worker(p: AiChatOnline, inbox: Any) -> None:
        async with inbox:
            async for prompt in inbox:
                answers[prompt] = (await p.complete(ask(prompt))).text

    async def feed() -> None:
        async with send:
            for prompt in prompts:
                await send.send(prompt)

    async with emulator as base_url, AiChatOnline(base_url=base_url, concurrency=50) as p:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(feed)
                async with receive:
                    for _ in range(50):
                        tg.start_soon(worker, p, receive.clone())

    assert answers == {prompt: answer_for(prompt) for prompt in prompts}
    assert emulator.stats.token_requests <= 3
    assert emulator.stats.chat_requests == 500
    assert emulator.stats.outcomes == {"ok": 500}
    assert emulator.stats.prompts == dict.fromkeys(prompts, 1)
    assert emulator.stats.inflight == 0
    assert 1 < emulator.stats.max_inflight <= 50


# tokens


async def test_one_token_serves_many_requests(emulator):
    async with AiChatOnline(base_url=emulator.base_url) as p:
        for i in range(5):
            await complete(p, ask(f"q{i}"))

    assert emulator.stats.token_requests == 1
    assert emulator.stats.chat_requests == 5


async def test_a_token_expired_after_n_uses_is_refreshed_transparently():
    emulator = Emulator(faults=Faults(token_max_uses=3))
    async with emulator as base_url, AiChatOnline(base_url=base_url) as p:
        texts = [(await complete(p, ask(f"q{i}"))).text for i in range(10)]
        stats = p.stats

    assert texts == [answer_for(f"q{i}") for i in range(10)]
    # Uses 1-3 on the first token, then 401 and a new token every third request.
    assert emulator.stats.token_requests == 4
    assert emulator.stats.outcomes == {"ok": 10, "unauthorized": 3}
    assert stats == {"token_requests": 4, "token_rejections": 3}


async def test_a_token_expired_after_t_seconds_is_refreshed_transparently():
    # Each answer takes longer than a token lives, so every request after the first
    # finds its token expired: the emulator's latency is the clock, not a test sleep.
    emulator = Emulator(latency=0.6, faults=Faults(token_max_age=0.5))
    async with emulator as base_url, AiChatOnline(base_url=base_url) as p:
        texts = [(await complete(p, ask(f"q{i}"))).text for i in range(3)]

    assert texts == [answer_for(f"q{i}") for i in range(3)]
    assert emulator.stats.token_requests == 3
    assert emulator.stats.outcomes == {"ok": 3, "unauthorized": 2}


async def test_a_token_good_for_one_use_is_replaced_for_the_next_request():
    emulator = Emulator(faults=Faults(token_max_uses=1))
    async with emulator as base_url, AiChatOnline(base_url=base_url) as p:
        first = await complete(p, ask("first"))
        second = await complete(p, ask("second"))

    assert (first.text, second.text) == (answer_for("first"), answer_for("second"))
    assert emulator.stats.token_requests == 2
    assert emulator.stats.outcomes == {"ok": 2, "unauthorized": 1}


async def test_a_server_that_forgets_every_token_ends_in_token_rejected():
    emulator = Emulator(faults=Faults(token_max_age=1e-9))
    async with emulator as base_url, AiChatOnline(base_url=base_url, token_retries=2) as p:
        error = await failure(p, ask("hi"))

    assert isinstance(error, TokenRejected)
    assert error.http_status == 401
    assert emulator.stats.token_requests == 3
    assert emulator.stats.outcomes == {"unauthorized": 3}
    for token in emulator.issued_tokens():
        assert token not in str(error)


# faults, each at rate 1.0


async def test_injected_server_errors_are_transient_with_status_500():
    emulator = Emulator(faults=Faults(error_rate=1.0))
    async with emulator as base_url, AiChatOnline(base_url=base_url) as p:
        error = await failure(p, ask("hi"))

    assert type(error) is TransientError
    assert error.http_status == 500
    assert emulator.stats.outcomes == {"server_error": 1}


async def test_injected_rate_limits_are_rate_limited_with_retry_after():
    emulator = Emulator(faults=Faults(rate_limit_rate=1.0, retry_after=7.5))
    async with emulator as base_url, AiChatOnline(base_url=base_url) as p:
        error = await failure(p, ask("hi"))

    assert isinstance(error, RateLimited)
    assert error.retry_after == 7.5
    assert error.http_status == 429
    assert emulator.stats.outcomes == {"rate_limited": 1}


async def test_an_injected_cut_stream_is_transient():
    emulator = Emulator(faults=Faults(cut_rate=1.0))
    async with emulator as base_url, AiChatOnline(base_url=base_url) as p:
        error = await failure(p, ask("hi"))

    assert type(error) is TransientError
    assert emulator.stats.outcomes == {"cut": 1}


async def test_an_injected_stall_is_transient_after_the_provider_timeout():
    emulator = Emulator(faults=Faults(stall_rate=1.0, stall_seconds=5.0))
    async with emulator as base_url, AiChatOnline(base_url=base_url, timeout=0.2) as p:
        with anyio.fail_after(3):
            error = await failure(p, ask("hi"))

    assert type(error) is TransientError
    assert "0.2 s" in str(error)
    assert isinstance(error.__cause__, TimeoutError)


async def test_injected_garbage_still_gives_the_right_answer_and_is_counted():
    emulator = Emulator(chunks=8, faults=Faults(garbage_rate=1.0))
    async with emulator as base_url, AiChatOnline(base_url=base_url) as p:
        completion = await complete(p, ask("a prompt worth answering"))

    assert completion.text == answer_for("a prompt worth answering")
    assert completion.garbage_lines > 0
    assert emulator.stats.outcomes == {"garbage": 1}


async def test_mixed_fault_rates_are_drawn_reproducibly_from_the_seed():
    faults = Faults(error_rate=0.3, rate_limit_rate=0.3, seed=42)

    async def outcomes() -> dict[str, int]:
        emulator = Emulator(faults=faults)
        async with emulator as base_url, AiChatOnline(base_url=base_url) as p:
            for i in range(30):
                with anyio.fail_after(10):
                    with suppress(TransientError):
                        await p.complete(ask(f"q{i}"))
        return dict(emulator.stats.outcomes)

    first, second = await outcomes(), await outcomes()

    assert first == second
    assert set(first) == {"ok", "server_error", "rate_limited"}


def test_fault_rates_adding_up_to_more_than_one_are_refused_as_a_usage_error():
    with pytest.raises(UsageError):
        Faults(error_rate=0.6, cut_rate=0.6)


@pytest.mark.parametrize(
    "options",
    [
        {"latency": -1.0},
        {"chunk_delay": -0.5},
        {"chunks": 0},
        {"protocol": "carrier-pigeon"},
        {"port": 70000},
        {"port": -1},
    ],
    ids=["latency", "chunk-delay", "chunks", "protocol", "port-too-high", "port-negative"],
)
def test_settings_that_make_no_sense_are_refused_as_a_usage_error(options):
    with pytest.raises(UsageError):
        Emulator(**options)


async def test_a_prompt_of_five_megabytes_is_answered(emulator):
    prompt = "lorem ipsum " * (5 * 2**20 // 12 + 1)

    async with AiChatOnline(base_url=emulator.base_url) as p:
        completion = await complete(p, ask(prompt))

    assert completion.text == answer_for(prompt)


# the protocol's refusals, with raw requests


async def test_a_chat_request_without_unique_id_is_refused_with_401(emulator):
    base_url = emulator.base_url
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base_url}{CHAT_PATH}", json={"prompt": "hi"}) as r,
    ):
        status, body = r.status, await r.json()

    assert status == 401
    assert body["code"] == 401
    assert emulator.stats.outcomes == {"unauthorized": 1}


async def test_a_chat_request_with_an_unknown_unique_id_is_refused_with_401(emulator):
    base_url = emulator.base_url
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base_url}{CHAT_PATH}", json={"prompt": "hi"}, headers={"UniqueId": "made-up"}
        ) as r,
    ):
        status = r.status

    assert status == 401


@pytest.mark.parametrize(
    "body",
    [{"conversationId": "abcdefghij"}, {"prompt": 5}, {"prompt": None}, ["hi"], "not json"],
    ids=["no-prompt", "number-prompt", "null-prompt", "list", "not-json"],
)
async def test_a_chat_body_without_a_string_prompt_is_refused_with_400(emulator, body):
    base_url = emulator.base_url
    async with aiohttp.ClientSession() as session:
        token = await raw_token(session, base_url)
        kwargs: dict[str, Any] = {"data": body} if isinstance(body, str) else {"json": body}
        async with session.post(
            f"{base_url}{CHAT_PATH}", headers={"UniqueId": token}, **kwargs
        ) as r:
            status, reply = r.status, await r.json()

    assert status == 400
    assert "prompt" in reply["message"]


async def test_the_token_endpoint_answers_json_with_the_token_in_data(emulator):
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{emulator.base_url}{TOKEN_PATH}?canvas=-abcdefghij") as r,
    ):
        content_type, payload = r.content_type, await r.json()

    assert content_type == "application/json"
    assert isinstance(payload["data"], str)
    assert payload["data"]
    assert payload["data"] in emulator.issued_tokens()


async def test_stats_returns_the_counters_as_json(emulator):
    async with AiChatOnline(base_url=emulator.base_url) as p:
        await complete(p, ask("hi"))
        await complete(p, ask("hi"))
        await complete(p, ask("there"))

    async with aiohttp.ClientSession() as session:
        async with session.get(f"{emulator.base_url}/stats") as r:
            plain = await r.json()
        async with session.get(f"{emulator.base_url}/stats?prompts") as r:
            with_prompts = await r.json()

    assert plain == {
        "token_requests": 1,
        "chat_requests": 3,
        "outcomes": {"ok": 3},
        "inflight": 0,
        "max_inflight": 1,
        "prompts": {},
        "files_uploaded": 0,
        "batches_created": 0,
        "batch_requests": 0,
        "batches_cancelled": 0,
    }
    assert with_prompts["prompts"] == {"hi": 2, "there": 1}


# load limits


async def hold_one_request(p: AiChatOnline, content: str) -> AsyncGenerator[str, None]:
    """Start a request and read its first chunk: from then on it is in flight."""
    stream = p.create_async_generator(MODEL, [{"role": "user", "content": content}])
    with anyio.fail_after(10):
        first = await anext(stream)
    assert answer_for(content).startswith(first)
    return stream


async def test_a_second_request_on_a_busy_token_is_rate_limited():
    emulator = Emulator(chunks=2, chunk_delay=30.0, faults=Faults(token_concurrency=1))
    async with (
        emulator as base_url,
        AiChatOnline(base_url=base_url, concurrency=4) as p,
        aclosing(await hold_one_request(p, "first")),
    ):
        error = await failure(p, ask("second"))

    assert isinstance(error, RateLimited)
    assert "for this UniqueId" in str(error)
    assert error.retry_after == 1.0
    assert emulator.stats.outcomes["rate_limited"] == 1


async def test_requests_on_different_tokens_pass_the_token_concurrency_limit():
    emulator = Emulator(chunks=2, chunk_delay=30.0, faults=Faults(token_concurrency=1))
    async with (
        emulator as base_url,
        AiChatOnline(base_url=base_url, concurrency=4, token_pool=2) as p,
        aclosing(await hold_one_request(p, "first")),
        # The second request goes out on the pool's second token and streams too.
        aclosing(await hold_one_request(p, "second")),
    ):
        assert emulator.stats.inflight == 2

    assert emulator.stats.token_requests == 2
    assert "rate_limited" not in emulator.stats.outcomes


async def test_a_request_above_max_inflight_is_rate_limited_whatever_its_token():
    emulator = Emulator(chunks=2, chunk_delay=30.0, faults=Faults(max_inflight=1))
    async with (
        emulator as base_url,
        AiChatOnline(base_url=base_url, concurrency=4, token_pool=2) as p,
        aclosing(await hold_one_request(p, "first")),
    ):
        error = await failure(p, ask("second"))

    assert isinstance(error, RateLimited)
    assert "too many requests in flight" in str(error)
    assert "for this UniqueId" not in str(error)
    assert emulator.stats.token_requests == 2


@pytest.mark.parametrize("status", [503, 529])
async def test_above_max_inflight_the_chosen_overload_status_answers_with_retry_after(status):
    faults = Faults(max_inflight=1, overload_status=status, retry_after=2.5)
    emulator = Emulator(chunks=2, chunk_delay=30.0, faults=faults)
    async with (
        emulator as base_url,
        AiChatOnline(base_url=base_url, concurrency=4, token_pool=2) as p,
        aclosing(await hold_one_request(p, "first")),
    ):
        error = await failure(p, ask("second"))

    assert type(error) is Overloaded
    assert (error.http_status, error.retry_after) == (status, 2.5)
    assert emulator.stats.outcomes["overloaded"] == 1


async def test_a_529_refusal_has_the_body_of_anthropics_overloaded_error():
    emulator = Emulator(faults=Faults(max_inflight=0, overload_status=529))
    async with emulator as base_url, aiohttp.ClientSession() as session:
        token = await raw_token(session, base_url)
        async with session.post(
            f"{base_url}{CHAT_PATH}", json={"prompt": "hi"}, headers={"UniqueId": token}
        ) as r:
            status, body = r.status, await r.json()

    assert status == 529
    assert body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "too many requests in flight"},
    }


def test_an_overload_status_other_than_429_503_or_529_is_refused_as_a_usage_error():
    with pytest.raises(UsageError, match="429, 503, 529"):
        Faults(max_inflight=10, overload_status=500)


async def test_a_request_after_the_busy_one_finishes_is_served():
    emulator = Emulator(chunks=2, faults=Faults(max_inflight=1, token_concurrency=1))
    async with emulator as base_url, AiChatOnline(base_url=base_url) as p:
        first = await complete(p, ask("first"))
        second = await complete(p, ask("second"))

    assert (first.text, second.text) == (answer_for("first"), answer_for("second"))
    assert emulator.stats.outcomes == {"ok": 2}


# the server itself


async def test_the_emulator_binds_loopback_on_an_os_chosen_port_by_default():
    emulator = Emulator()
    async with emulator as base_url:
        url = URL(base_url)
        assert url.host == "127.0.0.1"
        assert url.port == emulator.port
        assert emulator.port != 0
        assert emulator.base_url == base_url

    assert emulator.host == "127.0.0.1"


async def test_a_stopped_emulator_refuses_connections():
    async with Emulator() as base_url:
        pass
    async with AiChatOnline(base_url=base_url) as p:
        error = await failure(p, ask("hi"))

    assert type(error) is ConnectionRefused


def test_answers_are_deterministic_and_depend_on_the_prompt():
    assert answer_for("hi") == answer_for("hi")
    assert answer_for("hi") != answer_for("hi ")
    assert answer_for("hi").endswith("You said 2 characters: hi")
