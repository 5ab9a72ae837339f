"""``--batch-api`` end to end: the CLI against the emulator's OpenAI and Anthropic Batch APIs.

Every test runs real ``aibatch run`` commands (click's runner, or a child process where
it is killed) against an emulator on a loopback port, and reads what they wrote.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from aibatch.errors import CheckpointError
from aibatch.jobs.batches import Ledger
from aibatch.jobs.checkpoint import checkpoint_dir
from aibatch.providers.emulator import Emulator, Faults, answer_for
from tests.chaos.crashpoints import CrashPoint, child, child_command, child_env, wait_until
from tests.conftest import emulator_in_thread
from tests.test_openai_cli import fast_retries, invoke, prompts_csv, questions

PROVIDERS = ("openai", "anthropic")


@pytest.fixture(params=PROVIDERS)
def provider(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def batch_emulator(provider: str) -> Iterator[Emulator]:
    with emulator_in_thread(protocol=provider, batch_delay=0) as emu:
        yield emu


def batch_run(source: Path, provider: str, emu: Emulator, *args: object) -> Any:
    """``aibatch run SOURCE --provider P --base-url EMU --batch-api ARGS...``."""
    return invoke(
        "run", source, "--provider", provider, "--base-url", emu.base_url, "--batch-api",
        "--poll-interval", "0.2", *args,
    )  # fmt: skip


def output_of(source: Path) -> Path:
    return source.with_name(f"{source.stem}.responses.parquet")


def rows_of(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


def test_every_row_gets_its_own_answer(
    tmp_path: Path, provider: str, batch_emulator: Emulator
) -> None:
    prompts = questions(30)
    source = prompts_csv(tmp_path, prompts)
    result = batch_run(source, provider, batch_emulator, "--batch-size", "7")
    assert result.exit_code == 0, result.output
    answers = [r["response"] for r in rows_of(output_of(source))]
    assert answers == [answer_for(p) for p in prompts]


def test_rows_are_split_into_batches_of_batch_size(
    tmp_path: Path, provider: str, batch_emulator: Emulator
) -> None:
    source = prompts_csv(tmp_path, questions(30))
    batch_run(source, provider, batch_emulator, "--batch-size", "7")
    assert batch_emulator.stats.batches_created == 5


def test_a_rerun_of_a_finished_job_submits_nothing(
    tmp_path: Path, provider: str, batch_emulator: Emulator
) -> None:
    source = prompts_csv(tmp_path, questions(10))
    batch_run(source, provider, batch_emulator)
    before = batch_emulator.stats.batch_requests
    result = batch_run(source, provider, batch_emulator)
    assert (result.exit_code, batch_emulator.stats.batch_requests) == (0, before)


def test_batch_rows_cost_half_the_live_price(tmp_path: Path, provider: str) -> None:
    prompts = questions(8)
    prices = ("--input-price", "1", "--output-price", "2")
    with emulator_in_thread(protocol=provider, batch_delay=0) as emu:
        live = prompts_csv(tmp_path, prompts, "live.csv")
        invoke("run", live, "--provider", provider, "--base-url", emu.base_url, *prices)
        batched = prompts_csv(tmp_path, prompts, "batched.csv")
        batch_run(batched, provider, emu, *prices)
    live_cost = [r["cost_usd"] for r in rows_of(output_of(live))]
    batch_cost = [r["cost_usd"] for r in rows_of(output_of(batched))]
    assert batch_cost == pytest.approx([c / 2 for c in live_cost])


def test_requests_that_fail_are_retried_in_a_new_batch_up_to_max_attempts(
    tmp_path: Path, provider: str
) -> None:
    source = prompts_csv(tmp_path, questions(4))
    with emulator_in_thread(
        protocol=provider, batch_delay=0, faults=Faults(batch_error_rate=1.0)
    ) as emu:
        result = batch_run(
            source, provider, emu, "--max-attempts", "3", "--job", fast_retries(tmp_path)
        )
        created = emu.stats.batches_created
    rows = rows_of(output_of(source))
    assert (result.exit_code, created, {r["attempts"] for r in rows}) == (1, 3, {3})


def test_expired_requests_end_as_batch_expired(tmp_path: Path, provider: str) -> None:
    source = prompts_csv(tmp_path, questions(3))
    with emulator_in_thread(
        protocol=provider, batch_delay=0, faults=Faults(batch_expire_rate=1.0)
    ) as emu:
        batch_run(source, provider, emu, "--max-attempts", "2")
    assert {r["error_type"] for r in rows_of(output_of(source))} == {"BatchExpired"}


def test_a_failed_batch_fails_its_rows_as_batch_failed(tmp_path: Path) -> None:
    source = prompts_csv(tmp_path, questions(3))
    with emulator_in_thread(
        protocol="openai", batch_delay=0, faults=Faults(batch_fail_rate=1.0)
    ) as emu:
        batch_run(source, "openai", emu, "--max-attempts", "1")
    assert {r["error_type"] for r in rows_of(output_of(source))} == {"BatchFailed"}


def test_no_wait_exits_75_and_writes_no_output_while_batches_run(
    tmp_path: Path, provider: str
) -> None:
    source = prompts_csv(tmp_path, questions(3))
    with emulator_in_thread(protocol=provider, faults=Faults(batch_stuck_rate=1.0)) as emu:
        result = batch_run(source, provider, emu, "--no-wait")
    assert (result.exit_code, output_of(source).exists()) == (75, False)


def test_a_second_no_wait_run_polls_and_submits_nothing_new(tmp_path: Path, provider: str) -> None:
    source = prompts_csv(tmp_path, questions(3))
    with emulator_in_thread(protocol=provider, faults=Faults(batch_stuck_rate=1.0)) as emu:
        batch_run(source, provider, emu, "--no-wait")
        result = batch_run(source, provider, emu, "--no-wait")
        assert (result.exit_code, emu.stats.batches_created) == (75, 1)


def test_max_wait_stops_waiting_on_a_batch_that_never_ends(tmp_path: Path, provider: str) -> None:
    source = prompts_csv(tmp_path, questions(2))
    with emulator_in_thread(protocol=provider, faults=Faults(batch_stuck_rate=1.0)) as emu:
        result = batch_run(source, provider, emu, "--max-wait", "0")
    assert result.exit_code == 75


def test_batches_lists_the_jobs_batches(tmp_path: Path, provider: str) -> None:
    source = prompts_csv(tmp_path, questions(3))
    with emulator_in_thread(protocol=provider, faults=Faults(batch_stuck_rate=1.0)) as emu:
        batch_run(source, provider, emu, "--no-wait")
        listed = invoke("batches", output_of(source), "--json")
    (batch,) = json.loads(listed.output)
    assert (batch["state"], batch["status"], batch["rows"]) == ("submitted", "in_progress", 3)


def test_cancelled_batches_are_collected_as_batch_cancelled(tmp_path: Path, provider: str) -> None:
    source = prompts_csv(tmp_path, questions(3))
    with emulator_in_thread(protocol=provider, faults=Faults(batch_stuck_rate=1.0)) as emu:
        batch_run(source, provider, emu, "--no-wait")
        invoke("batches", output_of(source), "--cancel")
        result = batch_run(source, provider, emu)
    errors = {r["error_type"] for r in rows_of(output_of(source))}
    assert (result.exit_code, errors) == (1, {"BatchCancelled"})


def test_the_dask_engine_refuses_batch_api(tmp_path: Path) -> None:
    source = prompts_csv(tmp_path, questions(2))
    result = invoke("run", source, "--provider", "openai", "--batch-api", "--engine", "dask")
    assert "--batch-api runs on one machine" in result.output


def test_a_provider_without_a_batch_api_is_refused(tmp_path: Path) -> None:
    source = prompts_csv(tmp_path, questions(2))
    result = invoke("run", source, "--emulate", "--batch-api")
    assert (result.exit_code, "has no batch API" in result.output) == (2, True)


def test_the_ledger_records_the_batch_id(
    tmp_path: Path, provider: str, batch_emulator: Emulator
) -> None:
    source = prompts_csv(tmp_path, questions(3))
    batch_run(source, provider, batch_emulator)
    (chunk,) = Ledger(checkpoint_dir(output_of(source)), read_only=True).chunks()
    assert (chunk.state, bool(chunk.batch_id)) == ("collected", True)


def test_a_damaged_record_stops_the_run_naming_it(tmp_path: Path, provider: str) -> None:
    source = prompts_csv(tmp_path, questions(3))
    with emulator_in_thread(protocol=provider, faults=Faults(batch_stuck_rate=1.0)) as emu:
        batch_run(source, provider, emu, "--no-wait")
        record = checkpoint_dir(output_of(source)) / "batches" / "00000001.json"
        record.write_text(record.read_text().replace('"rows": 3', '"rows": 2'))
        result = batch_run(source, provider, emu, "--no-wait")
    assert (result.exit_code, str(record) in result.output) == (2, True)


# kill -9 at every step of a chunk, then the same command again

# A chunk's record is rewritten at each step. OpenAI: prepared, uploaded, submitted,
# status seen (ended), collected; Anthropic has no upload. "before" the N-th rewrite:
# the step happened at the provider (or on disk) but is not recorded; "after": recorded,
# the next not begun. And between storing the results and recording the chunk collected.
KILLS = [
    *(
        (provider, CrashPoint("record-replace", n, when))
        for provider, steps in (("openai", 5), ("anthropic", 4))
        for n in range(1, steps + 1)
        for when in ("before", "after")
    ),
    *((provider, CrashPoint("part-replace", 1, "after")) for provider in PROVIDERS),
]


@pytest.mark.parametrize(("provider", "point"), KILLS, ids=lambda v: getattr(v, "nth", v))
def test_a_kill_at_any_step_never_submits_a_row_twice(
    tmp_path: Path, provider: str, point: CrashPoint
) -> None:
    prompts = questions(5)
    source = prompts_csv(tmp_path, prompts)
    with emulator_in_thread(protocol=provider, batch_delay=0) as emu:
        args = ("run", source, "--provider", provider, "--base-url", emu.base_url, "--batch-api",
                "--poll-interval", "0.2")  # fmt: skip
        with child(args, tmp_path, point) as killed:
            killed.wait(timeout=60)
        assert killed.returncode == -9
        rerun = subprocess.run(
            child_command(*args, bootstrap=False),
            cwd=tmp_path,
            env=child_env(),
            capture_output=True,
            timeout=60,
        )
        requests = emu.stats.batch_requests
    answers = [r["response"] for r in rows_of(output_of(source))]
    assert (rerun.returncode, requests, answers) == (0, 5, [answer_for(p) for p in prompts])


def test_ctrl_c_while_waiting_exits_130_and_leaves_the_batches_running(
    tmp_path: Path, provider: str
) -> None:
    source = prompts_csv(tmp_path, questions(3))
    ledger = Ledger(checkpoint_dir(output_of(source)), read_only=True)
    with emulator_in_thread(protocol=provider, faults=Faults(batch_stuck_rate=1.0)) as emu:
        args = ("run", source, "--provider", provider, "--base-url", emu.base_url, "--batch-api")
        with child(args, tmp_path, None) as process:
            wait_until(lambda: any(c.state == "submitted" for c in _chunks(ledger)), process)
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)
        assert (process.returncode, emu.stats.batches_cancelled) == (130, 0)


def _chunks(ledger: Ledger) -> list[Any]:
    try:
        return ledger.chunks()
    except CheckpointError:  # a record being replaced as we look
        return []


def test_max_cost_is_never_passed(tmp_path: Path, provider: str) -> None:
    source = prompts_csv(tmp_path, questions(10))
    summary = tmp_path / "summary.json"
    prices = ("--input-price", "1000", "--output-price", "1000", "--max-tokens", "10")
    with emulator_in_thread(protocol=provider, batch_delay=0) as emu:
        result = batch_run(
            source, provider, emu, *prices, "--max-cost", "0.05", "--summary-json", summary
        )
    spent = json.loads(summary.read_text())["cost_usd"]
    statuses = [r["status"] for r in rows_of(output_of(source))]
    assert (result.exit_code, spent <= 0.05, "unsent" in statuses) == (3, True, True)


def test_rows_wait_for_budget_held_by_batches_in_flight(tmp_path: Path) -> None:
    # Each row's worst case is far above its real cost: once the first batch settles,
    # its unused reservation pays for more rows than fitted at first.
    source = prompts_csv(tmp_path, questions(10))
    prices = ("--input-price", "1000", "--output-price", "1000", "--max-tokens", "100")
    with emulator_in_thread(protocol="openai", batch_delay=0) as emu:
        batch_run(source, "openai", emu, *prices, "--max-cost", "0.2")
        created = emu.stats.batches_created
    assert created > 1


def test_structured_answers_come_back_as_typed_columns(tmp_path: Path, provider: str) -> None:
    schema = '{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"]}'
    source = prompts_csv(tmp_path, questions(3))
    with emulator_in_thread(protocol=provider, batch_delay=0) as emu:
        result = batch_run(source, provider, emu, "--schema", schema)
    rows = rows_of(output_of(source))
    assert (result.exit_code, all(isinstance(r["n"], int) for r in rows)) == (0, True)


def test_run_file_takes_batch_api_as_a_keyword(tmp_path: Path, provider: str) -> None:
    from aibatch import run_file

    prompts = questions(3)
    source = prompts_csv(tmp_path, prompts)
    with emulator_in_thread(protocol=provider, batch_delay=0) as emu:
        summary = run_file(source, provider=provider, base_url=emu.base_url, batch_api=True)
        created = emu.stats.batches_created
    assert (summary.ok, created) == (3, 1)


def test_a_dry_run_estimates_the_batch_price(tmp_path: Path) -> None:
    source = prompts_csv(tmp_path, questions(5))
    prices = ("--input-price", "1", "--output-price", "2", "--max-tokens", "50")
    costs = []
    for extra in ((), ("--batch-api",)):
        summary = tmp_path / f"dry{len(extra)}.json"
        invoke("run", source, "--provider", "openai", "--base-url", "http://127.0.0.1:9",
               *prices, *extra, "--dry-run", "--summary-json", summary)  # fmt: skip
        costs.append(json.loads(summary.read_text())["worst_case_usd"])
    assert costs[1] == pytest.approx(costs[0] / 2)


def test_a_later_run_collects_what_a_no_wait_run_submitted(tmp_path: Path, provider: str) -> None:
    prompts = questions(4)
    source = prompts_csv(tmp_path, prompts)
    with emulator_in_thread(protocol=provider, batch_delay=3600) as emu:
        first = batch_run(source, provider, emu, "--no-wait")
        emu.end_batches()
        second = batch_run(source, provider, emu, "--no-wait")
        created = emu.stats.batches_created
    answers = [r["response"] for r in rows_of(output_of(source))]
    assert (first.exit_code, second.exit_code, created, answers) == (
        75, 0, 1, [answer_for(p) for p in prompts]
    )  # fmt: skip


def test_a_job_file_turns_the_batch_api_on(tmp_path: Path) -> None:
    source = prompts_csv(tmp_path, questions(2))
    job = tmp_path / "job.toml"
    with emulator_in_thread(protocol="openai", batch_delay=0) as emu:
        job.write_text(f'provider = "openai"\nbase_url = "{emu.base_url}"\nbatch_api = true\n')
        invoke("run", source, "--job", job, "--poll-interval", "0.2")
        assert emu.stats.batches_created == 1


def test_the_emulator_ends_its_batches_on_demand(tmp_path: Path) -> None:
    source = prompts_csv(tmp_path, questions(2))
    with emulator_in_thread(protocol="openai", batch_delay=3600) as emu:
        invoke("run", source, "--provider", "openai", "--base-url", emu.base_url, "--batch-api",
               "--no-wait")  # fmt: skip
        assert emu.end_batches() == 1


def test_a_requests_file_changed_before_it_was_sent_stops_the_run(
    tmp_path: Path, provider: str
) -> None:
    source = prompts_csv(tmp_path, questions(3))
    with emulator_in_thread(protocol=provider, batch_delay=0) as emu:
        args = ("run", source, "--provider", provider, "--base-url", emu.base_url, "--batch-api")
        with child(args, tmp_path, CrashPoint("record-replace", 1, "after")) as killed:
            killed.wait(timeout=60)  # the chunk is recorded, nothing sent yet
        requests = checkpoint_dir(output_of(source)) / "batches" / "00000001.jsonl"
        requests.write_bytes(
            requests.read_bytes().replace(b"Question number 1", b"Question number 2")
        )
        result = batch_run(source, provider, emu)
        created = emu.stats.batches_created
    assert (result.exit_code, str(requests) in result.output, created) == (2, True, 0)


def test_a_damaged_sent_prompts_file_leaves_the_column_blank_not_wrong(
    tmp_path: Path, provider: str
) -> None:
    prompts = questions(3)
    source = prompts_csv(tmp_path, prompts)
    with emulator_in_thread(protocol=provider, batch_delay=3600) as emu:
        batch_run(source, provider, emu, "--no-wait")
        sent = checkpoint_dir(output_of(source)) / "batches" / "00000001.prompts"
        sent.write_bytes(sent.read_bytes().replace(b"number 0", b"number 9"))
        emu.end_batches()
        batch_run(source, provider, emu)
    rows = rows_of(output_of(source))
    assert [(r["sent_prompt"], r["response"]) for r in rows] == [
        ("", answer_for(p)) for p in prompts
    ]
