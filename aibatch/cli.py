"""The command line: options -> JobSpec -> one library call -> console.

Exit codes (here and nowhere else): 0 every row ok or skipped; 1 some rows failed
beyond ``--max-failures`` (the output is still complete); 2 the job could not run as
asked (usage, input, output or checkpoint error; nothing was sent for a usage error);
130 interrupted.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import click
from click.core import ParameterSource

from . import __version__
from .console import ProgressReporter, summary_text
from .errors import AibatchError
from .jobs.spec import INPUT_FORMATS, JobSpec, RetryPolicy, load_job, parse_max_failures
from .providers import PROVIDERS, Emulator, Faults
from .runner.api import preview, run_job

EXIT_OK, EXIT_FAILED_ROWS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# CLI option name -> JobSpec field, for options that map one to one.
_FIELDS = {
    "output": "output",
    "input_format": "input_format",
    "encoding": "encoding",
    "prompt_column": "prompt_column",
    "template": "template",
    "system": "system",
    "messages_column": "messages_column",
    "id_column": "id_column",
    "provider": "provider",
    "model": "model",
    "base_url": "base_url",
    "proxy": "proxy",
    "concurrency": "concurrency",
    "rps": "rps",
    "timeout": "timeout",
    "limit": "limit",
    "emulate": "emulate",
    "dedupe": "dedupe",
    "retry_failed": "retry_failed",
    "restart": "restart",
}


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    click.echo(f"aibatch: error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="aibatch")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """Run a file of prompts through a chat provider; get every answer back in Parquet."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("input", required=False)
@click.option("-o", "--output", help="Parquet output [default: INPUT_STEM.responses.parquet].")
@click.option("--input-format", type=click.Choice(INPUT_FORMATS), help="Override the extension.")
@click.option(
    "--encoding", default="utf-8", show_default=True, help="Text encoding of CSV/TSV/JSONL."
)
@click.option(
    "--prompt-column", default="prompt", show_default=True, help="Column sent as the prompt."
)
@click.option("--template", help='Build the prompt from columns: "Summarise: {text}".')
@click.option("--system", help="System message sent before every prompt.")
@click.option("--messages-column", help="Column with a JSON list of {role, content} messages.")
@click.option("--id-column", help="Unique row id column [default: the row number].")
@click.option(
    "--provider", default="aichatonline", show_default=True, type=click.Choice(sorted(PROVIDERS))
)
@click.option("--model", help="Model name [default: the provider's].")
@click.option("--base-url", help="Provider API base URL.")
@click.option("--proxy", help="Proxy URL for every request.")
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(1, 100_000),
    default=16,
    show_default=True,
    help="Requests in flight at once.",
)
@click.option(
    "--rps", type=click.FloatRange(min=0, min_open=True), help="Request starts per second."
)
@click.option(
    "--max-attempts",
    type=click.IntRange(1, 100),
    default=5,
    show_default=True,
    help="Tries per row, the first included.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=120.0,
    show_default=True,
    help="Seconds one attempt may take.",
)
@click.option("--limit", type=click.IntRange(min=0), help="Only the first N rows.")
@click.option(
    "--emulate", is_flag=True, help="Answer from a built-in local emulator (offline demo)."
)
@click.option(
    "--job",
    "job_file",
    type=click.Path(dir_okay=False),
    help="TOML job file; command-line options override it.",
)
@click.option(
    "--dry-run", is_flag=True, help="Check the input, show the first prompts, send nothing."
)
@click.option(
    "--dedupe/--no-dedupe", default=True, show_default=True, help="Send identical requests once."
)
@click.option(
    "--retry-failed/--no-retry-failed",
    default=True,
    show_default=True,
    help="On a re-run, send rows that failed before again.",
)
@click.option("--restart", is_flag=True, help="Discard the checkpoint and start over.")
@click.option("--max-failures", help="Failed rows (N or N%) that still exit 0.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar [default: when stderr is a terminal].",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress and no summary.")
@click.option("--summary-json", type=click.Path(dir_okay=False), help="Write the summary as JSON.")
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
        Path(opts["summary_json"]).write_text(summary.to_json() + "\n", encoding="utf-8")
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

    for option, field in _FIELDS.items():
        if given(option) or field not in values:
            values[field] = opts[option]
    if input is not None:
        values["input"] = input
    if "input" not in values:
        raise click.UsageError("INPUT is missing (or give it in a --job file)")
    retry: RetryPolicy = values.get("retry", RetryPolicy())
    if given("max_attempts") or "retry" not in values:
        retry = retry.__class__(**{**_fields(retry), "attempts": opts["max_attempts"]})
    values["retry"] = retry
    if opts["max_failures"] is not None:
        values.pop("max_failures", None)
        values.pop("max_failure_percent", None)
        values.update(parse_max_failures(opts["max_failures"]))
    return JobSpec(**values)


def _fields(policy: RetryPolicy) -> dict[str, Any]:
    return {name: getattr(policy, name) for name in policy.__dataclass_fields__}


def _dry_run(spec: JobSpec) -> None:
    rows, skipped, shown = preview(spec)
    click.echo(
        f"{spec.input}: {rows} rows, {skipped} with an empty prompt (skipped);"
        f" nothing sent. First prompts:"
    )
    for row, text in shown:
        click.echo(f"--- row {row}\n{text}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port (0: any free port).",
)
@click.option(
    "--latency", type=float, default=0.0, show_default=True, help="Seconds before the first chunk."
)
@click.option(
    "--chunk-delay", type=float, default=0.0, show_default=True, help="Seconds between chunks."
)
@click.option(
    "--chunks", type=click.IntRange(1), default=4, show_default=True, help="Chunks per answer."
)
@click.option("--error-rate", type=float, default=0.0, help="Share of HTTP 500s.")
@click.option("--rate-limit-rate", type=float, default=0.0, help="Share of 429s.")
@click.option(
    "--retry-after", type=float, default=1.0, show_default=True, help="Seconds sent in Retry-After."
)
@click.option("--cut-rate", type=float, default=0.0, help="Share of streams cut mid-way.")
@click.option(
    "--garbage-rate", type=float, default=0.0, help="Share of streams with garbage lines."
)
@click.option("--stall-rate", type=float, default=0.0, help="Share of requests that stall.")
@click.option(
    "--stall-seconds", type=float, default=30.0, show_default=True, help="How long a stall lasts."
)
@click.option("--token-max-uses", type=click.IntRange(1), help="A token expires after N uses.")
@click.option("--token-max-age", type=float, help="A token expires after S seconds.")
@click.option("--token-concurrency", type=click.IntRange(1), help="Requests in flight per token.")
@click.option(
    "--max-inflight", type=click.IntRange(1), help="Requests in flight in all (429 above)."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fault draws.")
@click.option("--record-prompts", is_flag=True, help="Count requests per prompt in /stats.")
def emulate(
    host: str,
    port: int,
    latency: float,
    chunk_delay: float,
    chunks: int,
    record_prompts: bool,
    **faults: Any,
) -> None:
    """Serve a local emulator of the AiChatOnline API until stopped (prints its base URL)."""
    try:
        emulator = Emulator(
            host=host,
            port=port,
            latency=latency,
            chunk_delay=chunk_delay,
            chunks=chunks,
            faults=Faults(**faults),
            record_prompts=record_prompts,
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
