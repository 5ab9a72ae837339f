"""The bare baseline: the leanest honest client of the protocol.

One aiohttp session, one token, a semaphore over ``asyncio.gather``, JSON lines parsed
and joined. No input or output files, no retries, no checkpoint: what is left when a
client does only the protocol's work. ``python -m benchmarks.baseline --url U --prompts N -c C``.
"""

from __future__ import annotations

import asyncio
import json
import secrets

import aiohttp

from .clientcli import Answers, main

TOKEN_PATH = "/api/v1/user/getUniqueId"
CHAT_PATH = "/aichatonline/api/chat/gpt"


async def run(url: str, prompts: list[str], concurrency: int) -> Answers:
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


if __name__ == "__main__":
    raise SystemExit(main("baseline", run))
