"""The command line: options -> JobSpec -> one library call -> console.

Exit codes (here and nowhere else; ``aibatch run --help`` ends with them)::

      0  every row ok or skipped, or the failures within --max-failures
      1  some rows failed; the output is still complete, with their errors
      2  could not run: bad option or input, output, checkpoint, API key
      3  budget (--max-cost) reached: the rows done are written, the rest 'unsent'
     70  internal error (a bug): one line, and the traceback saved in a file
     75  batches submitted, not finished (--batch-api): run again later
    130  interrupted: run the same command again to resume

Nothing is sent when a bad option or input stops a job (exit 2).

An option of ``run`` named after a :class:`JobSpec` field sets that field; its default
is the field's. Start-up imports neither pandas, pyarrow nor aiohttp: the commands
import the runner when they run, so ``aibatch --help`` answers at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click
from click.core import ParameterSource

from ._version import __version__
from .console import ProgressReporter, crash_report, dry_run_text, provider_text, summary_text
from .errors import AibatchError
from .files import write_file
from .jobs.spec import (
    ENGINES,
    INPUT_FORMATS,
    JSON_MODES,
    QUOTINGS,
    JobSpec,
    RetryPolicy,
    load_job,
    parse_max_failures,
)
from .providers.faults import PROTOCOLS, Faults

EXIT_OK, EXIT_FAILED_ROWS, EXIT_USAGE, EXIT_SOFTWARE, EXIT_INTERRUPTED = 0, 1, 2, 70, 130
EXIT_BUDGET = 3
EXIT_PENDING = 75  # EX_TEMPFAIL
EXIT_CODES = (
    (EXIT_OK, "every row ok or skipped, or the failures within --max-failures"),
    (EXIT_FAILED_ROWS, "some rows failed; the output is still complete, with their errors"),
    (EXIT_USAGE, "could not run: bad option or input, output, checkpoint, API key"),
    (EXIT_BUDGET, "budget (--max-cost) reached: the rows done are written, the rest 'unsent'"),
    (EXIT_SOFTWARE, "internal error (a bug): one line, and the traceback saved in a file"),
    (EXIT_PENDING, "batches submitted, not finished (--batch-api): run again later"),
    (EXIT_INTERRUPTED, "interrupted: run the same command again to resume"),
)
AUTO_CEILING = 512  # -c auto: adapt up to this many requests in flight
_VERBOSE = "aibatch.verbose"  # the -v count so far, in the shared ctx.meta
_FIELDS = {f.name: f for f in dataclasses.fields(JobSpec)}
_EPILOG = "\b\nExit codes:\n" + "\n".join(f"{code:>5}  {text}" for code, text in EXIT_CODES)


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"aibatch: error: {message}", err=True)
    sys.exit(code)


class _Main(click.Group):
    """The group: an error aibatch raises on purpose exits 2, anything else is a bug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit):
            raise
        except AibatchError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("interrupted; run the same command again to resume", EXIT_INTERRUPTED)
        except Exception as exc:  # a bug: say so in one line, keep the traceback
            click.echo(crash_report(exc, verbose=ctx.meta.get(_VERBOSE, 0)), err=True)
            sys.exit(EXIT_SOFTWARE)


def _verbosity(ctx: click.Context, _: click.Parameter, count: int) -> None:
    """Add this ``-v`` count (before or after the command) and set the log level."""
    verbose = ctx.meta[_VERBOSE] = ctx.meta.get(_VERBOSE, 0) + count
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)
    logging.getLogger("distributed").setLevel(level)  # Dask logs at INFO on its own


_verbose_option = click.option(
    "-v", "--verbose", count=True, expose_value=False, callback=_verbosity,
    help="More log output (-vv: debug, and a crash's traceback).",
)  # fmt: skip


def _options(*decorators: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda function: functools.reduce(lambda f, d: d(f), reversed(decorators), function)


def _job(*decls: str, **attrs: Any) -> Callable[[Any], Any]:
    """A ``run`` option setting the JobSpec field of its name, with the field's default."""
    name = next(
        (d for d in decls if d.isidentifier()),  # a field named apart from its option
        max(decls, key=len).split("/")[0].lstrip("-").replace("-", "_"),
    )
    default = _FIELDS[name].default
    if default not in (None, False):
        attrs.setdefault("default", default)
        attrs.setdefault("show_default", True)
    return click.option(*decls, **attrs)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="aibatch")
@_verbose_option
def main() -> None:
    """Run a file of prompts through a chat provider; get every answer back in Parquet."""


def _limit(_: click.Context, __: click.Parameter, value: int | None) -> int | None:
    if value is not None and value < 1:
        raise click.BadParameter(
            f"{value} is below 1 (0 rows would rewrite the output with none); to check the"
            " input and send nothing, use --dry-run"
        )
    return value


