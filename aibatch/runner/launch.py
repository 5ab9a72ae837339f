"""run_job: the engine switch (this machine or a Dask cluster), with signal handling.

The CLI calls :func:`run_job`; so do the blocking library calls. A local job runs in a
new event loop through :func:`~aibatch.runner.job.arun_job`; a Dask job goes to the
driver in :mod:`aibatch.runner.distributed`, imported only then (Dask is an extra).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import anyio

from ..errors import UsageError, plain_errors
from ..jobs.spec import JobSpec
from .engine import ProgressCallback
from .job import arun_job
from .summary import Summary

__all__ = ["refuse_running_loop", "run_job"]


def refuse_running_loop(name: str, async_name: str) -> None:
    """Refuse a blocking call made inside a running event loop (a notebook cell).

    Raises:
        UsageError: an event loop is running in this thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise UsageError(
        f"aibatch.{name}() cannot run inside a running event loop (a notebook, an async"
        f" app): use 'await aibatch.{async_name}(...)' there"
    )


async def _with_signals(
    spec: JobSpec, on_progress: ProgressCallback | None, on_signal: Callable[[int], None]
) -> Summary:
    """Run with SIGINT/SIGTERM handled: the first stops gracefully, a second at once."""
    stop = anyio.Event()
    summary: Summary | None = None
    with plain_errors():
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        on_signal(signum)
                        if stop.is_set():
                            tg.cancel_scope.cancel()
                            return
                        stop.set()

            tg.start_soon(watch)
            summary = await arun_job(spec, on_progress=on_progress, stop=stop)
            tg.cancel_scope.cancel()
    if summary is None:
        return Summary(input=spec.input, output=str(spec.output_path()), interrupted=True)
    return summary


def run_job(
    spec: JobSpec,
    *,
    on_progress: ProgressCallback | None = None,
    on_signal: Callable[[int], None] | None = None,
) -> Summary:
    """Run ``spec`` to completion in a new event loop (what the CLI calls).

    With ``on_signal``, SIGINT and SIGTERM stop the run gracefully (the first) or at
    once (the second), and ``on_signal`` is told of each.
    """
    refuse_running_loop("run_file", "arun_file")
    if spec.engine == "dask":
        from .distributed import run_dask_job  # Dask is an optional extra

        return run_dask_job(spec)
    if on_signal is None:
        return anyio.run(lambda: arun_job(spec, on_progress=on_progress), backend="asyncio")
    return anyio.run(_with_signals, spec, on_progress, on_signal, backend="asyncio")
