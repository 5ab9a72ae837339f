"""The bare baseline: the leanest honest client of each protocol.

One aiohttp session (its pool sized to the concurrency), a semaphore over
``asyncio.gather``, the answer's pieces parsed and joined. No input or output files, no
retries, no checkpoint: what is left when a client does only the protocol's work.

- ``aichatonline`` (the default): one token, then JSON lines.
- ``openai``: ``POST /chat/completions`` with ``stream: true``; SSE ``data:`` lines, the
  ``choices[0].delta.content`` pieces joined until ``data: [DONE]``.
- ``anthropic``: ``POST /v1/messages`` with ``stream: true``; SSE, the ``text_delta``
  pieces of ``content_block_delta`` events joined.

``python -m benchmarks.baseline [--protocol P] --url U --prompts N -c C``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable

import aiohttp

from .clientcli import Answers, Client, main

TOKEN_PATH = "/api/v1/user/getUniqueId"
CHAT_PATH = "/aichatonline/api/chat/gpt"
OPENAI_MODEL = "gpt-4o-mini"  # the models aibatch and the SDK scripts ask for
ANTHROPIC_MODEL = "claude-haiku-4-5"
MAX_TOKENS = 1024

Ask = Callable[[aiohttp.ClientSession, str], Awaitable[str]]


async def _fan_out(url: str, prompts: list[str], concurrency: int, ask: Ask) -> Answers:
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        semaphore = asyncio.Semaphore(concurrency)

        async def one(prompt: str) -> str:
            async with semaphore:
                return await ask(session, prompt)

        return await asyncio.gather(*(one(p) for p in prompts), return_exceptions=True)


async def run(url: str, prompts: list[str], concurrency: int) -> Answers:
    """AiChatOnline: one token for the run, then one JSON-lines answer per prompt."""
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        canvas = "-" + secrets.token_hex(5)
        async with session.get(f"{url}{TOKEN_PATH}", params={"canvas": canvas}) as response:
            response.raise_for_status()
            token = (await response.json())["data"]
        headers = {"UniqueId": token}
        chat_url = f"{url}{CHAT_PATH}"
        semaphore = asyncio.Semaphore(concurrency)

        async def ask(prompt: str) -> str:
            body = {"conversationId": secrets.token_hex(5), "prompt": prompt}
            async with semaphore, session.post(chat_url, json=body, headers=headers) as response:
                response.raise_for_status()
                parts = []
                async for line in response.content:
                    if line.strip():
                        message = json.loads(line)["data"]["message"]
                        if message:
                            parts.append(message)
                return "".join(parts)

        return await asyncio.gather(*(ask(p) for p in prompts), return_exceptions=True)


async def run_openai(url: str, prompts: list[str], concurrency: int) -> Answers:
    """OpenAI chat completions, streamed (``url`` ends in ``/v1``)."""
    endpoint = f"{url}/chat/completions"
    headers = {"Authorization": "Bearer dummy"}

    async def ask(session: aiohttp.ClientSession, prompt: str) -> str:
        body = {
            "model": OPENAI_MODEL,
            "messages": [{"role": "user", "content": prompt}],
            "stream": True,
        }
        async with session.post(endpoint, json=body, headers=headers) as response:
            response.raise_for_status()
            parts = []
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].strip()
                if data == b"[DONE]":
                    break
                choices = json.loads(data)["choices"]
                if choices and (piece := choices[0]["delta"].get("content")):
                    parts.append(piece)
            return "".join(parts)

    return await _fan_out(url, prompts, concurrency, ask)


async def run_anthropic(url: str, prompts: list[str], concurrency: int) -> Answers:
    """Anthropic Messages, streamed."""
    endpoint = f"{url}/v1/messages"
    headers = {"x-api-key": "dummy", "anthropic-version": "2023-06-01"}

    async def ask(session: aiohttp.ClientSession, prompt: str) -> str:
        body = {
            "model": ANTHROPIC_MODEL,
            "max_tokens": MAX_TOKENS,
            "messages": [{"role": "user", "content": prompt}],
            "stream": True,
        }
        async with session.post(endpoint, json=body, headers=headers) as response:
            response.raise_for_status()
            parts = []
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                event = json.loads(line[6:])
                kind = event["type"]
                if kind == "content_block_delta" and event["delta"]["type"] == "text_delta":
                    parts.append(event["delta"]["text"])
                elif kind == "message_stop":
                    break
            return "".join(parts)

    return await _fan_out(url, prompts, concurrency, ask)


PROTOCOLS: dict[str, Client] = {
    "aichatonline": run,
    "openai": run_openai,
    "anthropic": run_anthropic,
}


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--protocol", choices=PROTOCOLS, default="aichatonline")
    args, rest = parser.parse_known_args(argv)
    return main("baseline", PROTOCOLS[args.protocol], rest)


if __name__ == "__main__":
    raise SystemExit(cli())
