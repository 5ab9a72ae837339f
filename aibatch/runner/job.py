"""One job on this machine: open the provider (and the emulator), run the engine.

:func:`arun_job` is the async core every entry point ends in: the CLI, the library API,
and each Dask task (one partition each). It checks the job's options against its
provider, opens the input, the provider and the emulator when asked, and hands the
input to :func:`~aibatch.runner.engine.run_partition` as one partition.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from ..errors import BatchesPending, Unauthorized, UsageError, plain_errors
from ..io.inputs import InputSource, frame_source, open_input, spool_stdin
from ..io.output import check_output, output_schema, read_frame
from ..jobs.checkpoint import (
    SEND,
    Checkpoint,
    checkpoint_dir,
    has_batches,
    request_hash,
    row_key,
)
from ..jobs.cost import Estimate, estimate, look_up_price, request_size
from ..jobs.spec import JobSpec
from ..providers import AsyncGeneratorProvider, get_provider
from ..providers.faults import PROTOCOLS
from .engine import ProgressCallback, run_partition
from .prompts import PromptBuilder
from .summary import Summary

log = logging.getLogger(__name__)

__all__ = [
    "Preview",
    "arun_frame_spec",
    "arun_job",
    "checked_provider",
    "open_job_input",
    "preview",
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
                from ..providers.emulator import Emulator  # aiohttp's server: only here

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
            service = _service(provider.name, spec)
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
        UsageError: unknown provider or model, an option the provider does not take (or
            not at that value), or a budget (``--max-cost``) that no price or usage could keep.
    """
    provider = get_provider(spec.provider)
    provider.get_model(spec.model)
    unsupported = [name for name, _ in spec.sampling() if name not in provider.sampling_options]
    if unsupported:
        options = ", ".join("--" + name.replace("_", "-") for name in unsupported)
        raise UsageError(f"the {provider.name} provider does not take {options}")
    for name, value in spec.sampling():
        bounds = provider.sampling_bounds.get(name)
        if (
            bounds is not None
            and isinstance(value, int | float)
            and not (bounds[0] <= value <= bounds[1])
        ):
            raise UsageError(
                f"the {provider.name} provider takes --{name.replace('_', '-')} from"
                f" {bounds[0]:g} to {bounds[1]:g}, not {value:g}"
            )
    if spec.image_columns and not provider.takes_images:
        raise UsageError(f"the {provider.name} provider takes no images; drop --image-column")
    if not spec.stream and not provider.can_disable_stream:
        raise UsageError(f"the {provider.name} provider always streams; drop --no-stream")
    if spec.emulate and provider.name not in PROTOCOLS:
        raise UsageError(
            f"--emulate serves the {', '.join(PROTOCOLS)} protocols, not {provider.name}"
        )
    if spec.batch_api and not provider.batch_api:
        raise UsageError(
            f"the {provider.name} provider has no batch API; --batch-api works with"
            " --provider openai and --provider anthropic"
        )
    if spec.batch_api and spec.emulate and (spec.no_wait or spec.max_wait is not None):
        raise UsageError(
            "the built-in emulator (--emulate) stops with the run, and its batches with it:"
            " for --no-wait or --max-wait, start one with `aibatch emulate --protocol"
            f" {provider.name}` and point --base-url at it"
        )
    if spec.max_cost is not None:
        _check_budget(spec, provider)
    return provider


def _answer_bound(spec: JobSpec, provider: type[AsyncGeneratorProvider]) -> int | None:
    """The longest answer a request may get: ``--max-tokens``, else the provider's."""
    default = provider.request_defaults.get("max_tokens")
    return spec.max_tokens or (default if isinstance(default, int) else None)


def _check_budget(spec: JobSpec, provider: type[AsyncGeneratorProvider]) -> None:
    """Refuse ``--max-cost`` where no request's cost could be bounded, before sending."""
    if not provider.reports_usage:
        raise UsageError(
            f"--max-cost needs the token usage of each answer; the {provider.name} provider"
            " reports none"
        )
    if _answer_bound(spec, provider) is None:
        raise UsageError(
            "--max-cost needs --max-tokens: without a cap on an answer's length no request's"
            " cost has an upper bound"
        )
    if spec.image_columns:
        raise UsageError(
            "--max-cost cannot bound requests with images (--image-column): what an image"
            " costs in input tokens is the service's to decide; run without a budget"
        )
    lookup = look_up_price(
        provider.get_model(spec.model), input_price=spec.input_price, output_price=spec.output_price
    )
    if lookup.price is None:
        raise UsageError(f"--max-cost needs a price: {lookup.note.removeprefix('cost unknown: ')}")


def _service(name: str, spec: JobSpec) -> str:
    """Who answers, as part of every request's hash: the emulator is not the service."""
    return name + ("+emulator" if spec.emulate else "")


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
    if spec.input != "-":
        return open_job_input(spec)
    assert scratch is not None
    spooled = str(spool_stdin(scratch))
    return open_job_input(spec, spooled, input_format=spec.input_format or "csv", name="<stdin>")


def open_job_input(
    spec: JobSpec,
    path: str | None = None,
    *,
    input_format: str | None = None,
    name: str | None = None,
) -> InputSource:
    """``spec``'s input (or ``path``) read as the job's options say: the one place they are."""
    return open_input(
        path or spec.input,
        input_format=input_format or spec.input_format,
        encoding=spec.encoding,
        delimiter=spec.delimiter,
        quoting=spec.quoting,
        batch_rows=spec.batch_rows,
        limit=spec.limit,
        name=name,
    )