_POSITIVE = click.FloatRange(min=0, min_open=True)

_run_options = _options(
    click.argument("input", required=False),
    _job("-o", "--output", help="Parquet output [default: INPUT_STEM.responses.parquet]."),
    _job("--input-format", type=click.Choice(INPUT_FORMATS), help="Override the suffix."),
    _job("--encoding", help="Encoding of text input."),
    _job("--delimiter", help="CSV/TSV field separator: a character or tab."),
    _job("--quoting", type=click.Choice(QUOTINGS),
         help="csv: quotes may hold separators and line breaks; none: a line is a row"
              " [default: csv for .csv, none for .tsv]."),
    _job("--prompt-column", help="Column holding the prompt."),
    _job("--template", help='Build the prompt from columns: "Summarise: {text}".'),
    _job("--system", help="System message sent before every prompt."),
    _job("--messages-column", help="Column with a JSON list of {role, content}."),
    _job("--id-column", help="Unique row id column [default: the row number]."),
    _job("--image-column", "image_columns", multiple=True, metavar="COL",
         help="Column of images sent with the prompt: a path, an http(s) or data: URL, or"
              " bytes (repeatable)."),
    _job("--provider", help="Provider name; `aibatch providers` lists them."),
    _job("--model", help="Model name [default: the provider's]."),
    _job("--base-url", help="Provider API base URL."),
    _job("--proxy", help="Proxy URL for every request."),
    _job("--api-key-env",
         help="Variable holding the API key [default: the provider's, e.g. OPENAI_API_KEY"
              " or ANTHROPIC_API_KEY]."),
    _job("-c", "--concurrency", type=str,
         help="Requests in flight at once, or auto (adapt to overload: 429, 503, 529)."),
    _job("--adaptive", is_flag=True,
         help="Adapt to overload (429, 503, 529), with -c as the ceiling."),
    _job("--rps", type=_POSITIVE, help="Request starts per second."),
    _job("--temperature", type=click.FloatRange(0, 2), help="Sampling temperature."),
    _job("--top-p", type=click.FloatRange(0, 1, min_open=True), help="Nucleus sampling."),
    _job("--top-k", type=click.IntRange(1), help="Sample from the K likeliest tokens."),
    _job("--max-tokens", type=click.IntRange(1), help="Longest answer, in tokens."),
    _job("--seed", type=int, help="Sampling seed."),
    _job("--stop", multiple=True, help="Stop sequence (repeatable, up to 4)."),
    _job("--schema", metavar="FILE",
         help="JSON Schema of the answer: typed columns, one per property; answers that"
              " do not validate are retried."),
    _job("--json-mode", type=click.Choice(JSON_MODES),
         help="OpenAI-compatible: ask for the schema, or any JSON object (servers"
              " without schema support)."),
    _job("--stream/--no-stream", help="Stream answers (--no-stream: one JSON answer)."),
    click.option("--max-attempts", type=click.IntRange(1, 100), default=RetryPolicy().attempts,
                 show_default=True, help="Tries per row, the first included."),
    _job("--timeout", type=_POSITIVE, help="Seconds one attempt may take."),
    _job("--limit", type=int, callback=_limit, help="Only the first N rows (N >= 1)."),
    _job("--emulate", is_flag=True, help="Answer from a built-in local emulator."),
    _job("--engine", type=click.Choice(ENGINES), help="Run here, or on a Dask cluster."),
    _job("--scheduler", help="Dask scheduler address (--engine dask)."),
    _job("--workers", type=click.IntRange(1), help="Local Dask worker processes."),
    _job("--partition-rows", type=click.IntRange(1), help="Dask: rows per partition."),
    _job("--single-file", is_flag=True, help="Dask: one Parquet file, not a folder."),
    _job("--batch-api", is_flag=True,
         help="Send through the provider's Batch API (openai, anthropic): half the price,"
              " answers within 24 h."),
    _job("--batch-size", type=click.IntRange(1),
         help="Rows per batch [default: the service's limit]."),
    _job("--no-wait", is_flag=True,
         help="Batch API: submit (or collect), then exit 75 at once if not finished."),
    _job("--poll-interval", type=_POSITIVE,
         help="Batch API: the longest wait between polls, in seconds."),
    _job("--max-wait", type=click.FloatRange(min=0),
         help="Batch API: stop waiting after S seconds (exit 75; the batches go on)."),
    click.option("--job", "job_file", type=click.Path(dir_okay=False),
                 help="TOML job file; command-line options override it."),
    click.option("--dry-run", is_flag=True, help="Check the input, show prompts, send nothing."),
    _job("--dedupe/--no-dedupe", help="Send identical requests once."),
    _job("--retry-failed/--no-retry-failed",
         help="On a re-run, send rows that failed before again."),
    _job("--restart", is_flag=True, help="Discard the checkpoint and start over."),
    click.option("--max-failures", help="Failed rows (N or N%) that still exit 0."),
    _job("--max-cost", type=click.FloatRange(min=0),
         help="Budget in USD: start no request that could pass it (exit 3)."),
    _job("--input-price", type=click.FloatRange(min=0),
         help="USD per million input tokens [default: the price table's]."),
    _job("--output-price", type=click.FloatRange(min=0),
         help="USD per million output tokens [default: the price table's]."),
    _job("--expected-output-tokens", type=click.IntRange(1),
         help="Answer tokens a dry run assumes without --max-tokens."),
    click.option("--progress/--no-progress", default=None,
                 help="Show progress (default): a bar on a terminal, else a line every"
                      " 5 s; --progress forces the bar, --no-progress shows none."),
    click.option("-q", "--quiet", is_flag=True, help="No progress and no summary."),
    _verbose_option,
    click.option("--summary-json", type=click.Path(dir_okay=False), help="Write the summary."),
)  # fmt: skip


