"""The official OpenAI SDK as a batch client: its async client under a semaphore.

``AsyncOpenAI`` (no retries, proxies from the environment ignored, its default
connection pool), one streamed ``chat.completions.create`` per prompt, the content
deltas joined, ``asyncio.gather`` over the prompts under an ``asyncio.Semaphore`` of the
concurrency: what a user of the SDK would write. No input or output files.
``python -m benchmarks.openai_sdk --url U --prompts N -c C`` (``U`` ends in ``/v1``).
"""

from __future__ import annotations

import asyncio

import openai

from .clientcli import Answers, main

MODEL = "gpt-4o-mini"  # aibatch's default for the openai provider


async def run(url: str, prompts: list[str], concurrency: int) -> Answers:
    http = openai.DefaultAsyncHttpxClient(trust_env=False)
    async with openai.AsyncOpenAI(
        base_url=url, api_key="dummy", max_retries=0, http_client=http
    ) as client:
        semaphore = asyncio.Semaphore(concurrency)

        async def ask(prompt: str) -> str:
            async with semaphore:
                stream = await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": prompt}], stream=True
                )
                parts = []
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        parts.append(chunk.choices[0].delta.content)
                return "".join(parts)

        return await asyncio.gather(*(ask(p) for p in prompts), return_exceptions=True)


if __name__ == "__main__":
    raise SystemExit(main("openai_sdk", run))
