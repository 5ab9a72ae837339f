"""Shared fixtures: real emulators on loopback ports the OS chooses."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal

from aibatch.providers.emulator import Emulator


@pytest.fixture(scope="session", autouse=True)
def price_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The price cache (aibatch.jobs.price_cache) of the whole session, out of the real home.

    Set in ``os.environ``, so that subprocesses inherit it; restored afterwards.
    """
    folder = tmp_path_factory.mktemp("aibatch-cache")
    before = os.environ.get("AIBATCH_CACHE_DIR")
    os.environ["AIBATCH_CACHE_DIR"] = str(folder)
    try:
        yield folder
    finally:
        if before is None:
            os.environ.pop("AIBATCH_CACHE_DIR", None)
        else:
            os.environ["AIBATCH_CACHE_DIR"] = before


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
