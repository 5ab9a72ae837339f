"""Shared fixtures: real emulators on loopback ports the OS chooses."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal

from aibatch.providers.emulator import Emulator


@pytest.fixture
def anyio_backend() -> str:
    # aiohttp runs on asyncio only.
    return "asyncio"


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """A fault-free emulator in the test's event loop; tests read ``emulator.stats``."""
    emu = Emulator(record_prompts=True)
    async with emu:
        yield emu


@contextlib.contextmanager
def emulator_in_thread(**options: Any) -> Iterator[Emulator]:
    """An emulator served from its own event loop in a thread, for synchronous callers."""
    emu = Emulator(record_prompts=True, **options)
    with start_blocking_portal(backend="asyncio") as portal, portal.wrap_async_context_manager(emu):
        yield emu


@pytest.fixture
def live_emulator() -> Iterator[Emulator]:
    """A fault-free emulator in a thread (for CLI tests through click's CliRunner)."""
    with emulator_in_thread() as emu:
        yield emu
