"""The command line: options -> JobSpec -> one library call -> console.

Exit codes (here and nowhere else): 0 every row ok or skipped; 1 some rows failed
beyond ``--max-failures`` (the output is still complete); 2 the job could not run as
asked (usage, input, output, checkpoint or credentials; nothing was sent for a usage
error); 130 interrupted.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import click
from click.core import ParameterSource

from ._version import __version__
from .console import ProgressReporter, provider_text, summary_text
from .errors import AibatchError
from .files import atomic_write
from .jobs.spec import (
    ENGINES,
    INPUT_FORMATS,
    JobSpec,
    RetryPolicy,
    load_job,
    parse_max_failures,
)
from .providers import Emulator, Faults, get_provider, provider_names
from .providers.emulator import PROTOCOLS
from .runner.api import preview, run_job

EXIT_OK, EXIT_FAILED_ROWS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
AUTO_CEILING = 512  # -c auto: adapt up to this many requests in flight

# Options that map one to one onto JobSpec fields of the same name.
_FIELDS = (
    "output", "input_format", "encoding", "prompt_column", "template", "system",
    "messages_column", "id_column", "provider", "model", "base_url", "proxy", "rps",
    "timeout", "limit", "emulate", "dedupe", "retry_failed", "restart", "temperature",
    "top_p", "max_tokens", "seed", "stream", "api_key_env", "engine", "scheduler", "workers",
    "partition_rows", "single_file",
)  # fmt: skip


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    click.echo(f"aibatch: error: {message}", err=True)
    sys.exit(code)


def _options(*decorators: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def apply(function: Any) -> Any:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="aibatch")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """Run a file of prompts through a chat provider; get every answer back in Parquet."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("distributed").setLevel(level)  # Dask logs at INFO on its own


_POSITIVE = click.FloatRange(min=0, min_open=True)

_run_options = _options(
    click.argument("input", required=False),
    click.option("-o", "--output", help="Parquet output [default: INPUT_STEM.responses.parquet]."),
    click.option("--input-format", type=click.Choice(INPUT_FORMATS), help="Override the suffix."),
    click.option("--encoding", default="utf-8", show_default=True, help="Encoding of text input."),
    click.option("--prompt-column", default="prompt", show_default=True, help="Prompt column."),
    click.option("--template", help='Build the prompt from columns: "Summarise: {text}".'),
    click.option("--system", help="System message sent before every prompt."),
    click.option("--messages-column", help="Column with a JSON list of {role, content}."),
    click.option("--id-column", help="Unique row id column [default: the row number]."),
    click.option("--provider", default="aichatonline", show_default=True, help="See: providers."),
    click.option("--model", help="Model name [default: the provider's]."),
    click.option("--base-url", help="Provider API base URL."),
    click.option("--proxy", help="Proxy URL for every request."),
    click.option("--api-key-env", help="Variable holding the API key [default: OPENAI_API_KEY]."),
    click.option("-c", "--concurrency", default="16", show_default=True,
                 help="Requests in flight at once, or auto (adapt to 429s)."),
    click.option("--adaptive", is_flag=True, help="Adapt to 429s, with -c as the ceiling."),
    click.option("--rps", type=_POSITIVE, help="Request starts per second."),
    click.option("--temperature", type=click.FloatRange(0, 2), help="Sampling temperature."),
    click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), help="Nucleus sampling."),
    click.option("--max-tokens", type=click.IntRange(1), help="Longest answer, in tokens."),
    click.option("--seed", type=int, help="Sampling seed."),
    click.option("--stop", multiple=True, help="Stop sequence (repeatable, up to 4)."),
    click.option("--stream/--no-stream", default=True, show_default=True,
                 help="Stream answers (--no-stream: one JSON answer)."),
    click.option("--max-attempts", type=click.IntRange(1, 100), default=5, show_default=True,
                 help="Tries per row, the first included."),
    click.option("--timeout", type=_POSITIVE, default=120.0, show_default=True,
                 help="Seconds one attempt may take."),
    click.option("--limit", type=click.IntRange(min=0), help="Only the first N rows."),
    click.option("--emulate", is_flag=True, help="Answer from a built-in local emulator."),
    click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True),
    click.option("--scheduler", help="Dask scheduler address (--engine dask)."),
    click.option("--workers", type=click.IntRange(1), help="Local Dask worker processes."),
    click.option("--partition-rows", type=click.IntRange(1), default=100_000, show_default=True),
    click.option("--single-file", is_flag=True, help="Dask: one Parquet file, not a folder."),
    click.option("--job", "job_file", type=click.Path(dir_okay=False),
                 help="TOML job file; command-line options override it."),
    click.option("--dry-run", is_flag=True, help="Check the input, show prompts, send nothing."),
    click.option("--dedupe/--no-dedupe", default=True, show_default=True,
                 help="Send identical requests once."),
    click.option("--retry-failed/--no-retry-failed", default=True, show_default=True,
                 help="On a re-run, send rows that failed before again."),
    click.option("--restart", is_flag=True, help="Discard the checkpoint and start over."),
    click.option("--max-failures", help="Failed rows (N or N%) that still exit 0."),
    click.option("--progress/--no-progress", default=None,
                 help="Progress bar [default: when stderr is a terminal]."),
    click.option("-q", "--quiet", is_flag=True, help="No progress and no summary."),
    click.option("--summary-json", type=click.Path(dir_okay=False), help="Write the summary."),
)  # fmt: skip


