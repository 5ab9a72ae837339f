"""The ways to call a provider, against the real emulator: the seed's, gpt4free's, a batch's.

``create_async_generator`` works on an instance inside ``async with`` (one session and
one token for a batch), on an instance outside it (a session opened and closed for the
call) and on the class, as gpt4free calls it. The two snippets of the seed and of
gpt4free run verbatim in real subprocesses.
"""

from __future__ import annotations

import gc
import os
import re
import sys
import textwrap
import warnings
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

import aibatch
from aibatch.errors import TransientError, UnknownModelError
from aibatch.providers.aichatonline import BASE_URL_ENV, AiChatOnline
from aibatch.providers.emulator import Emulator, Faults, answer_for, split_chunks
from aibatch.providers.openai import OpenAIChat
from aibatch.types import ChatRequest, Message

# The aibatch this test runs, for the subprocesses too.
SOURCE = Path(aibatch.__file__).resolve().parents[1]
MODEL = "gpt-4o-mini"
HELLO = [{"role": "user", "content": "Hello, world!"}]

SEED = """
aichatonline = AiChatOnline(model='gpt-4o-mini')
async_generator = aichatonline.create_async_generator(
    model='gpt-4o-mini', messages=[{'role': 'user', 'content': 'Hello, world!'}])
async for response in async_generator:
    print(f'Response: {response}')
"""

GPT4FREE = """
async for response in AiChatOnline.create_async_generator(
        'gpt-4o-mini', [{'role': 'user', 'content': 'Hello, world!'}]):
    print(f'Response: {response}')
"""


def program(snippet: str) -> str:
    """The snippet as it stands, inside the least a script needs to run it."""
    body = textwrap.indent(snippet.strip(), "    ")
    return (
        "import asyncio\n"
        "from aibatch.providers import AiChatOnline\n\n"
        f"async def main():\n{body}\n\n"
        "asyncio.run(main())\n"
    )


async def run_snippet(snippet: str, base_url: str) -> tuple[list[str], str]:
    env = {**os.environ, BASE_URL_ENV: base_url, "PYTHONPATH": str(SOURCE)}
    # -W error: an unclosed session or transport would print a ResourceWarning.
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [sys.executable, "-W", "error", "-c", program(snippet)],
            env=env,
            cwd=SOURCE,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode().splitlines(), done.stderr.decode()