@main.command(epilog=_EPILOG)
@_run_options
@click.pass_context
def run(ctx: click.Context, /, **opts: Any) -> None:
    """Send every row of INPUT and write one output row per input row.

    INPUT is a .csv, .tsv, .jsonl/.ndjson or .parquet file, or - for CSV on stdin.
    Re-running the same command resumes: finished rows are kept in a checkpoint beside
    the output and are not sent again.
    """
    with _collector_paused():
        from .runner.job import preview  # pyarrow and aiohttp: only when running
        from .runner.launch import run_job

    spec = job_spec(ctx)
    if opts["dry_run"]:
        found = preview(spec)
        click.echo(dry_run_text(spec.input, found))
        _write_summary(opts["summary_json"], json.dumps(found.to_dict(), indent=2))
        return
    show = not opts["quiet"] and opts["progress"] is not False
    reporter = ProgressReporter(bar=opts["progress"]) if show else None

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        click.echo(f"\naibatch: {name}: finishing requests in flight (again to stop now)", err=True)

    try:
        summary = run_job(spec, on_progress=reporter, on_signal=on_signal)
    finally:
        if reporter is not None:
            reporter.close()
    _write_summary(opts["summary_json"], summary.to_json())
    if not opts["quiet"]:
        click.echo(summary_text(summary), err=True)
    if summary.interrupted:
        sys.exit(EXIT_INTERRUPTED)
    if summary.batch_pending:
        sys.exit(EXIT_PENDING)
    if summary.budget_reached:
        sys.exit(EXIT_BUDGET)
    if not spec.tolerates(summary.error, summary.rows):
        sys.exit(EXIT_FAILED_ROWS)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Import the runner with the garbage collector paused, then freeze what it made.

    Importing pyarrow, numpy and aiohttp creates some 80,000 tracked objects, none of
    them garbage, and the collector walked them all again and again while they loaded
    (about 0.05 s of a one-prompt run's 0.35 s). Frozen, they stay out of the run's
    collections too.
    """
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def _write_summary(path: str | None, text: str) -> None:
    if path:
        try:
            write_file(Path(path), (text + "\n").encode())
        except OSError as exc:
            _fail(f"cannot write --summary-json {path}: {exc.strerror or exc}")


def job_spec(ctx: click.Context) -> JobSpec:
    """The job that ``run``'s parsed options (``ctx``) describe.

    The job file's values, overridden by each option given on the command line; an
    option given nowhere keeps the JobSpec default.
    """
    opts = ctx.params
    values: dict[str, Any] = load_job(opts["job_file"]) if opts["job_file"] else {}

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)

    for name in (param.name for param in ctx.command.params):
        if name in _FIELDS and name not in ("input", "concurrency") and given(name):
            values[name] = opts[name]
    if given("concurrency"):
        values.update(_concurrency(opts["concurrency"]))
    if opts["input"] is not None:
        values["input"] = opts["input"]
    if "input" not in values:
        raise click.UsageError("INPUT is missing (or give it in a --job file)")
    if given("max_attempts"):
        retry = values.get("retry", RetryPolicy())
        values["retry"] = dataclasses.replace(retry, attempts=opts["max_attempts"])
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


@main.command()
def providers() -> None:
    """List the installed providers, their models and options."""
    from .providers import get_provider, provider_names

    for name in provider_names():
        try:
            click.echo(provider_text(name, get_provider(name)))
        except AibatchError as exc:
            click.echo(f"{name}: {exc}")


_fault_options = _options(*(
    click.option(
        "--" + field.name.replace("_", "-"),
        type=int if "int" in str(field.type) else float,
        default=field.default,
        show_default=field.default is not None,
        help=field.metadata["help"],
    )
    for field in dataclasses.fields(Faults)
))  # fmt: skip


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Port [default: any].")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="aichatonline",
              show_default=True, help="Wire protocol to serve.")  # fmt: skip
@click.option("--api-key-env", help="Require the key in this variable (openai, anthropic).")
@click.option("--latency", type=float, default=0.0, help="Seconds before the first chunk.")
@click.option("--chunk-delay", type=float, default=0.0, help="Seconds between chunks.")
@click.option("--chunks", type=click.IntRange(1), default=4, show_default=True,
              help="Chunks per answer.")  # fmt: skip
@click.option("--record-prompts", is_flag=True, help="Count requests per prompt in /stats.")
@click.option("--batch-delay", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Seconds before a batch ends.")  # fmt: skip
@_fault_options
@_verbose_option
def emulate(api_key_env: str | None, **options: Any) -> None:
    """Serve a local emulator of the provider API until stopped (prints its base URL)."""
    import anyio

    from .providers.emulator import Emulator

    api_key = os.environ.get(api_key_env) if api_key_env else None
    if api_key_env and not api_key:
        _fail(f"the environment variable {api_key_env} (--api-key-env) is not set")
    faults = {field.name: options.pop(field.name) for field in dataclasses.fields(Faults)}
    try:
        emulator = Emulator(**options, faults=Faults(**faults), api_key=api_key)
    except AibatchError as exc:
        _fail(str(exc))

    async def serve() -> None:
        async with emulator as base_url:
            click.echo(base_url)
            sys.stdout.flush()
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    return

    anyio.run(serve, backend="asyncio")


@main.command("batches")
@click.argument("output")
@click.option("--cancel", is_flag=True, help="Cancel the batches that have not ended.")
@click.option("--api-key-env", help="Variable holding the API key [default: the provider's].")
@click.option("--json", "as_json", is_flag=True, help="Print the batches as JSON.")
@_verbose_option
def batches_command(output: str, cancel: bool, api_key_env: str | None, as_json: bool) -> None:
    """List the provider batches of a --batch-api job, with their states and counts.

    OUTPUT is the job's output file. Batches not yet collected are asked about at their
    provider; --cancel cancels those that have not ended: the next run of the job
    collects what they finished and stores the others as failed (BatchCancelled), which
    the run after sends again. Exits 1 if a batch could not be asked about or cancelled.
    """
    import anyio

    from .runner.batch_state import job_batches

    states = anyio.run(
        functools.partial(job_batches, Path(output), cancel=cancel, api_key_env=api_key_env)
    )
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(s) for s in states], indent=2))
        sys.exit(EXIT_FAILED_ROWS if any(s.note for s in states) else EXIT_OK)
    click.echo(f"{'chunk':>6}  {'rows':>7}  {'state':<10}  {'status':<12}  {'done':>7}  "
               f"{'failed':>6}  batch")  # fmt: skip
    for s in states:
        note = f"  ({s.note})" if s.note else ""
        click.echo(
            f"{s.chunk:>6}  {s.rows:>7}  {s.state:<10}  {s.status or '-':<12}  {s.finished:>7}"
            f"  {s.failed:>6}  {s.batch_id or '-'}{note}"
        )
    if any(s.note for s in states):
        sys.exit(EXIT_FAILED_ROWS)


_failed_rows = functools.partial(
    click.option, "--failed-rows", type=click.IntRange(0), show_default=True,
    help="How many of the first failed rows to show.",
)  # fmt: skip


@main.command("inspect")
@click.argument("output")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@_failed_rows(default=10)
def inspect_command(output: str, as_json: bool, failed_rows: int) -> None:
    """Print what an output says: its job, counts, errors, latency.

    Also attempts, tokens, cost and the first failed rows. OUTPUT is an output file,
    or a Dask output folder of part-*.parquet files; it is read in batches, so a file
    of millions of rows takes little memory.
    """
    from .report.inspect import inspect_output
    from .report.text import inspection_text

    inspection = inspect_output(output, failed_rows=failed_rows)
    click.echo(inspection.to_json() if as_json else inspection_text(inspection))


@main.command("report")
@click.argument("output")
@click.option("-o", "--report", "page", help="HTML file [default: OUTPUT_STEM.report.html].")
@_failed_rows(default=100)
def report_command(output: str, page: str | None, failed_rows: int) -> None:
    """Write a self-contained HTML report of an output, with charts.

    The page loads nothing from the network. Its charts need the report extra:
    pip install 'aibatch[report]'.
    """
    from .report.html import write_report

    where = Path(output.rstrip("/\\") or output)
    target = Path(page) if page else where.with_name(f"{where.stem}.report.html")
    inspection = write_report(output, target, failed_rows=failed_rows)
    counts = ", ".join(f"{n} {name}" for name, n in inspection.counts.items())
    click.echo(f"{target}: {inspection.rows} rows: {counts}")
