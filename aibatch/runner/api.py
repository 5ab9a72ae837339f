"""The library API: run_file and run_frame (blocking), arun_file and arun_frame (async).

Each opens the provider (and the emulator, with ``emulate=True``), hands the input to
:func:`run_partition` as one partition, and returns the :class:`Summary` (or the output
rows as a DataFrame).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio

from ..errors import Unauthorized, UsageError, plain_errors
from ..io.inputs import InputSource, frame_source, open_input, spool_stdin
from ..io.output import check_output, output_schema, read_frame
from ..jobs.spec import JobSpec
from ..providers import AsyncGeneratorProvider, Emulator, get_provider
from ..providers.emulator import PROTOCOLS
from .engine import ProgressCallback, run_partition
from .prompts import PromptBuilder
from .summary import Summary

log = logging.getLogger(__name__)

__all__ = [
    "arun_file",
    "arun_frame",
    "arun_frame_spec",
    "arun_job",
    "preview",
    "run_file",
    "run_frame",
    "run_job",
]


async def arun_job(
    spec: JobSpec,
    *,
    source: InputSource | None = None,
    on_progress: ProgressCallback | None = None,
    stop: anyio.Event | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Summary:
    """Run the job ``spec`` describes; the async core of every entry point.

    Args:
        spec: the job.
        source: rows to use instead of opening ``spec.input``.
        on_progress: called with live counts a few times a second.
        stop: set it to stop the run gracefully (see :func:`run_partition`).
        metadata: more to record in the output's metadata (a partition's identity).

    Raises:
        AibatchError: a subclass; nothing is sent when it is a :class:`UsageError`.
    """
    try:
        return await _arun_job(
            spec, source=source, on_progress=on_progress, stop=stop, metadata=metadata
        )
    except Unauthorized as exc:
        variable = spec.api_key_env or get_provider(spec.provider).api_key_env
        hint = f"; check the key in ${variable} (or name another with --api-key-env)"
        raise Unauthorized(
            f"the service refused the API key: {exc}{hint if variable else ''}",
            http_status=exc.http_status,
        ) from None


async def _arun_job(
    spec: JobSpec,
    *,
    source: InputSource | None,
    on_progress: ProgressCallback | None,
    stop: anyio.Event | None,
    metadata: Mapping[str, Any] | None,
) -> Summary:
    with plain_errors(), _scratch(spec) as scratch:
        if source is None:
            source = await anyio.to_thread.run_sync(_open_source, spec, scratch)
        output = spec.output_path()
        check_output(output, [spec.input])
        provider_class = checked_provider(spec)
        api_key = _api_key(spec, provider_class)
        async with contextlib.AsyncExitStack() as stack:
            base_url = spec.base_url
            if spec.emulate:
                emulator = Emulator(protocol=provider_class.name)
                base_url = await stack.enter_async_context(emulator)
            provider = await stack.enter_async_context(
                provider_class(
                    base_url=base_url,
                    proxy=spec.proxy,
                    concurrency=spec.concurrency,
                    timeout=spec.timeout,
                    api_key=api_key,
                    stream=spec.stream,
                )
            )
            service = provider.name + ("+emulator" if spec.emulate else "")
            return await run_partition(
                source,
                spec,
                provider,
                output=output,
                service=service,
                on_progress=on_progress,
                stop=stop,
                metadata=metadata,
            )


def checked_provider(spec: JobSpec) -> type[AsyncGeneratorProvider]:
    """The job's provider class, once the job's options are known to suit it.

    Raises:
        UsageError: unknown provider or model, or an option the provider does not take.
    """
    provider = get_provider(spec.provider)
    provider.get_model(spec.model)  # type: ignore[attr-defined]
    unsupported = [name for name, _ in spec.sampling() if name not in provider.sampling_options]
    if unsupported:
        options = ", ".join("--" + name.replace("_", "-") for name in unsupported)
        raise UsageError(f"the {provider.name} provider does not take {options}")
    if not spec.stream and not provider.can_disable_stream:
        raise UsageError(f"the {provider.name} provider always streams; drop --no-stream")
    if spec.emulate and provider.name not in PROTOCOLS:
        raise UsageError(
            f"--emulate serves the {' and '.join(PROTOCOLS)} protocols, not {provider.name}"
        )
    return provider


def _api_key(spec: JobSpec, provider: type[AsyncGeneratorProvider]) -> str | None:
    """The API key from the environment: never from the command line, never shown."""
    if provider.api_key_env is None:
        if spec.api_key_env:
            raise UsageError(f"the {provider.name} provider takes no API key (--api-key-env)")
        return None
    if spec.emulate:
        return None
    name = spec.api_key_env or provider.api_key_env
    key = os.environ.get(name) or None
    if key is None and spec.api_key_env:
        raise UsageError(f"the environment variable {name} (--api-key-env) is not set")
    if key is None and (spec.base_url or provider.url).rstrip("/") == provider.url:
        raise UsageError(
            f"{provider.url} needs an API key: set {name}, or point --base-url at a server"
            " that needs none"
        )
    return key


@contextlib.contextmanager
def _scratch(spec: JobSpec) -> Iterator[Path | None]:
    """A temporary folder for spooling standard input; none for a file."""
    if spec.input != "-":
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="aibatch-") as folder:
        yield Path(folder)


def _open_source(spec: JobSpec, scratch: Path | None) -> InputSource:
    path = spec.input
    fmt = spec.input_format
    if path == "-":
        assert scratch is not None
        path, fmt = str(spool_stdin(scratch)), fmt or "csv"
    return open_input(
        path,
        input_format=fmt,
        encoding=spec.encoding,
        batch_rows=spec.batch_rows,
        limit=spec.limit,
        name="<stdin>" if spec.input == "-" else None,
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
    if spec.engine == "dask":
        from .distributed import run_dask_job  # Dask is an optional extra

        return run_dask_job(spec)
    if on_signal is None:
        return anyio.run(lambda: arun_job(spec, on_progress=on_progress), backend="asyncio")
    return anyio.run(_with_signals, spec, on_progress, on_signal, backend="asyncio")


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
    return anyio.run(lambda: arun_frame(frame, **options), backend="asyncio")


async def arun_frame(frame: Any, **options: Any) -> Any:
    """The async twin of :func:`run_frame`."""
    return await arun_frame_spec(frame, JobSpec(input="<DataFrame>", **options))


async def arun_frame_spec(frame: Any, spec: JobSpec) -> Any:
    """Run a DataFrame as the job ``spec`` says (its ``output``, if any, keeps a checkpoint)."""
    with tempfile.TemporaryDirectory(prefix="aibatch-frame-") as scratch:
        output = spec.output or str(Path(scratch) / "frame.parquet")
        spec = spec.replace(output=output)
        source = frame_source(frame, batch_rows=spec.batch_rows, limit=spec.limit)
        summary = await arun_job(spec, source=source)
        result = await anyio.to_thread.run_sync(read_frame, output)
    result.attrs["aibatch"] = summary.to_dict()
    return result


def preview(spec: JobSpec, count: int = 5) -> tuple[int, int, list[tuple[int, str]]]:
    """Check every row as a run would, send nothing; return the first prompts.

    Returns:
        ``(rows, skipped, [(row, text sent), ...])`` with up to ``count`` prompts.

    Raises:
        UsageError: whatever a real run would refuse before sending.
    """
    with _scratch(spec) as scratch:
        source = _open_source(spec, scratch)
        check_output(spec.output_path(), [spec.input])
        provider = checked_provider(spec)(base_url=spec.base_url or "http://127.0.0.1")
        builder = PromptBuilder(spec, provider.get_model(spec.model), source.name)  # type: ignore[attr-defined]
        if source.columns:
            builder.check_columns(source.columns)
        rows = skipped = 0
        shown: list[tuple[int, str]] = []
        for batch in source.batches():
            builder.ids(batch)
            for index, request in enumerate(builder.requests(batch)):
                if request is None:
                    skipped += 1
                elif len(shown) < count:
                    shown.append((batch.first_row + index, provider.render(request)))
            rows += batch.data.num_rows
        builder.check_columns(source.columns)
        output_schema(source.schema())
    return rows, skipped, shown