@pytest.fixture
def env_base_url(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(BASE_URL_ENV, emulator.base_url)
    return emulator.base_url


async def answer(chunks: AsyncIterator[str]) -> str:
    with anyio.fail_after(10):
        return "".join([chunk async for chunk in chunks])


# the two snippets, verbatim, in real processes


@pytest.mark.slow
async def test_the_seeds_example_runs_verbatim(emulator):
    lines, stderr = await run_snippet(SEED, emulator.base_url)

    assert lines == [
        f"Response: {chunk}" for chunk in split_chunks(answer_for("Hello, world!"), emulator.chunks)
    ]
    assert stderr == ""


@pytest.mark.slow
async def test_gpt4free_call_on_the_class_runs_verbatim(emulator):
    lines, stderr = await run_snippet(GPT4FREE, emulator.base_url)

    assert "".join(line.removeprefix("Response: ") for line in lines) == answer_for("Hello, world!")
    assert stderr == ""


def test_the_readme_shows_the_seeds_form_first_then_gpt4frees():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## The provider and the emulator\n", 1)[1].split("\n## ", 1)[0]

    blocks = re.findall(r"```python\n(.*?)```", section, re.S)

    assert [block.strip() for block in blocks[:2]] == [SEED.strip(), GPT4FREE.strip()]


# an instance outside `async with`


async def test_a_call_outside_async_with_closes_the_session_it_opened(env_base_url):
    aichatonline = AiChatOnline(model=MODEL)
    sessions: set[aiohttp.ClientSession] = set()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        async for _ in aichatonline.create_async_generator(model=MODEL, messages=HELLO):
            sessions.add(aichatonline.session)
        gc.collect()

    assert len(sessions) == 1
    assert all(session.closed for session in sessions)


async def test_a_call_outside_async_with_raises_the_typed_error():
    async with Emulator(faults=Faults(error_rate=1.0)) as base_url:
        aichatonline = AiChatOnline(base_url=base_url)
        with pytest.raises(TransientError) as caught:
            await answer(aichatonline.create_async_generator(MODEL, HELLO))

    assert caught.value.http_status == 500


async def test_an_instance_outside_async_with_keeps_its_token_across_calls(emulator, env_base_url):
    aichatonline = AiChatOnline()

    texts = [await answer(aichatonline.create_async_generator(MODEL, HELLO)) for _ in range(3)]

    assert texts == [answer_for("Hello, world!")] * 3
    assert (emulator.stats.token_requests, emulator.stats.chat_requests) == (1, 3)


async def test_overlapping_calls_outside_async_with_all_finish_and_close_their_session(
    emulator, env_base_url
):
    aichatonline = AiChatOnline()
    texts: dict[int, str] = {}

    async def ask(i: int) -> None:
        messages = [{"role": "user", "content": f"question {i}"}]
        texts[i] = await answer(aichatonline.create_async_generator(MODEL, messages))

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(ask, i)

    assert texts == {i: answer_for(f"question {i}") for i in range(8)}
    with pytest.raises(RuntimeError, match="async with"):
        _ = aichatonline.session


async def test_complete_outside_async_with_opens_a_session_for_the_call(env_base_url):
    request = ChatRequest(messages=(Message("user", "Hello, world!"),), model=MODEL)

    completion = await AiChatOnline().complete(request)

    assert completion.text == answer_for("Hello, world!")


# on the class, as gpt4free calls it


async def test_a_call_on_the_class_makes_a_provider_and_a_token_for_that_call(
    emulator, env_base_url
):
    texts = [await answer(AiChatOnline.create_async_generator(MODEL, HELLO)) for _ in range(2)]

    assert texts == [answer_for("Hello, world!")] * 2
    assert emulator.stats.token_requests == 2


async def test_a_call_on_the_class_raises_the_typed_error_when_nothing_listens(monkeypatch):
    async with Emulator() as base_url:
        pass  # a port that was just served and is closed now
    monkeypatch.setenv(BASE_URL_ENV, base_url)

    with pytest.raises(TransientError):
        await answer(AiChatOnline.create_async_generator(MODEL, HELLO))


# a batch inside `async with`


async def test_async_with_keeps_one_session_and_one_token_for_a_batch(emulator):
    prompts = [f"prompt {i}" for i in range(40)]
    texts: dict[str, str] = {}
    sessions: set[aiohttp.ClientSession] = set()

    async with AiChatOnline(model=MODEL, base_url=emulator.base_url) as aichatonline:

        async def ask(prompt: str) -> None:
            messages = [{"role": "user", "content": prompt}]
            stream = aichatonline.create_async_generator(model=MODEL, messages=messages)
            sessions.add(aichatonline.session)
            texts[prompt] = await answer(stream)

        async with anyio.create_task_group() as tg:
            for prompt in prompts:
                tg.start_soon(ask, prompt)

    assert texts == {p: answer_for(p) for p in prompts}
    assert len(sessions) == 1
    assert emulator.stats.token_requests == 1


# the constructor's model


def test_the_constructor_takes_the_default_model_of_calls_through_the_aliases():
    assert AiChatOnline(model="4o-mini").model == "gpt-4o-mini"


def test_the_constructor_refuses_an_unknown_model():
    with pytest.raises(UnknownModelError):
        AiChatOnline(model="gpt-9")


# one request path: complete is built on create_async_generator


class Shouting(AiChatOnline):
    async def create_async_generator(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        proxy: str | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[str]:
        async for chunk in super().create_async_generator(model, messages, proxy, **kwargs):
            yield chunk.upper()


class ShoutingOpenAI(OpenAIChat):
    async def create_async_generator(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        proxy: str | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[str]:
        async for chunk in super().create_async_generator(model, messages, proxy, **kwargs):
            yield chunk.upper()


@pytest.mark.parametrize(
    ("provider_class", "protocol"),
    [(Shouting, "aichatonline"), (ShoutingOpenAI, "openai")],
    ids=["aichatonline", "openai"],
)
async def test_complete_answers_through_the_providers_create_async_generator(
    provider_class, protocol
):
    request = ChatRequest(messages=(Message("user", "Hello, world!"),), model=MODEL)

    async with Emulator(protocol=protocol) as base_url, provider_class(base_url=base_url) as p:
        completion = await p.complete(request)

    assert completion.text == answer_for("Hello, world!").upper()


def test_a_create_async_generator_that_is_a_classmethod_is_refused_at_once():
    with pytest.raises(TypeError, match="plain method"):

        class Gpt4freeStyle(AiChatOnline):
            @classmethod
            async def create_async_generator(cls, model, messages, proxy=None, **kwargs):  # type: ignore[override]
                yield "never"
