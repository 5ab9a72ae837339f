"""Every job option is declared once: the CLI, job files and the request identity follow.

The CLI cases go through click's real parser and the very function ``aibatch run`` uses
to build its JobSpec; the identity cases through the Dask driver's identity string,
which decides whether a finished partition may be reused.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from aibatch.cli import job_spec, main, run
from aibatch.jobs.spec import JobSpec, RetryPolicy
from aibatch.runner.distributed import _request_identity

SCHEMA = '{"type":"object","properties":{"x":{"type":"string"}}}'

# Each `aibatch run` parameter: extra arguments it needs, then itself with a value
# other than its default. A new option must be added here (a test checks).
RUN_ARGS: dict[str, tuple[list[str], list[str]]] = {
    "output": ([], ["-o", "x.parquet"]),
    "input_format": ([], ["--input-format", "jsonl"]),
    "encoding": ([], ["--encoding", "latin-1"]),
    "delimiter": ([], ["--delimiter", ";"]),
    "quoting": ([], ["--quoting", "none"]),
    "prompt_column": ([], ["--prompt-column", "question"]),
    "template": ([], ["--template", "Q: {prompt}"]),
    "system": ([], ["--system", "Be brief."]),
    "messages_column": ([], ["--messages-column", "chat"]),
    "id_column": ([], ["--id-column", "id"]),
    "image_columns": ([], ["--image-column", "pic", "--image-column", "logo"]),
    "provider": ([], ["--provider", "openai"]),
    "model": ([], ["--model", "m-2"]),
    "base_url": ([], ["--base-url", "http://127.0.0.1:9"]),
    "proxy": ([], ["--proxy", "http://127.0.0.1:8"]),
    "api_key_env": ([], ["--api-key-env", "MY_KEY"]),
    "concurrency": ([], ["-c", "3"]),
    "adaptive": ([], ["--adaptive"]),
    "rps": ([], ["--rps", "2.5"]),
    "temperature": ([], ["--temperature", "0.3"]),
    "top_p": ([], ["--top-p", "0.9"]),
    "top_k": ([], ["--top-k", "40"]),
    "max_tokens": ([], ["--max-tokens", "7"]),
    "seed": ([], ["--seed", "11"]),
    "stop": ([], ["--stop", "###", "--stop", "END"]),
    "schema": ([], ["--schema", SCHEMA]),
    "json_mode": ([], ["--json-mode", "object"]),
    "stream": ([], ["--no-stream"]),
    "max_attempts": ([], ["--max-attempts", "2"]),
    "timeout": ([], ["--timeout", "9"]),
    "limit": ([], ["--limit", "4"]),
    "emulate": ([], ["--emulate"]),
    "engine": ([], ["--engine", "dask"]),
    "scheduler": (["--engine", "dask"], ["--scheduler", "tcp://127.0.0.1:8786"]),
    "workers": (["--engine", "dask"], ["--workers", "3"]),
    "partition_rows": ([], ["--partition-rows", "10"]),
    "single_file": (["--engine", "dask"], ["--single-file"]),
    "dedupe": ([], ["--no-dedupe"]),
    "retry_failed": ([], ["--no-retry-failed"]),
    "restart": ([], ["--restart"]),
    "max_failures": ([], ["--max-failures", "5%"]),
    "max_cost": ([], ["--max-cost", "2.5"]),
    "input_price": ([], ["--input-price", "0.15"]),
    "output_price": ([], ["--output-price", "0.6"]),
    "expected_output_tokens": ([], ["--expected-output-tokens", "40"]),
    "batch_api": ([], ["--batch-api"]),
    "batch_size": (["--batch-api"], ["--batch-size", "100"]),
    "no_wait": (["--batch-api"], ["--no-wait"]),
    "poll_interval": ([], ["--poll-interval", "5"]),
    "max_wait": (["--batch-api"], ["--max-wait", "30"]),
}
# Parameters that shape what the command prints or where it reads, not the job.
NOT_JOB_OPTIONS = {"input", "job_file", "dry_run", "progress", "quiet", "verbose", "summary_json"}


def spec_of(args: list[str]) -> JobSpec:
    # The group's context settings, as a real command line gets them: click keeps the
    # help option it first builds for a command, and the README's --help test reads it.
    ctx = run.make_context("run", ["in.csv", *args], **main.context_settings)
    return job_spec(ctx)


def test_every_run_option_is_covered_here():
    names = {param.name for param in run.params}

    assert names - NOT_JOB_OPTIONS == set(RUN_ARGS)


@pytest.mark.parametrize("name", sorted(RUN_ARGS))
def test_every_run_option_given_on_the_command_line_changes_the_job(name: str):
    context, given = RUN_ARGS[name]

    assert spec_of(context + given) != spec_of(context)


def test_an_option_not_given_keeps_the_job_files_value_even_against_its_default(
    tmp_path: Path,
):
    job = tmp_path / "job.toml"
    job.write_text('input = "in.csv"\nstream = false\nencoding = "latin-1"\nconcurrency = 3\n')

    spec = spec_of(["--job", str(job), "--model", "m-2"])

    assert (spec.stream, spec.encoding, spec.concurrency) == (False, "latin-1", 3)


# Each JobSpec field: the options that give it a value other than its default (with
# what that value needs). A new field must be added here (a test checks).
FIELD_VALUES: dict[str, dict[str, Any]] = {
    "output": {"output": "x.parquet"},
    "input_format": {"input_format": "jsonl"},
    "encoding": {"encoding": "latin-1"},
    "delimiter": {"delimiter": ";"},
    "quoting": {"quoting": "none"},
    "prompt_column": {"prompt_column": "question"},
    "template": {"template": "Q: {prompt}"},
    "system": {"system": "Be brief."},
    "messages_column": {"messages_column": "chat"},
    "id_column": {"id_column": "id"},
    "image_columns": {"image_columns": ("pic",)},
    "provider": {"provider": "openai"},
    "model": {"model": "m-2"},
    "base_url": {"base_url": "http://127.0.0.1:9"},
    "proxy": {"proxy": "http://127.0.0.1:8"},
    "concurrency": {"concurrency": 3},
    "adaptive": {"adaptive": True},
    "rps": {"rps": 2.5},
    "temperature": {"temperature": 0.3},
    "top_p": {"top_p": 0.9},
    "top_k": {"top_k": 40},
    "max_tokens": {"max_tokens": 7},
    "seed": {"seed": 11},
    "stop": {"stop": ("###",)},
    "schema": {"schema": SCHEMA},
    "json_mode": {"schema": SCHEMA, "json_mode": "object"},
    "stream": {"stream": False},
    "api_key_env": {"api_key_env": "MY_KEY"},
    "retry": {"retry": RetryPolicy(attempts=2)},
    "timeout": {"timeout": 9.0},
    "limit": {"limit": 4},
    "emulate": {"emulate": True},
    "dedupe": {"dedupe": False},
    "retry_failed": {"retry_failed": False},
    "restart": {"restart": True},
    "max_failures": {"max_failures": 2},
    "max_failure_percent": {"max_failure_percent": 5.0},
    "max_cost": {"max_cost": 2.5},
    "input_price": {"input_price": 0.15},
    "output_price": {"output_price": 0.6},
    "expected_output_tokens": {"expected_output_tokens": 40},
    "batch_rows": {"batch_rows": 10},
    "grace": {"grace": 1.0},
    "engine": {"engine": "dask"},
    "scheduler": {"engine": "dask", "scheduler": "tcp://127.0.0.1:8786"},
    "workers": {"engine": "dask", "workers": 3},
    "partition_rows": {"partition_rows": 10},
    "single_file": {"engine": "dask", "single_file": True},
    "batch_api": {"batch_api": True},
    "batch_size": {"batch_api": True, "batch_size": 100},
    "no_wait": {"batch_api": True, "no_wait": True},
    "poll_interval": {"poll_interval": 5.0},
    "max_wait": {"batch_api": True, "max_wait": 30.0},
}
# What a request is: the prompt (its columns, template, system message), whose answer it
# is (id), who answers (provider, model, the emulator or not) and how they sample.
CHANGES_A_REQUEST = {
    "prompt_column", "template", "system", "messages_column", "id_column", "provider",
    "model", "emulate", "temperature", "top_p", "top_k", "max_tokens", "seed", "stop",
    "schema", "json_mode", "image_columns",
}  # fmt: skip


def test_every_job_field_is_covered_here():
    assert {f.name for f in dataclasses.fields(JobSpec)} - {"input"} == set(FIELD_VALUES)


@pytest.mark.parametrize("name", sorted(FIELD_VALUES))
def test_an_option_changes_the_request_identity_exactly_when_it_changes_what_is_asked(
    name: str,
):
    values = FIELD_VALUES[name]
    before = JobSpec(input="in.csv", **{k: v for k, v in values.items() if k != name})
    after = JobSpec(input="in.csv", **values)

    changed = _request_identity(after) != _request_identity(before)

    assert changed is (name in CHANGES_A_REQUEST)
