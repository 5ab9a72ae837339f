"""gpt4free's own AiChatOnline client (g4f 6.7.1), fanned out like its users do.

The provider lives in ``g4f/Provider/not_working/AiChatOnline.py``. The package
``g4f.Provider.not_working`` cannot be imported in 6.7.1 (its ``__init__`` names a
module the release lacks), so the provider's module is loaded under a bare package
object. Its token URL is hard-coded to the public host, so a subclass points ``url`` and
``grab_token`` at the emulator and changes nothing else: a new ``ClientSession`` and a
new token for every prompt, exactly as gpt4free does. The prompts go through
``asyncio.gather`` under a semaphore of the same concurrency as the other clients.
``python -m benchmarks.g4f_client --url U --prompts N -c C``.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

from .clientcli import Answers, main

PACKAGE = "g4f.Provider.not_working"


def load_provider(base_url: str) -> Any:
    """gpt4free's AiChatOnline class, subclassed to talk to ``base_url``."""
    import g4f.Provider  # noqa: F401  (the parent package, imported as gpt4free's users do)

    if PACKAGE not in sys.modules:
        spec = importlib.util.find_spec("g4f.Provider")
        assert spec is not None and spec.submodule_search_locations
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(Path(spec.submodule_search_locations[0]) / "not_working")]
        package.__package__ = PACKAGE
        sys.modules[PACKAGE] = package
    module = importlib.import_module(f"{PACKAGE}.AiChatOnline")
    get_random_string = module.get_random_string

    class EmulatedAiChatOnline(module.AiChatOnline):  # type: ignore[misc,name-defined]
        url = base_url

        @classmethod
        async def grab_token(cls, session: Any, proxy: str | None) -> str:
            # gpt4free's grab_token, with its hard-coded host replaced by cls.url.
            async with session.get(
                f"{cls.url}/api/v1/user/getUniqueId?canvas=-{get_random_string()}", proxy=proxy
            ) as response:
                response.raise_for_status()
                return (await response.json())["data"]

    return EmulatedAiChatOnline


async def run(url: str, prompts: list[str], concurrency: int) -> Answers:
    provider = load_provider(url)
    semaphore = asyncio.Semaphore(concurrency)

    async def ask(prompt: str) -> str:
        async with semaphore:
            messages = [{"role": "user", "content": prompt}]
            parts = [
                chunk
                async for chunk in provider.create_async_generator(provider.default_model, messages)
                if isinstance(chunk, str)
            ]
            return "".join(parts)

    return await asyncio.gather(*(ask(p) for p in prompts), return_exceptions=True)


if __name__ == "__main__":
    raise SystemExit(main("g4f_client", run))
