"""The library API: run_file and run_frame (blocking), arun_file and arun_frame (async).

Thin: each builds a :class:`JobSpec` from its keywords and hands it to the engine
switch (:func:`~aibatch.runner.launch.run_job`) or the async core
(:func:`~aibatch.runner.job.arun_job`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from ..jobs.spec import JobSpec
from .job import arun_frame_spec, arun_job
from .launch import refuse_running_loop, run_job
from .summary import Summary

__all__ = ["arun_file", "arun_frame", "run_file", "run_frame"]


def run_file(input: str | Path, output: str | Path | None = None, **options: Any) -> Summary:
    """Run every row of ``input`` and write the answers to ``output`` (Parquet).

    Args:
        input: a .csv, .tsv, .jsonl/.ndjson or .parquet file.
        output: default ``<input stem>.responses.parquet`` beside the input.
        **options: any :class:`JobSpec` field, e.g. ``concurrency=64``, ``emulate=True``.

    Returns:
        What the run did. Re-running the same call resumes where it stopped.
    """
    return run_job(_spec(input, output, options))


async def arun_file(input: str | Path, output: str | Path | None = None, **options: Any) -> Summary:
    """The async twin of :func:`run_file`, for code already in an event loop."""
    return await arun_job(_spec(input, output, options))


def _spec(input: str | Path, output: str | Path | None, options: dict[str, Any]) -> JobSpec:
    return JobSpec(input=str(input), output=None if output is None else str(output), **options)


def run_frame(frame: Any, **options: Any) -> Any:
    """Run every row of a pandas DataFrame; return the output rows as a DataFrame.

    Args:
        frame: the rows; its ``prompt`` column (or ``prompt_column=``) is sent.
        **options: any :class:`JobSpec` field; ``output=`` keeps the Parquet file and
            its checkpoint there, so a repeated call resumes.

    Returns:
        The input columns followed by the result columns; ``.attrs["aibatch"]`` holds
        the summary.
    """
    refuse_running_loop("run_frame", "arun_frame")
    return anyio.run(lambda: arun_frame(frame, **options), backend="asyncio")


async def arun_frame(frame: Any, **options: Any) -> Any:
    """The async twin of :func:`run_frame`."""
    return await arun_frame_spec(frame, JobSpec(input="<DataFrame>", **options))
