"""JobSpec and RetryPolicy bounds, failure tolerance, and TOML job files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from aibatch.errors import UsageError
from aibatch.jobs.spec import (
    REQUEST_OPTIONS,
    SAMPLING_OPTIONS,
    JobSpec,
    RetryPolicy,
    load_job,
    parse_max_failures,
)

SAMPLE_JOB = Path(__file__).resolve().parents[2] / "sample_data" / "job.toml"


def job_file(tmp_path: Path, text: str, name: str = "job.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# JobSpec bounds


def test_a_spec_needs_only_an_input():
    spec = JobSpec(input="in.csv")

    assert spec.prompt_column == "prompt"
    assert spec.retry == RetryPolicy()


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"input": ""}, "input file"),
        ({"input_format": "xlsx"}, "unknown input format 'xlsx'"),
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": 100_001}, "concurrency"),
        ({"rps": 0}, "rps"),
        ({"rps": -1.0}, "rps"),
        ({"timeout": 0}, "timeout"),
        ({"limit": -1}, "limit"),
        ({"limit": 0}, "use a dry run"),
        ({"max_failures": -1}, "max failures"),
        ({"max_failure_percent": -0.1}, "percent"),
        ({"max_failure_percent": 100.1}, "percent"),
        ({"batch_rows": 0}, "batch_rows"),
        ({"batch_rows": 1_000_001}, "batch_rows"),
        ({"grace": -1}, "grace"),
        ({"template": "{a}", "messages_column": "chat"}, "not both"),
    ],
)
def test_a_spec_out_of_bounds_is_a_usage_error_saying_which(options, complaint):
    with pytest.raises(UsageError, match=complaint):
        JobSpec(**{"input": "in.csv", **options})


@pytest.mark.parametrize(
    "options",
    [
        {"concurrency": 1},
        {"concurrency": 100_000},
        {"batch_rows": 1},
        {"batch_rows": 1_000_000},
        {"limit": 1},
        {"max_failures": 0},
        {"max_failure_percent": 0},
        {"max_failure_percent": 100},
        {"grace": 0},
        {"rps": 0.01},
        {"input_format": "parquet"},
    ],
)
def test_a_spec_at_its_bounds_is_accepted(options):
    JobSpec(input="in.csv", **options)


def test_a_spec_is_frozen():
    spec = JobSpec(input="in.csv")

    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.concurrency = 2  # type: ignore[misc]


def test_replace_checks_the_new_values():
    spec = JobSpec(input="in.csv")

    assert spec.replace(concurrency=4).concurrency == 4
    with pytest.raises(UsageError, match="concurrency"):
        spec.replace(concurrency=0)


# output_path


def test_output_path_is_the_output_option_when_given():
    assert JobSpec(input="data/in.csv", output="out/x.parquet").output_path() == Path(
        "out/x.parquet"
    )


@pytest.mark.parametrize("name", ["prompts.csv.gz", "prompts.csv.zst", "prompts.csv.BZ2"])
def test_the_default_output_of_a_compressed_input_drops_the_compression_suffix(name):
    assert JobSpec(input=f"data/{name}").output_path() == Path("data/prompts.responses.parquet")


def test_output_path_defaults_to_a_file_beside_the_input():
    assert JobSpec(input="data/prompts.csv").output_path() == Path("data/prompts.responses.parquet")


def test_output_path_of_a_file_without_extension_adds_the_suffix():
    assert JobSpec(input="data/prompts").output_path() == Path("data/prompts.responses.parquet")


def test_output_path_for_standard_input_is_in_the_current_folder():
    assert JobSpec(input="-").output_path() == Path("stdin.responses.parquet")


# tolerates


@pytest.mark.parametrize(
    ("limits", "failed", "rows", "tolerated"),
    [
        ({}, 0, 100, True),
        ({}, 1, 100, False),
        ({"max_failures": 2}, 2, 100, True),
        ({"max_failures": 2}, 3, 100, False),
        ({"max_failures": 0}, 1, 100, False),
        ({"max_failure_percent": 10}, 10, 100, True),
        ({"max_failure_percent": 10}, 11, 100, False),
        ({"max_failure_percent": 2.5}, 1, 40, True),
        ({"max_failure_percent": 2.5}, 2, 40, False),
        ({"max_failure_percent": 50}, 1, 0, False),
        ({"max_failure_percent": 100}, 7, 7, True),
        ({"max_failures": 1, "max_failure_percent": 50}, 2, 4, True),
        ({"max_failures": 1, "max_failure_percent": 10}, 2, 4, False),
    ],
)
def test_tolerates_counts_failures_against_max_failures(limits, failed, rows, tolerated):
    assert JobSpec(input="in.csv", **limits).tolerates(failed, rows) is tolerated


# parse_max_failures


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("0", {"max_failures": 0}),
        ("12", {"max_failures": 12}),
        (" 3 ", {"max_failures": 3}),
        ("5%", {"max_failure_percent": 5.0}),
        ("2.5 %", {"max_failure_percent": 2.5}),
        ("100%", {"max_failure_percent": 100.0}),
    ],
)
def test_parse_max_failures_reads_rows_or_percent(text, parsed):
    assert parse_max_failures(text) == parsed


@pytest.mark.parametrize("text", ["", "abc", "-1", "5%%", "%5", "1e3", "2.5"])
def test_parse_max_failures_rejects_other_text_quoting_it(text):
    with pytest.raises(UsageError, match="--max-failures") as caught:
        parse_max_failures(text)

    assert repr(text) in str(caught.value)


# public_options


def test_public_options_hide_the_proxy_credentials():
    proxy = "http://user:s3cret@proxy.example:8080"
    spec = JobSpec(input="in.csv", proxy=proxy)

    options = spec.public_options()

    assert options["proxy"] == "set"
    assert "s3cret" not in str(options)
    assert "s3cret" not in repr(spec)


def test_public_options_keep_the_other_options_and_the_retry_policy():
    spec = JobSpec(input="in.csv", concurrency=3, retry=RetryPolicy(attempts=2))

    options = spec.public_options()

    assert options["proxy"] is None
    assert options["concurrency"] == 3
    assert options["retry"]["attempts"] == 2


# RetryPolicy


@pytest.mark.parametrize(
    "options",
    [
        {"attempts": 0},
        {"attempts": 101},
        {"wait_initial": -0.1},
        {"wait_jitter": -0.1},
        {"wait_initial": 5, "wait_max": 4},
        {"wait_exp_base": 0.5},
    ],
)
def test_a_retry_policy_out_of_bounds_is_a_usage_error(options):
    with pytest.raises(UsageError):
        RetryPolicy(**options)


def test_backoff_grows_by_the_base_from_the_initial_wait_up_to_the_maximum():
    policy = RetryPolicy(wait_initial=0.5, wait_max=30, wait_exp_base=2)

    assert [policy.backoff(retry) for retry in range(1, 10)] == [
        0.5,
        1,
        2,
        4,
        8,
        16,
        30,
        30,
        30,
    ]


def test_backoff_with_base_one_is_constant():
    policy = RetryPolicy(wait_initial=2, wait_max=10, wait_exp_base=1)

    assert {policy.backoff(retry) for retry in range(1, 20)} == {2}


def test_backoff_is_capped_even_when_the_growth_would_overflow():
    policy = RetryPolicy(attempts=100, wait_initial=0.5, wait_max=30, wait_exp_base=10_000)

    assert policy.backoff(99) == 30


# load_job


def test_a_job_file_gives_spec_options(tmp_path):
    path = job_file(tmp_path, 'input = "in.csv"\nconcurrency = 4\nsystem = "Be brief."\n')

    spec = JobSpec(**load_job(path))

    assert spec.concurrency == 4
    assert spec.system == "Be brief."


def test_relative_paths_in_a_job_file_are_taken_from_the_job_files_folder(tmp_path):
    path = job_file(
        tmp_path, 'input = "data/in.csv"\noutput = "../out/x.parquet"\n', "jobs/job.toml"
    )

    options = load_job(path)

    assert options["input"] == str(tmp_path / "jobs" / "data" / "in.csv")
    assert options["output"] == str(tmp_path / "jobs" / ".." / "out" / "x.parquet")


def test_absolute_paths_and_standard_input_in_a_job_file_are_kept(tmp_path):
    target = tmp_path / "elsewhere" / "out.parquet"
    path = job_file(tmp_path, f'input = "-"\noutput = "{target}"\n', "jobs/job.toml")

    options = load_job(path)

    assert options["input"] == "-"
    assert options["output"] == str(target)


def test_the_retry_table_becomes_a_retry_policy(tmp_path):
    path = job_file(tmp_path, 'input = "in.csv"\n[retry]\nattempts = 3\nwait_max = 4.5\n')

    options = load_job(path)

    assert options["retry"] == RetryPolicy(attempts=3, wait_max=4.5)


def test_an_empty_retry_table_keeps_the_default_policy(tmp_path):
    path = job_file(tmp_path, 'input = "in.csv"\n[retry]\n')

    assert JobSpec(**load_job(path)).retry == RetryPolicy()


def test_a_retry_table_out_of_bounds_is_a_usage_error(tmp_path):
    path = job_file(tmp_path, 'input = "in.csv"\n[retry]\nattempts = 0\n')

    with pytest.raises(UsageError, match="attempts"):
        load_job(path)


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ('"5%"', {"max_failure_percent": 5.0}),
        ('"7"', {"max_failures": 7}),
        ("7", {"max_failures": 7}),
    ],
)
def test_max_failures_in_a_job_file_takes_rows_or_percent(tmp_path, value, parsed):
    path = job_file(tmp_path, f'input = "in.csv"\nmax_failures = {value}\n')

    options = load_job(path)

    assert {k: v for k, v in options.items() if k.startswith("max_failure")} == parsed


def test_unknown_keys_in_a_job_file_are_named_in_the_error(tmp_path):
    path = job_file(tmp_path, 'input = "in.csv"\ncolour = "red"\nsped = 2\n[retry]\ntries = 3\n')

    with pytest.raises(UsageError) as caught:
        load_job(path)

    message = str(caught.value)
    assert str(path) in message
    assert "colour, sped, retry.tries" in message


def test_a_retry_key_that_is_not_a_table_is_an_error(tmp_path):
    path = job_file(tmp_path, 'input = "in.csv"\nretry = 3\n')

    with pytest.raises(UsageError, match="retry \\(must be a table\\)"):
        load_job(path)


def test_a_job_file_that_is_not_toml_is_a_usage_error_naming_it(tmp_path):
    path = job_file(tmp_path, "input = in.csv\n")

    with pytest.raises(UsageError, match="is not valid TOML") as caught:
        load_job(path)

    assert str(path) in str(caught.value)


def test_a_job_file_that_is_not_utf8_is_a_usage_error(tmp_path):
    path = tmp_path / "job.toml"
    path.write_bytes(b'input = "caf\xe9.csv"\n')

    with pytest.raises(UsageError, match="is not valid TOML"):
        load_job(path)


def test_a_missing_job_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="cannot read job file"):
        load_job(tmp_path / "missing.toml")


def test_the_sample_job_file_makes_a_valid_spec():
    spec = JobSpec(**load_job(SAMPLE_JOB))

    assert Path(spec.input) == SAMPLE_JOB.parent / "prompts.csv"
    assert spec.max_failure_percent == 5.0
    assert spec.retry.attempts == 5


@pytest.mark.parametrize(
    "text",
    ['concurrency = "32"\n', '[retry]\nattempts = "3"\n'],
    ids=["concurrency", "retry.attempts"],
)
def test_a_value_of_the_wrong_type_in_a_job_file_is_a_usage_error(tmp_path, text):
    path = job_file(tmp_path, 'input = "in.csv"\n' + text)

    with pytest.raises(UsageError):
        JobSpec(**load_job(path))


@pytest.mark.parametrize(
    ("text", "key", "wanted"),
    [
        ("stop = [1, 2]\n", "stop", "list of strings"),
        ('stop = ["###", 3]\n', "stop", "list of strings"),
        ('stop = "###"\n', "stop", "list of strings"),
        ("concurrency = 2.5\n", "concurrency", "whole number"),
        ("concurrency = true\n", "concurrency", "whole number"),
        ("[retry]\nattempts = [3]\n", "retry.attempts", "whole number"),
    ],
)
def test_a_job_file_value_of_the_wrong_type_is_refused_naming_its_key(tmp_path, text, key, wanted):
    path = job_file(tmp_path, 'input = "in.csv"\n' + text)

    with pytest.raises(UsageError, match=f"{key} must be a {wanted}"):
        load_job(path)


def test_a_list_of_stop_strings_in_a_job_file_becomes_a_tuple(tmp_path):
    path = job_file(tmp_path, 'input = "in.csv"\nstop = ["###", "END"]\n')

    assert JobSpec(**load_job(path)).stop == ("###", "END")


# options declared once


def test_sampling_options_are_the_fields_marked_sampling_in_sorted_order():
    # Sorted: the pairs are hashed into every checkpointed request.
    assert SAMPLING_OPTIONS == ("max_tokens", "seed", "stop", "temperature", "top_k", "top_p")


def test_request_options_name_each_option_that_changes_what_is_asked():
    spec = JobSpec(input="in.csv", system="Be brief.", temperature=0.5, concurrency=3)

    options = spec.request_options()

    assert options["system"] == "Be brief." and options["temperature"] == 0.5
    assert "concurrency" not in options and set(options) == set(REQUEST_OPTIONS)
