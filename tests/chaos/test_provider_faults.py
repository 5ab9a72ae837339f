"""Faults from the provider, over real loopback HTTP: each alone, then all of them at once.

Every case checks the same things: every row ends ok (given enough attempts) or error
with its reason; no row is lost or duplicated; every answer is its own prompt's; the
emulator saw no foreign prompt; token requests follow expiries, not prompts.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import ByteReceiveStream

from aibatch.jobs.spec import JobSpec, RetryPolicy
from aibatch.providers.emulator import Emulator, Faults
from aibatch.runner.engine import Progress
from aibatch.runner.job import arun_job

from .checks import (
    assert_every_row_accounted,
    assert_only_own_prompts_reached,
    assert_tokens_follow_expiries,
    injected,
    tally,
    write_prompts,
)
from .crashpoints import child_command, child_env

ROWS = 200
# Short waits so that dozens of retries take a moment; attempts enough that 20% faults
# (or 100% of attempts failing but one in five, with everything on) cannot exhaust them.
RETRY = RetryPolicy(attempts=60, wait_initial=0.02, wait_max=0.3, wait_jitter=0.05)
TIMEOUT = 0.3

SINGLE_FAULTS = {
    "http_500": Faults(error_rate=0.2, seed=1),
    "429_with_retry_after": Faults(rate_limit_rate=0.2, retry_after=0.05, seed=2),
    "stream_cut_midway": Faults(cut_rate=0.2, seed=3),
    "garbage_and_blank_lines": Faults(garbage_rate=0.2, seed=4),
    "first_byte_slower_than_timeout": Faults(stall_rate=0.2, stall_seconds=5.0, seed=5),
    "token_expires_every_10_uses": Faults(token_max_uses=10, seed=6),
    "per_token_concurrency_limit": Faults(token_concurrency=4, retry_after=0.05, seed=7),
}


def spec(source: Path, emu: Emulator, **changes: object) -> JobSpec:
    options: dict[str, Any] = {
        "input": str(source),
        "base_url": emu.base_url,
        "concurrency": 16,
        "timeout": TIMEOUT,
        "retry": RETRY,
    }
    options.update(changes)
    return JobSpec(**options)


async def read_all(stream: ByteReceiveStream | None) -> str:
    assert stream is not None
    chunks = []
    with contextlib.suppress(anyio.EndOfStream):
        while True:
            chunks.append(await stream.receive())
    return b"".join(chunks).decode()


def stalled(emu: Emulator) -> int:
    """Requests that got no outcome: they stalled and the client gave up on them."""
    return emu.stats.chat_requests - sum(emu.stats.outcomes.values())


@pytest.mark.parametrize("name", sorted(SINGLE_FAULTS))
async def test_a_single_fault_at_20_percent_still_ends_every_row_ok_with_its_own_answer(
    tmp_path: Path, name: str
):
    faults = SINGLE_FAULTS[name]
    source, prompts = write_prompts(tmp_path, ROWS)
    emu = Emulator(latency=0.01, faults=faults, record_prompts=True)
    with anyio.fail_after(60):
        async with emu:
            summary = await arun_job(spec(source, emu))
    rows = assert_every_row_accounted(tmp_path / "in.responses.parquet", prompts)
    assert (summary.rows, summary.ok, summary.error) == (ROWS, ROWS, 0)
    assert_only_own_prompts_reached(emu, prompts)
    attempts = {r["prompt"]: r["attempts"] for r in rows}
    outcomes = emu.stats.outcomes
    if faults.token_max_uses or faults.token_concurrency or faults.stall_rate:
        # A 401 is answered before the prompt is counted; a stall may be given up early.
        assert all(1 <= emu.stats.prompts[p] <= attempts[p] for p in prompts)
    else:
        assert emu.stats.prompts == Counter(attempts), "a request was sent twice or not at all"
    # The fault really happened, and was survived.
    if faults.error_rate:
        assert outcomes["server_error"] > 0
    if faults.rate_limit_rate or faults.token_concurrency:
        assert outcomes["rate_limited"] > 0
    if faults.token_concurrency:
        assert emu.stats.max_inflight <= faults.token_concurrency
    if faults.cut_rate:
        assert outcomes["cut"] > 0
    if faults.garbage_rate:
        assert outcomes["garbage"] > 0 and summary.garbage_lines > 0
    if faults.stall_rate:
        assert stalled(emu) > 0 and max(attempts.values()) > 1
    if faults.token_max_uses:
        assert outcomes["unauthorized"] > 0
        assert emu.stats.token_requests >= ROWS // faults.token_max_uses
        assert_tokens_follow_expiries(emu, max_uses=faults.token_max_uses)
        assert summary.token_requests == emu.stats.token_requests
    else:
        assert emu.stats.token_requests == 1, "one token serves the whole run"
    tally(faults_injected=injected(emu), rows_checked=ROWS)


OUT_OF_ATTEMPTS = {
    "http_500": (Faults(error_rate=1.0), "TransientError", "HTTP 500", 500),
    "429": (Faults(rate_limit_rate=1.0, retry_after=0.01), "RateLimited", "HTTP 429", 429),
    "stream_cut": (Faults(cut_rate=1.0), "TransientError", "stream cut before it ended", 200),
    "slow_first_byte": (
        Faults(stall_rate=1.0, stall_seconds=5.0),
        "TransientError",
        f"no complete answer within {TIMEOUT:g} s (--timeout)",
        None,
    ),
}


@pytest.mark.parametrize("name", sorted(OUT_OF_ATTEMPTS))
async def test_a_row_that_runs_out_of_attempts_ends_error_with_its_reason(
    tmp_path: Path, name: str
):
    faults, error_type, reason, status = OUT_OF_ATTEMPTS[name]
    source, prompts = write_prompts(tmp_path, 5)
    emu = Emulator(faults=faults, record_prompts=True)
    with anyio.fail_after(30):
        async with emu:
            summary = await arun_job(
                spec(
                    source, emu, retry=RetryPolicy(attempts=2, wait_initial=0.01, wait_jitter=0.01)
                )
            )
    rows = assert_every_row_accounted(tmp_path / "in.responses.parquet", prompts, all_ok=False)
    assert summary.error == 5 and summary.errors_by_type == {error_type: 5}
    for row in rows:
        assert (row["status"], row["error_type"], row["attempts"]) == ("error", error_type, 2)
        assert reason in row["error"] and row["http_status"] == status
    assert emu.stats.prompts == Counter(dict.fromkeys(prompts, 2))


async def test_connection_refused_on_every_attempt_ends_error_with_its_reason(tmp_path: Path):
    source, prompts = write_prompts(tmp_path, 3)
    emu = Emulator()
    async with emu:
        pass  # a port that was just served, and is now closed
    summary = await arun_job(spec(source, emu, retry=RetryPolicy(attempts=2, wait_initial=0.01)))
    rows = assert_every_row_accounted(tmp_path / "in.responses.parquet", prompts, all_ok=False)
    assert summary.error == 3
    for row in rows:
        assert row["error_type"] == "ConnectionRefused" and row["attempts"] == 2
        assert "failed" in row["error"] and row["http_status"] is None


async def test_every_fault_at_once_with_a_restart_mid_run_still_ends_every_row_ok(
    tmp_path: Path,
):
    # 20% each of 500, 429, cut, garbage and stall: every attempt meets a fault, and only
    # the garbled streams carry an answer. On top: tokens expire every 25 uses, a token
    # may have 16 requests in flight (the run wants 32), and the server goes away and
    # comes back mid-run.
    faults = Faults(
        error_rate=0.2,
        rate_limit_rate=0.2,
        retry_after=0.05,
        cut_rate=0.2,
        garbage_rate=0.2,
        stall_rate=0.2,
        stall_seconds=2.0,
        token_max_uses=25,
        token_concurrency=16,
        seed=11,
    )
    rows = 120
    source, prompts = write_prompts(tmp_path, rows)
    emu = Emulator(latency=0.01, faults=faults, record_prompts=True)
    a_third_done = anyio.Event()
    restarted = anyio.Event()

    def on_progress(progress: Progress) -> None:
        if progress.done >= rows // 3:
            a_third_done.set()

    async def restart() -> None:
        await a_third_done.wait()
        url = emu.base_url
        await emu.stop()
        with pytest.raises(OSError):
            await anyio.connect_tcp("127.0.0.1", emu.port)
        await anyio.sleep(0.3)  # refused for a moment: the fault itself, not a wait for it
        assert await emu.start() == url
        restarted.set()

    with anyio.fail_after(120):
        async with emu, anyio.create_task_group() as tg:
            tg.start_soon(restart)
            quick = RetryPolicy(attempts=60, wait_initial=0.02, wait_max=0.1, wait_jitter=0.05)
            job = spec(source, emu, concurrency=32, timeout=0.15, retry=quick)
            summary = await arun_job(job, on_progress=on_progress)
            assert restarted.is_set(), "the run ended before the restart"
    assert_every_row_accounted(tmp_path / "in.responses.parquet", prompts)
    assert summary.ok == rows
    assert_only_own_prompts_reached(emu, prompts)
    outcomes = emu.stats.outcomes
    assert outcomes["ok"] == 0, "every answer came through a garbled stream"
    for outcome in ("server_error", "rate_limited", "cut", "garbage", "unauthorized"):
        assert outcomes[outcome] > 0, outcome
    assert stalled(emu) > 0
    assert_tokens_follow_expiries(emu, max_uses=faults.token_max_uses)
    assert emu.stats.token_requests < rows // 2
    tally(faults_injected=injected(emu) + 1, rows_checked=rows)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["restarted", "refused_for_a_while", "replaced_by_a_fresh_one"])
async def test_a_run_survives_the_server_going_away_and_coming_back_on_the_same_port(
    tmp_path: Path, how: str
):
    _, prompts = write_prompts(tmp_path, 300)
    emu = Emulator(latency=0.02, record_prompts=True)
    url = await emu.start()
    job = tmp_path / "job.toml"
    job.write_text(
        f'input = "in.csv"\nbase_url = "{url}"\nconcurrency = 8\n'
        "[retry]\nattempts = 40\nwait_initial = 0.05\nwait_max = 0.5\nwait_jitter = 0.05\n",
        encoding="utf-8",
    )
    servers = [emu]
    try:
        with anyio.fail_after(60):
            process = await anyio.open_process(
                child_command("run", "--job", job, "--no-progress", bootstrap=False),
                cwd=tmp_path,
                env=child_env(),
            )
            async with process:
                while emu.stats.chat_requests < 60:  # bounded by fail_after
                    assert process.returncode is None, "the run ended before the outage"
                    await anyio.sleep(0.005)
                before_outage = emu.stats.chat_requests
                await emu.stop()
                if how == "refused_for_a_while":
                    with pytest.raises(OSError):
                        await anyio.connect_tcp("127.0.0.1", emu.port)
                    await anyio.sleep(1.5)  # the outage itself
                if how == "replaced_by_a_fresh_one":
                    # A new server on the same port: it has never seen the run's token.
                    emu = Emulator(port=emu.port, latency=0.02, record_prompts=True)
                    servers.append(emu)
                assert await emu.start() == url
                stderr = await read_all(process.stderr)
                await process.wait()
    finally:
        for server in servers:
            await server.stop()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and "300 rows: 300 ok, 0 failed" in stderr
    rows = assert_every_row_accounted(tmp_path / "in.responses.parquet", prompts)
    assert servers[-1].stats.chat_requests > (0 if len(servers) > 1 else before_outage)
    if how == "refused_for_a_while":
        assert sum(r["attempts"] for r in rows) > len(rows), "no request failed in the outage"
    if how == "replaced_by_a_fresh_one":
        assert servers[-1].stats.outcomes["unauthorized"] > 0, "the old token was not refused"
    sent: Counter[str] = sum((Counter(s.stats.prompts) for s in servers), Counter())
    assert set(sent) == set(prompts)
    assert all(sent[r["prompt"]] <= r["attempts"] for r in rows)
    assert_tokens_follow_expiries(*servers)
    tokens = [s.stats.token_requests for s in servers]
    assert tokens == ([1, 1] if how == "replaced_by_a_fresh_one" else [1])
    tally(faults_injected=1, rows_checked=len(rows))
