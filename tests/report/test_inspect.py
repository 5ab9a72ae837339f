"""``aibatch inspect``: text and JSON about real outputs written against the emulator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
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


def priced(made: Made, folder: Path, costs: pa.Array | None) -> Path:
    """A copy of ``made``'s output whose ``cost_usd`` column is ``costs`` (none: no column)."""
    table = made.table
    if "cost_usd" in table.column_names:
        table = table.drop_columns(["cost_usd"])
    if costs is not None:
        table = table.append_column("cost_usd", costs)
    path = folder / "priced.parquet"
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize("column", ["absent", "null"])
def test_cost_is_not_shown_not_even_as_zero_when_no_row_has_one(
    failing: Made, tmp_path: Path, column: str
):
    nulls = pa.nulls(failing.summary.rows, pa.float64()) if column == "null" else None
    path = priced(failing, tmp_path, nulls)

    data, text = inspect_json(path), inspect(path).stdout

    assert data["cost_usd"] is None
    assert [line for line in text.splitlines() if line.startswith("cost")] == []


def test_cost_is_the_sum_of_the_cost_usd_column(failing: Made, tmp_path: Path):
    statuses = failing.table.column("status").to_pylist()
    path = priced(failing, tmp_path, pa.array([0.25 if s == "ok" else None for s in statuses]))

    data = inspect_json(path)

    assert data["cost_usd"] == 0.25 * failing.summary.ok
    assert f"cost          ${0.25 * failing.summary.ok:,.4f}" in inspect(path).stdout


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


def test_a_parquet_file_without_aibatch_columns_is_named_as_not_an_output(tmp_path: Path):
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"prompt": ["hello"]}), other)

    result = inspect(other)

    assert (result.exit_code, result.stderr) == (
        2,
        f"aibatch: error: {other}: has no status column: not an aibatch output\n",
    )


@pytest.mark.parametrize("command", ["inspect", "report"])
def test_the_help_of_inspect_and_report_imports_no_data_or_plotting_library(command: str):
    code = (
        "import sys\nfrom aibatch.cli import main\n"
        "try:\n    main([sys.argv[1], '--help'], prog_name='aibatch')\n"
        "except SystemExit:\n    pass\n"
        "heavy = {'pandas', 'pyarrow', 'numpy', 'aiohttp', 'matplotlib'}\n"
        "print(sorted(heavy & {name.split('.')[0] for name in sys.modules}))\n"
    )

    done = subprocess.run(
        [sys.executable, "-c", code, command], capture_output=True, text=True, timeout=60
    )

    assert done.stdout.splitlines()[-1] == "[]", done.stderr


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