@main.command()
@_run_options
@click.pass_context
def run(ctx: click.Context, /, input: str | None, **opts: Any) -> None:
    """Send every row of INPUT and write one output row per input row.

    INPUT is a .csv, .tsv, .jsonl/.ndjson or .parquet file, or - for CSV on stdin.
    Re-running the same command resumes: finished rows are kept in a checkpoint beside
    the output and are not sent again.
    """
    try:
        spec = _spec(ctx, input, opts)
        if opts["dry_run"]:
            _dry_run(spec)
            return
    except AibatchError as exc:
        _fail(str(exc))
    reporter = None if opts["quiet"] else ProgressReporter(bar=opts["progress"])

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        click.echo(f"\naibatch: {name}: finishing requests in flight (again to stop now)", err=True)

    try:
        summary = run_job(spec, on_progress=reporter, on_signal=on_signal)
    except AibatchError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted; run the same command again to resume", EXIT_INTERRUPTED)
    finally:
        if reporter is not None:
            reporter.close()
    if opts["summary_json"]:
        with atomic_write(Path(opts["summary_json"])) as handle:
            handle.write((summary.to_json() + "\n").encode())
    if not opts["quiet"]:
        click.echo(summary_text(summary), err=True)
    if summary.interrupted:
        sys.exit(EXIT_INTERRUPTED)
    if not spec.tolerates(summary.error, summary.rows):
        sys.exit(EXIT_FAILED_ROWS)


def _spec(ctx: click.Context, input: str | None, opts: dict[str, Any]) -> JobSpec:
    """Job file values, overridden by the options given on the command line."""
    values: dict[str, Any] = load_job(opts["job_file"]) if opts["job_file"] else {}

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) is not ParameterSource.DEFAULT

    for name in _FIELDS:
        if given(name) or name not in values:
            values[name] = opts[name]
    if given("stop") or "stop" not in values:
        values["stop"] = tuple(opts["stop"]) or None
    if given("concurrency") or "concurrency" not in values:
        values.update(_concurrency(opts["concurrency"]))
    if opts["adaptive"]:
        values["adaptive"] = True
    if input is not None:
        values["input"] = input
    if "input" not in values:
        raise click.UsageError("INPUT is missing (or give it in a --job file)")
    retry: RetryPolicy = values.get("retry", RetryPolicy())
    if given("max_attempts") or "retry" not in values:
        retry = dataclasses.replace(retry, attempts=opts["max_attempts"])
    values["retry"] = retry
    if opts["max_failures"] is not None:
        values.pop("max_failures", None)
        values.pop("max_failure_percent", None)
        values.update(parse_max_failures(opts["max_failures"]))
    return JobSpec(**values)


def _concurrency(value: str) -> dict[str, Any]:
    if value.strip().lower() == "auto":
        return {"concurrency": AUTO_CEILING, "adaptive": True}
    try:
        return {"concurrency": int(value)}
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number or auto", param_hint="-c") from None


def _dry_run(spec: JobSpec) -> None:
    rows, skipped, shown = preview(spec)
    click.echo(
        f"{spec.input}: {rows} rows, {skipped} with an empty prompt (skipped);"
        f" nothing sent. First prompts:"
    )
    for row, text in shown:
        click.echo(f"--- row {row}\n{text}")


@main.command()
def providers() -> None:
    """List the installed providers, their models and options."""
    for name in provider_names():
        try:
            click.echo(provider_text(name, get_provider(name)))
        except AibatchError as exc:
            click.echo(f"{name}: {exc}")


_FAULT_HELP = {
    "error_rate": "Share of HTTP 500s.",
    "rate_limit_rate": "Share of 429s.",
    "retry_after": "Seconds sent in Retry-After.",
    "cut_rate": "Share of streams cut mid-way.",
    "garbage_rate": "Share of streams with garbage lines.",
    "stall_rate": "Share of requests whose first byte stalls.",
    "stall_seconds": "How long a stall lasts.",
    "token_max_uses": "A token expires after N uses.",
    "token_max_age": "A token expires after S seconds.",
    "token_concurrency": "Requests in flight per token (429 above).",
    "max_inflight": "Requests in flight in all (429 above).",
    "max_rps": "Requests per second in all (429 above).",
    "seed": "Seed of the fault draws.",
}
_fault_options = _options(*(
    click.option(
        "--" + field.name.replace("_", "-"),
        type=int if "int" in str(field.type) else float,
        default=field.default,
        show_default=field.default is not None,
        help=_FAULT_HELP[field.name],
    )
    for field in dataclasses.fields(Faults)
))  # fmt: skip


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Port [default: any].")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="aichatonline", show_default=True)
@click.option("--api-key-env", help="Require the key in this variable (openai protocol).")
@click.option("--latency", type=float, default=0.0, help="Seconds before the first chunk.")
@click.option("--chunk-delay", type=float, default=0.0, help="Seconds between chunks.")
@click.option("--chunks", type=click.IntRange(1), default=4, show_default=True)
@click.option("--record-prompts", is_flag=True, help="Count requests per prompt in /stats.")
@_fault_options
def emulate(
    host: str,
    port: int,
    protocol: str,
    api_key_env: str | None,
    latency: float,
    chunk_delay: float,
    chunks: int,
    record_prompts: bool,
    **faults: Any,
) -> None:
    """Serve a local emulator of the provider API until stopped (prints its base URL)."""
    api_key = os.environ.get(api_key_env) if api_key_env else None
    if api_key_env and not api_key:
        _fail(f"the environment variable {api_key_env} (--api-key-env) is not set")
    try:
        emulator = Emulator(
            host=host,
            port=port,
            latency=latency,
            chunk_delay=chunk_delay,
            chunks=chunks,
            faults=Faults(**faults),
            record_prompts=record_prompts,
            protocol=protocol,
            api_key=api_key,
        )
    except ValueError as exc:
        _fail(str(exc))

    async def serve() -> None:
        async with emulator as base_url:
            click.echo(base_url)
            sys.stdout.flush()
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    return

    anyio.run(serve, backend="asyncio")
