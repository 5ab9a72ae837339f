"""JobSpec, RetryPolicy: a job's options as frozen values that check their bounds.

Every option is declared once, as a :class:`JobSpec` field. The command line (an
``aibatch run`` option of the same name), job files (a key of the same name), the
library API (a keyword of the same name) and the request identity derive from the
fields; a field's metadata (:func:`opt`) says whether it changes what is asked.

Precedence when options come from several places: command line > job file (TOML,
read by :func:`load_job`) > environment > default.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError

__all__ = [
    "COMPRESSION_SUFFIXES",
    "ENGINES",
    "INPUT_FORMATS",
    "JSON_MODES",
    "QUOTINGS",
    "REQUEST_OPTIONS",
    "SAMPLING_OPTIONS",
    "JobSpec",
    "RetryPolicy",
    "load_job",
    "opt",
    "parse_max_failures",
]

INPUT_FORMATS = ("csv", "tsv", "jsonl", "parquet")
QUOTINGS = ("csv", "none")  # CSV quoting rules, or none: each line is a row
ENGINES = ("local", "dask")
JSON_MODES = ("schema", "object")  # how OpenAI-compatible servers are asked for JSON
# Input file suffixes that name a compression, and the codec each means.
COMPRESSION_SUFFIXES = {
    ".gz": "gzip",
    ".gzip": "gzip",
    ".zst": "zstd",
    ".zstd": "zstd",
    ".bz2": "bz2",
}


def opt(*, request: bool = False, sampling: bool = False) -> dict[str, bool]:
    """Field metadata saying what a job option does to each request.

    Args:
        request: the option changes what is asked (the prompt, its model, its provider):
            a stored answer given under another value is not this row's answer.
        sampling: the option is sent to the provider with every request (implies
            ``request``).
    """
    return {"request": request or sampling, "sampling": sampling}


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


_NOT_TEXT = "is not valid Unicode text (bytes that are not UTF-8, or a lone surrogate)"


def _is_text(value: str | None) -> bool:
    """Whether ``value`` can be sent as UTF-8 (``None`` too)."""
    try:
        if value is not None:
            value.encode()
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How a failed request is retried (names as in ``stamina``).

    Attributes:
        attempts: tries per row in all, the first included.
        wait_initial: seconds before the first retry.
        wait_max: the longest wait between tries.
        wait_jitter: up to this many random seconds added to each wait.
        wait_exp_base: each wait is this many times the one before.
    """

    attempts: int = 5
    wait_initial: float = 0.5
    wait_max: float = 30.0
    wait_jitter: float = 0.5
    wait_exp_base: float = 2.0

    def __post_init__(self) -> None:
        _check(1 <= self.attempts <= 100, "max attempts must be between 1 and 100")
        _check(self.wait_initial >= 0 and self.wait_jitter >= 0, "waits must be >= 0")
        _check(self.wait_max >= self.wait_initial, "wait_max must be >= wait_initial")
        _check(self.wait_exp_base >= 1, "wait_exp_base must be >= 1")

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based), without jitter."""
        wait = self.wait_initial
        for _ in range(retry - 1):  # grow step by step: a power could overflow
            wait *= self.wait_exp_base
            if wait >= self.wait_max:
                return self.wait_max
        return min(wait, self.wait_max)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """Everything a run needs to know; see ``aibatch run --help`` for each option."""

    input: str
    output: str | None = None
    input_format: str | None = None
    encoding: str = "utf-8"
    delimiter: str | None = None
    quoting: str | None = None
    prompt_column: str = field(default="prompt", metadata=opt(request=True))
    template: str | None = field(default=None, metadata=opt(request=True))
    system: str | None = field(default=None, metadata=opt(request=True))
    messages_column: str | None = field(default=None, metadata=opt(request=True))
    id_column: str | None = field(default=None, metadata=opt(request=True))
    image_columns: tuple[str, ...] | None = field(default=None, metadata=opt(request=True))
    provider: str = field(default="aichatonline", metadata=opt(request=True))
    model: str | None = field(default=None, metadata=opt(request=True))
    base_url: str | None = None
    proxy: str | None = field(default=None, repr=False)
    concurrency: int = 16
    adaptive: bool = False
    rps: float | None = None
    temperature: float | None = field(default=None, metadata=opt(sampling=True))
    top_p: float | None = field(default=None, metadata=opt(sampling=True))
    top_k: int | None = field(default=None, metadata=opt(sampling=True))
    max_tokens: int | None = field(default=None, metadata=opt(sampling=True))
    seed: int | None = field(default=None, metadata=opt(sampling=True))
    stop: tuple[str, ...] | None = field(default=None, metadata=opt(sampling=True))
    schema: str | None = field(default=None, metadata=opt(request=True))
    json_mode: str = field(default="schema", metadata=opt(request=True))
    stream: bool = True
    api_key_env: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float = 120.0
    limit: int | None = None
    emulate: bool = field(default=False, metadata=opt(request=True))
    dedupe: bool = True
    retry_failed: bool = True
    restart: bool = False
    max_failures: int | None = None
    max_failure_percent: float | None = None
    max_cost: float | None = None
    input_price: float | None = None
    output_price: float | None = None
    expected_output_tokens: int = 256
    batch_rows: int = 10_000
    grace: float = 5.0
    batch_api: bool = False
    batch_size: int | None = None
    no_wait: bool = False
    poll_interval: float = 60.0
    max_wait: float | None = None
    engine: str = "local"
    scheduler: str | None = None
    workers: int | None = None
    partition_rows: int = 100_000
    single_file: bool = False

    def __post_init__(self) -> None:
        _check(bool(self.input), "an input file is needed")
        if self.schema is not None:
            from .schema import canonical_schema  # pyarrow: only for jobs with a schema

            # A path, JSON text, a dict or a Pydantic model class: kept as canonical text.
            object.__setattr__(self, "schema", canonical_schema(self.schema))
        _check(
            self.json_mode in JSON_MODES,
            f"json mode takes {' or '.join(JSON_MODES)}, not {self.json_mode!r}",
        )
        _check(
            self.input_format is None or self.input_format in INPUT_FORMATS,
            f"unknown input format {self.input_format!r}; known: {', '.join(INPUT_FORMATS)}",
        )
        _check(
            self.delimiter is None
            or len(self.delimiter) == 1
            or self.delimiter.lower() in ("\\t", "tab"),
            f"delimiter takes one character (or tab), not {self.delimiter!r}",
        )
        _check(
            self.quoting is None or self.quoting in QUOTINGS,
            f"quoting takes {' or '.join(QUOTINGS)}, not {self.quoting!r}",
        )
        _check(1 <= self.concurrency <= 100_000, "concurrency must be between 1 and 100000")
        _check(self.rps is None or self.rps > 0, "rps must be positive")
        _check(
            self.temperature is None or 0 <= self.temperature <= 2,
            "temperature must be between 0 and 2",
        )
        _check(self.top_p is None or 0 < self.top_p <= 1, "top_p must be in (0, 1]")
        _check(self.top_k is None or self.top_k >= 1, "top_k must be >= 1")
        _check(self.max_tokens is None or self.max_tokens >= 1, "max_tokens must be >= 1")
        _check(
            self.stop is None or (0 < len(self.stop) <= 4 and all(self.stop)),
            "stop takes 1 to 4 non-empty strings",
        )
        for name in ("template", "system", "model"):  # sent as UTF-8: a lone surrogate cannot be
            _check(_is_text(getattr(self, name)), f"{name} {_NOT_TEXT}")
        _check(all(map(_is_text, self.stop or ())), f"stop {_NOT_TEXT}")
        _check(
            self.image_columns is None or (bool(self.image_columns) and all(self.image_columns)),
            "image_columns takes one or more column names",
        )
        _check(
            self.api_key_env is None or bool(self.api_key_env.strip()),
            "api_key_env names an environment variable",
        )
        _check(self.timeout > 0, "timeout must be positive")
        _check(
            self.limit is None or self.limit >= 1,
            "limit must be >= 1 (to check the input and send nothing, use a dry run)",
        )
        _check(self.max_failures is None or self.max_failures >= 0, "max failures must be >= 0")
        _check(
            self.max_failure_percent is None or 0 <= self.max_failure_percent <= 100,
            "max failures in percent must be between 0 and 100",
        )
        for name in ("max_cost", "input_price", "output_price"):
            value = getattr(self, name)
            _check(value is None or value >= 0, f"{name} must be >= 0 (USD)")
        _check(self.expected_output_tokens >= 1, "expected_output_tokens must be >= 1")
        _check(1 <= self.batch_rows <= 1_000_000, "batch_rows must be between 1 and 1000000")
        _check(self.grace >= 0, "grace must be >= 0")
        _check(self.batch_size is None or self.batch_size >= 1, "batch_size must be >= 1")
        _check(self.poll_interval > 0, "poll_interval must be positive")
        _check(self.max_wait is None or self.max_wait >= 0, "max_wait must be >= 0")
        _check(
            self.batch_api
            or (self.batch_size is None and not self.no_wait and self.max_wait is None),
            "--batch-size, --no-wait and --max-wait go with --batch-api",
        )
        _check(
            not (self.batch_api and self.engine == "dask"),
            "--batch-api runs on one machine (the provider is the distributed engine"
            " here): use it without --engine dask",
        )
        _check(self.engine in ENGINES, f"engine must be one of {', '.join(ENGINES)}")
        _check(self.workers is None or self.workers >= 1, "workers must be >= 1")
        _check(self.partition_rows >= 1, "partition_rows must be >= 1")
        _check(
            self.engine == "dask"
            or (self.scheduler is None and self.workers is None and not self.single_file),
            "--scheduler, --workers and --single-file go with --engine dask",
        )
        _check(
            self.scheduler is None or self.workers is None,
            "use --scheduler (an existing cluster) or --workers (a local one), not both",
        )
        _check(
            self.template is None or self.messages_column is None,
            "use --template or --messages-column, not both",
        )

    def request_options(self) -> dict[str, Any]:
        """The options that change what is asked (:data:`REQUEST_OPTIONS`), by name."""
        return {name: getattr(self, name) for name in REQUEST_OPTIONS}

    def sampling(self) -> tuple[tuple[str, object], ...]:
        """The sampling options set, as sorted pairs: part of every request's identity."""
        return tuple(
            (name, getattr(self, name))
            for name in SAMPLING_OPTIONS
            if getattr(self, name) is not None
        )

    def replace(self, **changes: Any) -> JobSpec:
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)

    def output_path(self) -> Path:
        """Where the output goes: ``--output``, or beside the input.

        With the Dask engine the default is a dataset folder, ``INPUT_STEM.responses``.
        """
        if self.output:
            return Path(self.output)
        if self.input == "-":
            return Path("stdin.responses.parquet")
        source = Path(self.input.rstrip("/*"))
        if source.suffix.lower() in COMPRESSION_SUFFIXES:
            source = source.with_suffix("")  # prompts.csv.gz -> prompts.responses.parquet
        folder = self.engine == "dask" and not self.single_file
        return source.with_name(f"{source.stem}.responses" + ("" if folder else ".parquet"))

    def public_options(self) -> dict[str, Any]:
        """The options worth recording in output metadata: no proxy credentials."""
        data = dataclasses.asdict(self)
        data["proxy"] = "set" if self.proxy else None
        return data

    def tolerates(self, failed: int, rows: int) -> bool:
        """Whether ``failed`` error rows out of ``rows`` are within ``--max-failures``."""
        if failed == 0:
            return True
        if self.max_failures is not None and failed <= self.max_failures:
            return True
        return (
            self.max_failure_percent is not None
            and rows > 0
            and failed * 100.0 / rows <= self.max_failure_percent
        )


