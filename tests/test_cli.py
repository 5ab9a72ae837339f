"""The CLI end to end, in-process, against a real emulator on loopback."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import subprocess
import sys
from pathlib import Path

import click
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from aibatch.cli import main
from aibatch.io.output import read_metadata
from aibatch.providers.emulator import Emulator, Faults, answer_for
from tests.conftest import emulator_in_thread

ROOT = Path(__file__).resolve().parent.parent


def invoke(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def prompts_csv(tmp_path: Path, n: int, name: str = "in.csv") -> Path:
    return write_csv(
        tmp_path / name, [{"id": f"r{i}", "prompt": f"Question number {i}?"} for i in range(n)]
    )


def chat_requests(emu: Emulator) -> int:
    return emu.stats.chat_requests


def test_answers_match_their_prompts_at_concurrency_64(tmp_path: Path, live_emulator: Emulator):
    source = prompts_csv(tmp_path, 300)
    result = invoke("run", source, "-c", 64, "--base-url", live_emulator.base_url)
    assert result.exit_code == 0, result.stderr
    table = pq.read_table(tmp_path / "in.responses.parquet")
    assert table.num_rows == 300
    for row in table.to_pylist():
        assert row["response"] == answer_for(row["prompt"])
        assert row["sent_prompt"] == row["prompt"] and row["status"] == "ok"
        assert row["model"] == "gpt-4o-mini" and row["provider"] == "aichatonline"
    assert live_emulator.stats.token_requests == 1
    assert "300 rows: 300 ok" in result.stderr


def test_output_schema_has_proper_arrow_types(tmp_path: Path, live_emulator: Emulator):
    invoke("run", prompts_csv(tmp_path, 3), "--base-url", live_emulator.base_url, "-q")
    schema = pq.read_schema(tmp_path / "in.responses.parquet")
    assert schema.names == [
        "id",
        "prompt",
        "row",
        "sent_prompt",
        "response",
        "status",
        "error_type",
        "error",
        "http_status",
        "attempts",
        "latency_ms",
        "ttfb_ms",
        "started_at",
        "finished_at",
        "prompt_tokens",
        "completion_tokens",
        "finish_reason",
        "cost_usd",
        "model",
        "provider",
    ]
    assert schema.field("row").type == pa.int64()
    assert schema.field("http_status").type == pa.int32()
    assert schema.field("started_at").type == pa.timestamp("us", tz="UTC")
    meta = read_metadata(tmp_path / "in.responses.parquet")
    assert meta["counts"]["ok"] == 3 and meta["version"]
    assert meta["options"]["concurrency"] == 16


def test_injected_faults_still_end_every_row_ok_with_few_token_requests(tmp_path: Path):
    faults = Faults(
        error_rate=0.1,
        rate_limit_rate=0.1,
        retry_after=0.01,
        cut_rate=0.1,
        garbage_rate=0.1,
        token_max_uses=40,
        seed=7,
    )
    with emulator_in_thread(faults=faults) as emu:
        result = invoke(
            "run",
            prompts_csv(tmp_path, 200),
            "-c",
            32,
            "--base-url",
            emu.base_url,
            "--max-attempts",
            10,
            "-q",
        )
        token_requests = emu.stats.token_requests
        outcomes = dict(emu.stats.outcomes)
    assert result.exit_code == 0, result.stderr
    table = pq.read_table(tmp_path / "in.responses.parquet").to_pylist()
    assert [r["status"] for r in table] == ["ok"] * 200
    assert all(r["response"] == answer_for(r["prompt"]) for r in table)
    assert outcomes["server_error"] and outcomes["rate_limited"] and outcomes["cut"]
    assert outcomes["unauthorized"] >= 4
    assert token_requests <= outcomes["unauthorized"] + 2


def test_rows_that_still_fail_exit_1_unless_tolerated(tmp_path: Path):
    source = prompts_csv(tmp_path, 5)
    with emulator_in_thread(faults=Faults(error_rate=1.0)) as emu:
        failed = invoke("run", source, "--base-url", emu.base_url, "--max-attempts", 1)
        tolerated = invoke(
            "run", source, "--base-url", emu.base_url, "--max-attempts", 1, "--max-failures", "100%"
        )
    assert failed.exit_code == 1 and "5 failed" in failed.stderr
    assert "TransientError 5" in failed.stderr
    assert tolerated.exit_code == 0
    rows = pq.read_table(tmp_path / "in.responses.parquet").to_pylist()
    assert {(r["status"], r["http_status"], r["attempts"]) for r in rows} == {("error", 500, 1)}


def test_an_appended_row_is_the_only_one_sent_on_a_rerun(tmp_path: Path, live_emulator: Emulator):
    source = prompts_csv(tmp_path, 20)
    assert invoke("run", source, "--base-url", live_emulator.base_url, "-q").exit_code == 0
    before = chat_requests(live_emulator)
    with source.open("a", encoding="utf-8") as handle:
        handle.write("r20,A brand new question\n")
    result = invoke("run", source, "--base-url", live_emulator.base_url)
    assert result.exit_code == 0
    assert chat_requests(live_emulator) - before == 1
    assert live_emulator.stats.prompts["A brand new question"] == 1
    assert pq.read_table(tmp_path / "in.responses.parquet").num_rows == 21
    assert "reused 20" in result.stderr


def test_restart_discards_the_checkpoint(tmp_path: Path, live_emulator: Emulator):
    source = prompts_csv(tmp_path, 4)
    invoke("run", source, "--base-url", live_emulator.base_url, "-q")
    invoke("run", source, "--base-url", live_emulator.base_url, "-q", "--restart")
    assert chat_requests(live_emulator) == 8


def test_dry_run_shows_prompts_and_sends_nothing(tmp_path: Path, live_emulator: Emulator):
    source = prompts_csv(tmp_path, 3)
    result = invoke(
        "run",
        source,
        "--dry-run",
        "--template",
        "Q {id}: {prompt}",
        "--system",
        "Be brief.",
        "--base-url",
        live_emulator.base_url,
    )
    assert result.exit_code == 0
    assert "3 rows" in result.stdout
    assert "System: Be brief.\nUser: Q r0: Question number 0?\nAssistant:" in result.stdout
    assert chat_requests(live_emulator) == 0
    assert not (tmp_path / "in.responses.parquet").exists()


def test_a_job_file_runs_and_command_line_options_override_it(
    tmp_path: Path, live_emulator: Emulator
):
    prompts_csv(tmp_path, 4)
    job = tmp_path / "job.toml"
    job.write_text(
        'input = "in.csv"\noutput = "from-job.parquet"\nconcurrency = 3\n'
        f'base_url = "{live_emulator.base_url}"\nsystem = "Be brief."\n[retry]\nattempts = 2\n'
    )
    result = invoke("run", "--job", job, "-c", 5, "-q", "--summary-json", tmp_path / "s.json")
    assert result.exit_code == 0, result.stderr
    meta = read_metadata(tmp_path / "from-job.parquet")["options"]
    assert meta["concurrency"] == 5 and meta["retry"]["attempts"] == 2
    assert meta["system"] == "Be brief."
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["ok"] == 4 and summary["rows"] == 4


def test_a_job_file_with_an_unknown_key_is_refused(tmp_path: Path):
    job = tmp_path / "job.toml"
    job.write_text('input = "in.csv"\nconcurency = 3\n')
    result = invoke("run", "--job", job)
    assert result.exit_code == 2 and "concurency" in result.stderr


def test_summary_json_has_counts_and_latency(tmp_path: Path, live_emulator: Emulator):
    source = write_csv(tmp_path / "in.csv", [{"prompt": "a"}, {"prompt": ""}, {"prompt": "a"}])
    invoke(
        "run",
        source,
        "--base-url",
        live_emulator.base_url,
        "-q",
        "--summary-json",
        tmp_path / "s.json",
    )
    summary = json.loads((tmp_path / "s.json").read_text())
    assert (summary["rows"], summary["ok"], summary["skipped"], summary["deduped"]) == (3, 2, 1, 1)
    assert summary["token_requests"] == 1 and summary["latency_p50_ms"] > 0


def test_stdin_input_is_read_as_csv(tmp_path: Path, live_emulator: Emulator):
    out = tmp_path / "out.parquet"
    result = invoke(
        "run",
        "-",
        "-o",
        out,
        "--base-url",
        live_emulator.base_url,
        "-q",
        input="prompt\nhello\nworld\n",
    )
    assert result.exit_code == 0, result.stderr
    assert pq.read_table(out).column("response").to_pylist() == [
        answer_for("hello"),
        answer_for("world"),
    ]


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "tsv"])
def test_jsonl_parquet_and_tsv_inputs_work(tmp_path: Path, live_emulator: Emulator, kind: str):
    prompts = ["first, with a comma", 'second "quoted"', "third\nline"]
    if kind == "jsonl":
        source = tmp_path / "in.jsonl"
        source.write_text(
            "".join(json.dumps({"prompt": p, "n": i}) + "\n" for i, p in enumerate(prompts))
        )
    elif kind == "parquet":
        source = tmp_path / "in.parquet"
        pq.write_table(pa.table({"prompt": prompts, "n": [1, 2, 3]}), source)
    else:  # tab-separated: a quote is text, and a prompt cannot hold a line break
        prompts = prompts[:2]
        source = tmp_path / "in.tsv"
        source.write_text('prompt\tn\nfirst, with a comma\t1\nsecond "quoted"\t2\n')
    result = invoke("run", source, "--base-url", live_emulator.base_url, "-q")
    assert result.exit_code == 0, result.stderr
    table = pq.read_table(tmp_path / "in.responses.parquet")
    assert table.column("prompt").to_pylist() == prompts
    assert table.column("response").to_pylist() == [answer_for(p) for p in prompts]
    if kind == "parquet":
        assert table.schema.field("n").type == pa.int64()


def test_delimiter_and_quoting_options_reach_the_reader(tmp_path: Path, live_emulator: Emulator):
    source = tmp_path / "in.csv"
    source.write_text('prompt;n\n"To be" or not;1\n', encoding="utf-8")
    options = ["--delimiter", ";", "--quoting", "none", "--base-url", live_emulator.base_url]

    result = invoke("run", source, *options, "-q")

    assert result.exit_code == 0, result.stderr
    table = pq.read_table(tmp_path / "in.responses.parquet")
    assert table.column("prompt").to_pylist() == ['"To be" or not']


def test_gzip_compressed_stdin_is_read(tmp_path: Path, live_emulator: Emulator):
    out = tmp_path / "out.parquet"
    data = gzip.compress(b"prompt\nhello\n")

    result = CliRunner().invoke(
        main, ["run", "-", "-o", str(out), "--base-url", live_emulator.base_url, "-q"], input=data
    )

    assert result.exit_code == 0, result.stderr
    assert pq.read_table(out).column("response").to_pylist() == [answer_for("hello")]


def test_messages_column_sends_multi_turn_conversations(tmp_path: Path, live_emulator: Emulator):
    conversation = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "How are you?"},
    ]
    source = write_csv(tmp_path / "in.csv", [{"messages": json.dumps(conversation)}])
    result = invoke(
        "run", source, "--messages-column", "messages", "--base-url", live_emulator.base_url, "-q"
    )
    assert result.exit_code == 0, result.stderr
    expected = "User: Hi\nAssistant: Hello\nUser: How are you?\nAssistant:"
    (row,) = pq.read_table(tmp_path / "in.responses.parquet").to_pylist()
    assert row["sent_prompt"] == expected and row["response"] == answer_for(expected)


def test_limit_runs_only_the_first_rows(tmp_path: Path, live_emulator: Emulator):
    invoke(
        "run", prompts_csv(tmp_path, 10), "--limit", 4, "--base-url", live_emulator.base_url, "-q"
    )
    assert pq.read_table(tmp_path / "in.responses.parquet").num_rows == 4


def test_emulate_runs_the_sample_data_offline(tmp_path: Path):
    out = tmp_path / "sample.parquet"
    result = invoke("run", ROOT / "sample_data" / "prompts.csv", "--emulate", "-o", out)
    assert result.exit_code == 0, result.stderr
    table = pq.read_table(out)
    assert table.num_rows == 50
    assert set(table.column("status").to_pylist()) == {"ok", "skipped"}


BAD_INPUTS = {
    "missing file": (lambda d: d / "nope.csv", [], "no such file"),
    "unknown extension": (lambda d: _text(d / "in.xlsx", "prompt\na\n"), [], "unknown file type"),
    "empty file": (lambda d: _text(d / "in.csv", ""), [], "is empty"),
    "header only": (lambda d: _text(d / "in.csv", "prompt\n"), [], "header but no rows"),
    "missing prompt column": (
        lambda d: _text(d / "in.csv", "text,id\na,1\n"),
        [],
        "no column 'prompt' (--prompt-column); the columns are: text, id",
    ),
    "template with a missing column": (
        lambda d: _text(d / "in.csv", "prompt\na\n"),
        ["--template", "Q: {question}"],
        "no column 'question'",
    ),
    "template reaching an attribute": (
        lambda d: _text(d / "in.csv", "prompt\na\n"),
        ["--template", "{prompt.__class__}"],
        "not a plain column name",
    ),
    "duplicate ids": (
        lambda d: _text(d / "in.csv", "id,prompt\n1,a\n2,b\n1,c\n"),
        ["--id-column", "id"],
        "repeated: '1'",
    ),
    "malformed CSV": (
        lambda d: _text(d / "in.csv", "prompt,x\na,1\nb,2,3\n"),
        [],
        "line 3: expected 2 fields",
    ),
    "non-UTF-8 bytes": (
        lambda d: _bytes(d / "in.csv", b"prompt\nok\ncaf\xe9\n"),
        [],
        "line 3: bytes that are not valid utf-8",
    ),
    "bad JSON in the messages column": (
        lambda d: _text(d / "in.csv", 'messages\n"[{""role"": ""user""}]"\n"[oops"\n'),
        ["--messages-column", "messages"],
        "line 3, column 'messages': row 1",
    ),
    "output folder missing": (
        lambda d: _text(d / "in.csv", "prompt\na\n"),
        ["-o", "/nonexistent/out.parquet"],
        "does not exist",
    ),
    "output equal to the input": (
        lambda d: _parquet(d / "in.parquet", {"prompt": ["a"]}),
        ["-o", "{input}"],
        "is the input file",
    ),
    "input column clashing with a result column": (
        lambda d: _text(d / "in.csv", "prompt,status\na,new\n"),
        [],
        "'status'",
    ),
}


def _text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _parquet(path: Path, columns: dict[str, list[str]]) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gets_a_one_line_error_exit_2_and_sends_nothing(
    tmp_path: Path, live_emulator: Emulator, case: str
):
    make, extra, message = BAD_INPUTS[case]
    source = make(tmp_path)
    extra = [str(source) if a == "{input}" else a for a in extra]
    result = invoke("run", source, *extra, "--base-url", live_emulator.base_url)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert result.stderr.startswith("aibatch: error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert chat_requests(live_emulator) == 0 and live_emulator.stats.token_requests == 0


def test_no_progress_leaves_only_the_summary(tmp_path: Path, live_emulator: Emulator):
    source = prompts_csv(tmp_path, 3)

    result = invoke("run", source, "--base-url", live_emulator.base_url, "--no-progress")

    assert result.exit_code == 0
    assert result.stderr.startswith("3 rows: 3 ok") and " sent | " not in result.stderr


def test_verbose_after_the_command_turns_on_info_logs(tmp_path: Path, live_emulator: Emulator):
    source = prompts_csv(tmp_path, 3)
    command = [sys.executable, "-m", "aibatch", "run", source, "--base-url", live_emulator.base_url]

    done = subprocess.run([*map(str, command), "-q", "-v"], capture_output=True, timeout=60)

    assert done.returncode == 0 and b" INFO aibatch." in done.stderr, done.stderr


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_limit_below_one_is_refused_pointing_at_dry_run(
    tmp_path: Path, live_emulator: Emulator, limit: str
):
    source = prompts_csv(tmp_path, 3)

    result = CliRunner().invoke(
        main, ["run", str(source), "--limit", limit, "--base-url", live_emulator.base_url]
    )

    assert result.exit_code == 2 and "use --dry-run" in result.stderr
    assert chat_requests(live_emulator) == 0


@pytest.mark.parametrize("command", ["run", "emulate"])
def test_every_option_has_a_description(command: str):
    options = [p for p in main.commands[command].params if isinstance(p, click.Option)]

    assert [p.name for p in options if not p.help] == []


def test_emulate_fault_options_take_their_help_from_the_faults_fields():
    helps = {p.name: p.help for p in main.commands["emulate"].params}

    fields = dataclasses.fields(Faults)
    assert {f.name: helps.get(f.name) for f in fields} == {
        f.name: f.metadata.get("help") for f in fields
    }


def test_provider_help_names_the_command_that_lists_them():
    (provider,) = [p for p in main.commands["run"].params if p.name == "provider"]

    assert "aibatch providers" in (provider.help or "")


@pytest.mark.parametrize("name", ["concurrency", "adaptive"])
def test_adaptive_concurrency_help_names_every_overload_status(name: str):
    (option,) = [p for p in main.commands["run"].params if p.name == name]

    assert "429, 503, 529" in (option.help or "")


def test_run_help_ends_with_the_exit_codes():
    text = invoke("run", "--help").stdout

    codes = text[text.index("Exit codes:") :].split()
    assert [c for c in codes if c.isdigit()] == ["0", "1", "2", "3", "70", "75", "130"]
    assert text.rstrip().endswith("run the same command again to resume")
