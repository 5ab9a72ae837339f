"""Shared fixtures: a real emulator on a loopback port the OS chooses."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from aibatch.providers.emulator import Emulator


@pytest.fixture
def anyio_backend() -> str:
    # aiohttp runs on asyncio only.
    return "asyncio"


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """A fault-free emulator that records prompts; tests read ``emulator.stats``."""
    emu = Emulator(record_prompts=True)
    async with emu:
        yield emu
