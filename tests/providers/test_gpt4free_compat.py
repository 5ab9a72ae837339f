"""gpt4free's own AiChatOnline client, pointed at the emulator, works unchanged.

The client below is gpt4free's ``g4f/Provider/not_working/AiChatOnline.py`` written out
with plain aiohttp calls (g4f itself is not a dependency): the same headers, the same
token request (``raise_for_status`` then ``response.json()['data']``, which refuses a
non-JSON content type) and the same stream loop that swallows every line it cannot
decode. Only the base URL differs. Its two helpers are copied from gpt4free's
``g4f/providers/helper.py`` (string content only) so that the check does not lean on
aibatch's own.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import AsyncIterator

import anyio
from aiohttp import ClientSession

from aibatch.providers.aichatonline import AiChatOnline
from aibatch.providers.emulator import Emulator, Faults, answer_for
from aibatch.providers.helpers import format_prompt
from aibatch.types import ChatRequest, Message

API_ENDPOINT = "/aichatonline/api/chat/gpt"
Messages = list[dict[str, str]]


def g4f_get_random_string(length: int = 10) -> str:
    return "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(length))


def g4f_format_prompt(messages: Messages) -> str:
    if len(messages) <= 1:
        return messages[0]["content"]
    formatted = "\n".join(
        f"{message['role'].capitalize()}: {message['content']}"
        for message in messages
        if message["content"].strip()
    )
    return f"{formatted}\nAssistant:"


async def g4f_grab_token(session: ClientSession, url: str, proxy: str | None) -> str:
    async with session.get(
        f"{url}/api/v1/user/getUniqueId?canvas=-{g4f_get_random_string()}", proxy=proxy
    ) as response:
        response.raise_for_status()
        return (await response.json())["data"]


async def g4f_create_async_generator(
    url: str, messages: Messages, proxy: str | None = None
) -> AsyncIterator[str | None]:
    headers = {
        "User-Agent": (
            "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:109.0) Gecko/20100101 Firefox/119.0"
        ),
        "Accept-Language": "de,en-US;q=0.7,en;q=0.3",
        "Accept-Encoding": "gzip, deflate, br",
        "Referer": f"{url}/chatgpt/chat/",
        "Content-Type": "application/json",
        "Origin": url,
        "Alt-Used": "aichatonline.org",
        "Connection": "keep-alive",
        "Sec-Fetch-Dest": "empty",
        "Sec-Fetch-Mode": "cors",
        "Sec-Fetch-Site": "same-origin",
        "TE": "trailers",
    }
    async with ClientSession(headers=headers) as session:
        data = {
            "conversationId": g4f_get_random_string(),
            "prompt": g4f_format_prompt(messages),
        }
        headers["UniqueId"] = await g4f_grab_token(session, url, proxy)
        async with session.post(
            f"{url}{API_ENDPOINT}", headers=headers, json=data, proxy=proxy
        ) as response:
            response.raise_for_status()
            async for chunk in response.content:
                try:
                    yield json.loads(chunk)["data"]["message"]
                except Exception:  # the original's bare ``except: continue``
                    continue


async def g4f_answer(url: str, messages: Messages) -> list[str | None]:
    with anyio.fail_after(10):
        return [chunk async for chunk in g4f_create_async_generator(url, messages)]


async def test_gpt4free_client_gets_the_answer_to_a_single_prompt(emulator):
    messages = [{"role": "user", "content": "What is the capital of France?"}]

    chunks = await g4f_answer(emulator.base_url, messages)

    assert "".join(chunks) == answer_for("What is the capital of France?")
    assert len(chunks) == emulator.chunks
    assert emulator.stats.token_requests == 1
    assert emulator.stats.outcomes == {"ok": 1}


async def test_gpt4free_client_gets_the_answer_to_a_conversation(emulator):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]
    prompt = "System: Be brief.\nUser: Hi\nAssistant: Hello\nUser: Bye\nAssistant:"

    chunks = await g4f_answer(emulator.base_url, messages)

    assert "".join(chunks) == answer_for(prompt)
    assert emulator.stats.prompts == {prompt: 1}


async def test_gpt4free_client_fetches_a_token_for_every_prompt(emulator):
    for i in range(3):
        chunks = await g4f_answer(emulator.base_url, [{"role": "user", "content": f"q{i}"}])
        assert "".join(chunks) == answer_for(f"q{i}")

    assert emulator.stats.token_requests == 3
    assert emulator.stats.chat_requests == 3


async def test_gpt4free_client_and_aibatch_send_the_same_prompt_and_get_the_same_answer(
    emulator,
):
    messages = [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Good morning"},
    ]
    request = ChatRequest(messages=tuple(Message(**m) for m in messages), model="gpt-4o-mini")

    g4f_text = "".join(await g4f_answer(emulator.base_url, messages))
    async with AiChatOnline(base_url=emulator.base_url) as p:
        with anyio.fail_after(10):
            aibatch_text = (await p.complete(request)).text

    assert g4f_text == aibatch_text
    assert format_prompt(messages) == g4f_format_prompt(messages)
    assert emulator.stats.prompts == {g4f_format_prompt(messages): 2}


async def test_gpt4free_client_skips_injected_garbage_lines():
    async with Emulator(chunks=8, faults=Faults(garbage_rate=1.0)) as base_url:
        chunks = await g4f_answer(base_url, [{"role": "user", "content": "hello"}])

    # The original yields None for a null message; gpt4free's callers drop it.
    assert "".join(c for c in chunks if c is not None) == answer_for("hello")
