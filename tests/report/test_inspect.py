"""``aibatch inspect``: text and JSON about real outputs written against the emulator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from click.testing import CliRunner, Result

import aibatch
from aibatch.cli import main
from aibatch.runner.summary import percentile
from tests.report.conftest import Made, write_prompts


def inspect(*args: object) -> Result:
    return CliRunner().invoke(main, ["inspect", *map(str, args)], catch_exceptions=False)


def inspect_json(*args: object) -> dict[str, Any]:
    result = inspect(*args, "--json")
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def failed_rows(table: pa.Table) -> list[dict[str, Any]]:
    return table.filter(pc.equal(table.column("status"), "error")).to_pylist()


def test_inspect_json_counts_rows_by_status_name(failing: Made):
    s = failing.summary

    data = inspect_json(failing.path)

    assert data["counts"] == {"ok": s.ok, "error": s.error, "skipped": s.skipped}


def test_inspect_text_starts_with_the_rows_and_their_statuses(failing: Made):
    s = failing.summary

    result = inspect(failing.path)

    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    assert (
        first == f"{failing.path}: {s.rows} rows: {s.ok} ok, {s.error} error, {s.skipped} skipped"
    )


def test_inspect_shows_the_jobs_options_from_the_metadata(failing: Made):
    data = inspect_json(failing.path)

    assert (data["options"]["id_column"], data["options"]["retry"]["attempts"]) == ("id", 1)


def test_errors_are_grouped_by_type_and_http_status_with_one_message_each(failing: Made):
    errors = failed_rows(failing.table)

    data = inspect_json(failing.path)

    assert data["errors_by_type"] == {
        "TransientError": {"count": len(errors), "example": errors[0]["error"]}
    }
    assert data["errors_by_http_status"] == {
        "500": {"count": len(errors), "example": errors[0]["error"]}
    }


def test_the_first_failed_rows_are_listed_in_output_order_with_their_prompts(failing: Made):
    errors = failed_rows(failing.table)[:4]

    data = inspect_json(failing.path, "--failed-rows", 4)

    assert [(r["row"], r["id"], r["prompt"]) for r in data["failed_rows"]] == [
        (e["row"], e["id"], e["sent_prompt"]) for e in errors
    ]


def test_latency_percentiles_of_a_small_output_are_exact(failing: Made):
    table = failing.table
    sent = table.filter(pc.is_in(table.column("status"), pa.array(["ok", "error"])))
    ordered = sorted(sent.column("latency_ms").to_pylist())

    data = inspect_json(failing.path)

    expected = {f"p{q}": percentile(ordered, q) for q in (50, 90, 99)}
    assert data["latency_ms"] == {"count": len(ordered), **expected, "max": ordered[-1]}


def test_attempts_are_counted_per_row_sent(failing: Made):
    s = failing.summary

    data = inspect_json(failing.path)

    assert data["attempts"] == {"1": s.ok + s.error}


def test_terminal_text_shows_hostile_prompts_with_their_control_characters_escaped(
    failing: Made,
):
    result = inspect(failing.path, "--failed-rows", 100)

    assert "\x1b" not in result.stdout
    assert "\\x1b[31mred\\x1b[0m" in result.stdout


def test_cost_is_absent_not_zero_when_the_output_has_no_cost_column(failing: Made):
    data = inspect_json(failing.path)
    text = inspect(failing.path).stdout

    assert data["cost_usd"] is None
    assert "cost" not in text


def test_cost_is_the_sum_of_a_cost_usd_column_when_there_is_one(failing: Made, tmp_path: Path):
    table = failing.table
    costs = pa.array([0.25 if s == "ok" else None for s in table.column("status").to_pylist()])
    priced = tmp_path / "priced.parquet"
    pq.write_table(table.append_column("cost_usd", costs), priced)

    data = inspect_json(priced)

    assert data["cost_usd"] == 0.25 * failing.summary.ok
    assert f"cost          ${0.25 * failing.summary.ok:,.4f}" in inspect(priced).stdout


def test_a_dask_output_folder_is_read_part_by_part(parts: tuple[Path, list[Made]]):
    folder, made = parts

    data = inspect_json(folder)

    assert data["counts"] == {
        "ok": sum(m.summary.ok for m in made),
        "error": sum(m.summary.error for m in made),
        "skipped": sum(m.summary.skipped for m in made),
    }
    assert data["files"] == [str(m.path) for m in made]


def test_an_output_with_no_failures_shows_no_error_sections(clean: Made):
    result = inspect(clean.path)

    assert result.exit_code == 0
    assert "error" not in result.stdout.split("\n", 1)[1]
    assert f"{clean.summary.ok} ok, 0 error" in result.stdout


def test_a_file_that_is_not_an_output_exits_2_with_one_line(tmp_path: Path):
    source = write_prompts(tmp_path / "in.csv", 3)

    result = inspect(source)

    assert result.exit_code == 2
    assert result.stderr.startswith(f"aibatch: error: {source}: not a readable Parquet file")
    assert len(result.stderr.splitlines()) == 1


def test_tokens_are_the_totals_the_provider_reported(tmp_path: Path):
    source = write_prompts(tmp_path / "in.csv", 20)
    summary = aibatch.run_file(source, tmp_path / "out.parquet", provider="openai", emulate=True)
    assert summary.prompt_tokens > 0

    data = inspect_json(tmp_path / "out.parquet")

    assert data["tokens"] == {
        "prompt": summary.prompt_tokens,
        "completion": summary.completion_tokens,
    }


def test_tokens_are_absent_when_the_provider_reports_none(failing: Made):
    data = inspect_json(failing.path)

    assert data["tokens"] is None
