"""What an answer or a broken connection means: the error class that ``_http`` gives it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream

from aibatch.errors import ConnectionRefused, Overloaded, ProviderError, RateLimited
from aibatch.providers._http import status_error
from aibatch.providers.aichatonline import AiChatOnline
from aibatch.providers.base import AsyncGeneratorProvider
from aibatch.providers.emulator import Emulator
from aibatch.providers.openai import OpenAIChat
from aibatch.types import ChatRequest, Message


def ask(content: str) -> ChatRequest:
    return ChatRequest(messages=(Message("user", content),), model="gpt-4o-mini")


async def failure(provider: AsyncGeneratorProvider) -> ProviderError:
    with pytest.raises(ProviderError) as caught, anyio.fail_after(10):
        await provider.complete(ask("hi"))
    return caught.value


@asynccontextmanager
async def hanging_up_server() -> AsyncIterator[str]:
    """A TCP server that reads the start of each request, then closes without answering."""

    async def hang_up(stream: SocketStream) -> None:
        async with stream:
            with suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                await stream.receive()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, hang_up)
        yield f"http://127.0.0.1:{port}/v1"
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("status", [503, 529])
def test_503_and_529_are_overloaded_with_the_wait_they_ask(status):
    error = status_error(status, "busy", retry_after=3.0)

    assert type(error) is Overloaded
    assert (error.http_status, error.retry_after) == (status, 3.0)


def test_a_429_is_overloaded_too_as_rate_limited():
    error = status_error(429, "slow down", retry_after=1.0)

    assert isinstance(error, RateLimited) and isinstance(error, Overloaded)


async def test_a_refused_connection_is_connection_refused():
    emulator = Emulator()
    async with AiChatOnline(base_url=await emulator.start()) as p:
        await p.complete(ask("first"))  # the token is fetched: the next call only chats
        await emulator.stop()

        error = await failure(p)

    assert type(error) is ConnectionRefused
    assert error.http_status is None


async def test_a_connection_closed_before_any_answer_is_connection_refused():
    async with hanging_up_server() as base_url, OpenAIChat(base_url=base_url) as p:
        error = await failure(p)

    assert type(error) is ConnectionRefused