def _marked(key: str) -> tuple[str, ...]:
    return tuple(sorted(f.name for f in dataclasses.fields(JobSpec) if f.metadata.get(key)))


# Sorted: the sampling pairs are part of every request's hash in the checkpoint.
SAMPLING_OPTIONS = _marked("sampling")
REQUEST_OPTIONS = _marked("request")


def parse_max_failures(value: str) -> dict[str, Any]:
    """Read ``--max-failures``: ``"N"`` rows or ``"N%"`` of the rows."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(%?)\s*", value)
    if not match:
        raise UsageError(f"--max-failures takes N or N%, not {value!r}")
    number, percent = match.groups()
    if percent:
        return {"max_failure_percent": float(number)}
    if "." in number:
        raise UsageError(f"--max-failures takes a whole number of rows, not {value!r}")
    return {"max_failures": int(number)}


_PATH_KEYS = ("input", "output")
_RETRY_KEYS = {f.name for f in dataclasses.fields(RetryPolicy)}
_JOB_KEYS = {f.name for f in dataclasses.fields(JobSpec)} - {"retry"}


def _members(hint: Any) -> list[Any]:
    """The types a field takes: the members of a union, less ``None``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [t for t in typing.get_args(hint) if t is not type(None)]
    return [hint]


def _accepts(hint: Any, value: object) -> bool:
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return isinstance(value, (list, tuple)) and all(_accepts(item, v) for v in value)
    if hint in (int, float) and isinstance(value, bool):
        return False  # TOML's true is not the number 1
    if hint is float:
        return isinstance(value, (int, float))
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is tuple:
        return f"list of {_type_name(typing.get_args(hint)[0])}s"
    names = {bool: "boolean", int: "whole number", float: "number", str: "string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _check_types(path: Path, cls: type, values: dict[str, Any], prefix: str) -> None:
    """Refuse a job-file value whose type the field does not take, naming the key.

    A TOML array for a tuple field (``stop = ["###"]``) becomes a tuple.
    """
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        kinds = _members(hints[key])
        if not any(_accepts(kind, value) for kind in kinds):
            names = " or ".join(_type_name(kind) for kind in kinds)
            raise UsageError(f"job file {path}: {prefix}{key} must be a {names}, not {value!r}")
        if isinstance(value, list):
            values[key] = tuple(value)


def load_job(path: str | Path) -> dict[str, Any]:
    """Read a TOML job file into JobSpec keyword arguments.

    Relative ``input`` and ``output`` paths are taken relative to the job file, so a
    cron entry works from any directory. Retry settings go in a ``[retry]`` table.

    Raises:
        UsageError: unreadable file, bad TOML, or an unknown key (named).
    """
    import tomllib  # only a job file needs it: not `aibatch --help`, nor a run without one

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read job file {path}: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"job file {path} is not valid TOML: {exc}") from exc
    retry = data.pop("retry", {})
    if "max_failures" in data and isinstance(data["max_failures"], str):
        data.update(parse_max_failures(data.pop("max_failures")))
    unknown = sorted(set(data) - _JOB_KEYS)
    if not isinstance(retry, dict):
        unknown.append("retry (must be a table)")
    else:
        unknown += [f"retry.{key}" for key in sorted(set(retry) - _RETRY_KEYS)]
    if unknown:
        raise UsageError(f"job file {path}: unknown key(s): {', '.join(unknown)}")
    schema = data.pop("schema", None)
    _check_types(path, JobSpec, data, "")
    if isinstance(schema, str) and not schema.lstrip().startswith("{"):
        schema = str(path.parent / schema) if not Path(schema).is_absolute() else schema
    if schema is not None:
        from .schema import canonical_schema

        data["schema"] = canonical_schema(schema)
    _check_types(path, RetryPolicy, retry, "retry.")
    for key in _PATH_KEYS:
        value = data.get(key)
        if isinstance(value, str) and value != "-" and not Path(value).is_absolute():
            data[key] = str(path.parent / value)
    if retry:
        data["retry"] = RetryPolicy(**retry)
    return data
