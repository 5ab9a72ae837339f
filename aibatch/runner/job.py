"""One job on this machine: open the provider (and the emulator), run the engine.

:func:`arun_job` is the async core every entry point ends in: the CLI, the library API,
and each Dask task (one partition each). It checks the job's options against its
provider, opens the input, the provider and the emulator when asked, and hands the
input to :func:`~aibatch.runner.engine.run_partition` as one partition.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
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

__all__ = ["arun_frame_spec", "arun_job", "checked_provider", "preview"]


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
        output = check_output(spec.output_path(), [spec.input])
        provider_class = checked_provider(spec)
        api_key = _api_key(spec, provider_class)
        defaults = {
            name: value
            for name, value in provider_class.request_defaults.items()
            if getattr(spec, name, None) is None
        }
        if defaults:  # what the provider sent for options the job left unset
            metadata = {**(metadata or {}), "request_defaults": defaults}
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
    provider.get_model(spec.model)
    unsupported = [name for name, _ in spec.sampling() if name not in provider.sampling_options]
    if unsupported:
        options = ", ".join("--" + name.replace("_", "-") for name in unsupported)
        raise UsageError(f"the {provider.name} provider does not take {options}")
    if not spec.stream and not provider.can_disable_stream:
        raise UsageError(f"the {provider.name} provider always streams; drop --no-stream")
    if spec.emulate and provider.name not in PROTOCOLS:
        raise UsageError(
            f"--emulate serves the {', '.join(PROTOCOLS)} protocols, not {provider.name}"
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
        delimiter=spec.delimiter,
        quoting=spec.quoting,
        batch_rows=spec.batch_rows,
        limit=spec.limit,
        name="<stdin>" if spec.input == "-" else None,
    )


async def arun_frame_spec(frame: Any, spec: JobSpec) -> Any:
    """Run a DataFrame as the job ``spec`` says (its ``output``, if any, keeps a checkpoint)."""
    with tempfile.TemporaryDirectory(prefix="aibatch-frame-") as scratch:
        output = spec.output or str(Path(scratch) / "frame.parquet")
        spec = spec.replace(output=output)
        source = frame_source(frame, batch_rows=spec.batch_rows, limit=spec.limit)
        summary = await arun_job(spec, source=source)
        result = await anyio.to_thread.run_sync(read_frame, output, frame)
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
        builder = PromptBuilder(spec, provider.get_model(spec.model), source.name)
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