async def arun_frame_spec(frame: Any, spec: JobSpec) -> Any:
    """Run a DataFrame as the job ``spec`` says (its ``output``, if any, keeps a checkpoint).

    Raises:
        BatchesPending: with ``batch_api``, batches have not all ended (``no_wait``,
            ``max_wait``): call again later to collect them.
    """
    if spec.batch_api and spec.output is None and (spec.no_wait or spec.max_wait is not None):
        raise UsageError(
            "a DataFrame job that may leave batches running (batch_api with no_wait or"
            " max_wait) needs output=: its batches are recorded beside it"
        )
    with tempfile.TemporaryDirectory(prefix="aibatch-frame-") as scratch:
        output = spec.output or str(Path(scratch) / "frame.parquet")
        spec = spec.replace(output=output)
        source = frame_source(frame, batch_rows=spec.batch_rows, limit=spec.limit)
        summary = await arun_job(spec, source=source)
        if summary.batch_pending and not summary.interrupted:
            raise BatchesPending(summary.batch_pending, output)
        result = await anyio.to_thread.run_sync(read_frame, output, frame)
    result.attrs["aibatch"] = summary.to_dict()
    return result


@dataclass(frozen=True, slots=True, kw_only=True)
class Preview:
    """What a dry run found: the rows, what a run would send, and what it would cost.

    Attributes:
        rows: input rows.
        skipped: rows with an empty prompt.
        to_send: rows a run would send now: not answered in the checkpoint (read, never
            written), and not duplicates of another row.
        reused: rows the checkpoint answers.
        deduped: rows that would share another row's request.
        shown: the first prompts, ``(row, text sent)``.
        estimate: the tokens and cost of the rows to send.
        checkpoint_read: whether the checkpoint was read (not with the Dask engine,
            whose partitions keep their own).
        in_batches: rows provider batches of an earlier run hold (``--batch-api``): a
            run collects them, and sends them not again.
    """

    rows: int
    skipped: int
    to_send: int
    reused: int
    deduped: int
    shown: list[tuple[int, str]]
    estimate: Estimate
    checkpoint_read: bool = True
    in_batches: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The dry run as JSON-ready values (``--summary-json``)."""
        counts = {
            "dry_run": True,
            "rows": self.rows,
            "skipped": self.skipped,
            "to_send": self.to_send,
            "reused": self.reused,
            "deduped": self.deduped,
            "in_batches": self.in_batches,
        }
        return {**counts, **self.estimate.to_dict()}


def preview(spec: JobSpec, count: int = 5) -> Preview:
    """Check every row as a run would, send nothing; plan against the checkpoint, estimate.

    The checkpoint is only read: no lock is taken and nothing is written, so a dry run
    may look at a job another run is writing.

    Raises:
        UsageError: whatever a real run would refuse before sending.
    """
    with _scratch(spec) as scratch:
        source = _open_source(spec, scratch)
        output = check_output(spec.output_path(), [spec.input])
        provider_class = checked_provider(spec)
        provider = provider_class(base_url=spec.base_url or "http://127.0.0.1")
        model = provider.get_model(spec.model)
        builder = PromptBuilder(spec, model, source.name)
        service = _service(provider.name, spec)
        if source.columns:
            builder.check_columns(source.columns)
        keys, hashes, skipped, sizes = array("Q"), array("Q"), bytearray(), array("q")
        shown: list[tuple[int, str]] = []
        for batch in source.batches():
            ids = builder.ids(batch)
            for index, (row_id, request) in enumerate(
                zip(ids, builder.requests(batch), strict=True)
            ):
                if request is None:
                    keys.append(0)
                    hashes.append(0)
                    skipped.append(1)
                    sizes.extend((0, 0, 0, 0))
                    continue
                h = request_hash(request, service)
                keys.append(row_key(row_id, h))
                hashes.append(h)
                skipped.append(0)
                sizes.extend(request_size(request))
                if len(shown) < count:
                    shown.append((batch.first_row + index, provider.render(request)))
        builder.check_columns(source.columns)
        output_schema(source.schema())
    local = spec.engine == "local"
    with Checkpoint(
        checkpoint_dir(output), restart=spec.restart or not local, read_only=True
    ) as checkpoint:
        plan = checkpoint.plan(
            np.frombuffer(keys, np.uint64),
            np.frombuffer(hashes, np.uint64),
            np.frombuffer(bytes(skipped), np.uint8).astype(bool),
            dedupe=spec.dedupe,
            retry_failed=spec.retry_failed,
        )
    send = plan.loc == SEND
    in_batches = 0
    # rows batches of an earlier run hold are not sent again
    if local and not spec.restart and has_batches(checkpoint_dir(output)):
        from .batch_state import rows_in_batches

        held = rows_in_batches(
            checkpoint_dir(output),
            np.frombuffer(keys, np.uint64),
            np.frombuffer(hashes, np.uint64),
            dedupe=spec.dedupe,
        )
        in_batches = int(np.count_nonzero(send & held))
        send &= ~held
    lookup = look_up_price(
        model,
        input_price=spec.input_price,
        output_price=spec.output_price,
        batch=spec.batch_api,
    )
    if not provider_class.reports_usage:
        note = f"the {provider.name} provider reports no token usage: a run records no cost"
        lookup = dataclasses.replace(lookup, note=f"{lookup.note}; {note}")
    rows = np.frombuffer(sizes, np.int64).reshape(-1, 4)[send]
    found = estimate(
        lookup,
        rows,
        max_tokens=_answer_bound(spec, provider_class),
        expected_output_tokens=spec.expected_output_tokens,
    )
    return Preview(
        rows=len(plan.loc),
        skipped=plan.skipped,
        to_send=int(np.count_nonzero(send)),
        reused=plan.reused,
        deduped=plan.deduped,
        shown=shown,
        estimate=found,
        checkpoint_read=local,
        in_batches=in_batches,
    )
