"""The official Anthropic SDK as a batch client: its async client under a semaphore.

``AsyncAnthropic`` (no retries, proxies from the environment ignored, its default
connection pool), one ``messages.create(stream=True)`` per prompt, the text deltas
joined, ``asyncio.gather`` over the prompts under an ``asyncio.Semaphore`` of the
concurrency: what a user of the SDK would write. No input or output files.
``python -m benchmarks.anthropic_sdk --url U --prompts N -c C``.
"""

from __future__ import annotations

import asyncio

import anthropic

from .clientcli import Answers, main

MODEL = "claude-haiku-4-5"  # aibatch's default for the anthropic provider
MAX_TOKENS = 1024  # the API requires it; aibatch sends the same default


async def run(url: str, prompts: list[str], concurrency: int) -> Answers:
    http = anthropic.DefaultAsyncHttpxClient(trust_env=False)
    async with anthropic.AsyncAnthropic(
        base_url=url, api_key="dummy", max_retries=0, http_client=http
    ) as client:
        semaphore = asyncio.Semaphore(concurrency)

        async def ask(prompt: str) -> str:
            async with semaphore:
                stream = await client.messages.create(
                    model=MODEL,
                    max_tokens=MAX_TOKENS,
                    messages=[{"role": "user", "content": prompt}],
                    stream=True,
                )
                parts = []
                async for event in stream:
                    if event.type == "content_block_delta" and event.delta.type == "text_delta":
                        parts.append(event.delta.text)
                return "".join(parts)

        return await asyncio.gather(*(ask(p) for p in prompts), return_exceptions=True)


if __name__ == "__main__":
    raise SystemExit(main("anthropic_sdk", run))
