"""Costs, budgets and the dry-run estimate through ``aibatch run``, against the emulator."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from aibatch.cli import main
from aibatch.console import ProgressReporter, usd
from aibatch.io.output import read_metadata
from aibatch.jobs.checkpoint import Checkpoint, checkpoint_dir
from aibatch.providers.emulator import Emulator
from aibatch.runner.engine import Progress
from tests.conftest import emulator_in_thread

PRICES = ("--input-price", "0.5", "--output-price", "2")


@pytest.fixture
def openai_emulator() -> Iterator[Emulator]:
    with emulator_in_thread(protocol="openai") as emu:
        yield emu


def invoke(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def run_openai(source: Path, emu: Emulator, *args: object) -> Result:
    return invoke("run", source, "--provider", "openai", "--base-url", emu.base_url, *args)


def prompts_csv(path: Path, prompts: list[str]) -> Path:
    path.write_text("\n".join(["prompt", *prompts]) + "\n", encoding="utf-8")
    return path


def questions(n: int) -> list[str]:
    return [f"Question number {i} and why?" for i in range(n)]


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_max_cost_for_a_model_without_a_price_is_refused_before_anything_is_sent(
    tmp_path: Path, openai_emulator: Emulator
):
    source = prompts_csv(tmp_path / "in.csv", questions(3))

    result = run_openai(
        source, openai_emulator, "--model", "llama3", "--max-tokens", 9, "--max-cost", 1
    )

    assert result.exit_code == 2 and openai_emulator.stats.chat_requests == 0
    assert result.stderr.startswith("aibatch: error: --max-cost needs a price: ")
    assert "--input-price and --output-price" in result.stderr


def test_max_cost_with_a_provider_that_reports_no_usage_is_refused(
    tmp_path: Path, live_emulator: Emulator
):
    source = prompts_csv(tmp_path / "in.csv", questions(3))

    result = invoke("run", source, "--base-url", live_emulator.base_url, "--max-cost", 1)

    assert result.exit_code == 2 and live_emulator.stats.chat_requests == 0
    assert "the aichatonline provider reports none" in result.stderr


def test_max_cost_without_max_tokens_is_refused(tmp_path: Path, openai_emulator: Emulator):
    source = prompts_csv(tmp_path / "in.csv", questions(3))

    result = run_openai(source, openai_emulator, "--max-cost", 1, *PRICES)

    assert result.exit_code == 2 and openai_emulator.stats.chat_requests == 0
    assert "--max-cost needs --max-tokens" in result.stderr


def test_max_cost_with_image_columns_is_refused(tmp_path: Path, openai_emulator: Emulator):
    source = tmp_path / "in.csv"
    source.write_text("prompt,photo\nwhat is this?,cat.png\n", encoding="utf-8")
    (tmp_path / "cat.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))

    result = run_openai(
        source, openai_emulator, "--max-cost", 1, "--max-tokens", 10, "--image-column", "photo",
        *PRICES,
    )  # fmt: skip

    assert result.exit_code == 2 and openai_emulator.stats.chat_requests == 0
    assert "--max-cost cannot bound requests with images" in result.stderr


def test_a_run_its_budget_stopped_exits_3_and_says_how_to_go_on(
    tmp_path: Path, openai_emulator: Emulator
):
    source = prompts_csv(tmp_path / "in.csv", questions(60))

    result = run_openai(source, openai_emulator, "--max-tokens", 5, "--max-cost", 0.0002, *PRICES)

    assert result.exit_code == 3, result.stderr
    assert "Budget reached." in result.stderr
    assert "re-run with a higher --max-cost to send the unsent rows" in result.stderr


def test_the_summary_json_has_the_runs_cost(tmp_path: Path, openai_emulator: Emulator):
    source, out = prompts_csv(tmp_path / "in.csv", questions(8)), tmp_path / "out.parquet"

    run_openai(
        source, openai_emulator, "-o", out, "-q", "--summary-json", tmp_path / "s.json", *PRICES
    )

    summary = json.loads((tmp_path / "s.json").read_text())
    costs = pq.read_table(out).column("cost_usd").to_pylist()
    assert summary["cost_usd"] == pytest.approx(math.fsum(costs), rel=1e-12) and summary["cost_usd"]
    assert read_metadata(out)["cost_usd"] == summary["cost_usd"]


def test_the_summary_says_the_cost_is_unknown_never_zero(tmp_path: Path, openai_emulator: Emulator):
    source = prompts_csv(tmp_path / "in.csv", questions(3))

    result = run_openai(
        source, openai_emulator, "--model", "llama3", "--summary-json", tmp_path / "s.json"
    )

    assert "cost: unknown (genai-prices" in result.stderr
    assert json.loads((tmp_path / "s.json").read_text())["cost_usd"] is None


def test_the_summary_shows_what_the_run_cost(tmp_path: Path, openai_emulator: Emulator):
    source, out = prompts_csv(tmp_path / "in.csv", questions(3)), tmp_path / "out.parquet"

    result = run_openai(source, openai_emulator, "-o", out, *PRICES)

    total = math.fsum(pq.read_table(out).column("cost_usd").to_pylist())
    assert f"cost: {usd(total)} at $0.5 input, $2 output per million tokens" in result.stderr


def test_a_dry_run_estimates_tokens_from_characters_and_the_cost_range(
    tmp_path: Path, openai_emulator: Emulator
):
    source = prompts_csv(tmp_path / "in.csv", questions(4))

    result = run_openai(source, openai_emulator, "--dry-run", *PRICES)

    assert "A run would send 4 rows" in result.stdout
    assert "(estimated from characters)" in result.stdout
    assert "256 a row (assumed" in result.stdout and "Cost: $" in result.stdout
    assert openai_emulator.stats.chat_requests == 0


def test_a_dry_runs_summary_json_has_the_middle_of_the_cost_range(
    tmp_path: Path, openai_emulator: Emulator
):
    prompts = questions(5)
    source = prompts_csv(tmp_path / "in.csv", prompts)

    run_openai(
        source,
        openai_emulator,
        "--dry-run",
        "--summary-json",
        tmp_path / "s.json",
        "--expected-output-tokens",
        100,
        *PRICES,
    )

    found = json.loads((tmp_path / "s.json").read_text())
    low = math.fsum((-(-len(p) // 4) + 4) * 0.5 / 1e6 + 100 * 2 / 1e6 for p in prompts)
    high = math.fsum((-(-len(p) // 2) + 4) * 0.5 / 1e6 + 100 * 2 / 1e6 for p in prompts)
    assert found["estimated_cost_usd"] == pytest.approx((low + high) / 2, rel=1e-12)


def test_a_dry_run_counts_only_the_rows_a_re_run_would_send(
    tmp_path: Path, openai_emulator: Emulator
):
    source = prompts_csv(tmp_path / "in.csv", [*questions(10), "Question number 1 and why?"])
    run_openai(source, openai_emulator, "-q", "--limit", 4)

    result = run_openai(source, openai_emulator, "--dry-run", "--summary-json", tmp_path / "s")

    found = json.loads((tmp_path / "s").read_text())
    assert (found["to_send"], found["reused"], found["deduped"]) == (6, 5, 0)
    assert "A run would send 6 rows: 5 answered in the checkpoint" in result.stdout


def test_a_dry_run_reads_a_checkpoint_another_run_holds_and_changes_nothing(
    tmp_path: Path, openai_emulator: Emulator
):
    source, out = prompts_csv(tmp_path / "in.csv", questions(6)), tmp_path / "out.parquet"
    run_openai(source, openai_emulator, "-q", "-o", out, "--limit", 3)
    folder = checkpoint_dir(out)
    (folder / "parts" / "00000099.arrow.tmp").write_bytes(b"half a part")

    with Checkpoint(folder):  # another run, writing this output now
        before = files_of(folder)
        result = run_openai(source, openai_emulator, "-o", out, "--dry-run")
        after = files_of(folder)

    assert result.exit_code == 0 and "A run would send 3 rows" in result.stdout
    assert after == before


@pytest.mark.parametrize(
    ("amount", "shown"),
    [(0.0, "$0.0000"), (0.000069123, "$0.000069"), (0.01234, "$0.0123"), (1234.5, "$1,234.50")],
)
def test_amounts_in_dollars_keep_two_significant_digits_when_tiny(amount: float, shown: str):
    assert usd(amount) == shown


def test_the_progress_line_shows_what_the_run_has_cost_so_far():
    line = ProgressReporter(bar=False).line(Progress(to_send=10, done=4, cost_usd=0.01234))

    assert "| $0.0123 |" in line
