"""Crashes: SIGKILL at seeded moments, SIGTERM and SIGINT, and a disk that fills up.

Each run is a real child process against an emulator in a thread of the test process;
the re-run goes through the CLI in-process. The emulator's per-prompt counters prove
which rows were sent again.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from aibatch.io.output import read_metadata
from aibatch.jobs.checkpoint import checkpoint_dir
from aibatch.providers.emulator import Emulator
from tests.conftest import emulator_in_thread

from .checks import (
    assert_every_row_accounted,
    invoke,
    part_files,
    stored_rows,
    tally,
    write_prompts,
)
from .crashpoints import CrashPoint, child, wait_until

pytestmark = pytest.mark.slow

ROWS = 400
PHASES = ("reading", "mid-flight", "checkpoint", "final")
SEEDS = range(12)


@dataclass(frozen=True, slots=True)
class KillPlan:
    """When seed ``seed`` kills the run: at a crash point, or from outside mid-flight."""

    seed: int
    phase: str
    point: CrashPoint | None = None
    after_requests: int = 0
    delay: float = 0.0


def kill_plan(seed: int) -> KillPlan:
    """Seed ``seed``'s kill: the phase cycles with the seed, the moment within it is drawn."""
    rng = random.Random(seed)
    phase = PHASES[seed % len(PHASES)]
    turn = seed // len(PHASES)
    if phase == "reading":
        return KillPlan(seed, phase, CrashPoint("reading", rng.randint(2, ROWS)))
    if phase == "mid-flight":
        return KillPlan(seed, phase, None, rng.randint(1, ROWS // 3), rng.uniform(0.0, 0.05))
    if phase == "checkpoint":
        where = ("part-fsync", "part-replace", "parts-dir-fsync")[turn % 3]
        when = "after" if turn % 2 else "before"
        return KillPlan(seed, phase, CrashPoint(where, rng.randint(1, 3), when))
    where, when = (("output-fsync", "before"), ("output-replace", "before"))[turn % 2]
    if turn % 3 == 2:
        where, when = "output-replace", "after"
    return KillPlan(seed, phase, CrashPoint(where, 1, when))


def plan_id(seed: int) -> str:
    plan = kill_plan(seed)
    if plan.point is None:
        return f"seed{seed}-{plan.phase}-after-{plan.after_requests}-requests"
    return f"seed{seed}-{plan.phase}-{plan.point.when}-{plan.point.where}-{plan.point.nth}"


def run_args(source: Path, emu: Emulator, *extra: object) -> tuple[object, ...]:
    return ("run", source, "--base-url", emu.base_url, "--no-progress", "-c", 8, *extra)


def assert_killed_in_phase(
    plan: KillPlan, marker: Path, output: Path, emu: Emulator, stored: list[int]
) -> None:
    """Evidence that the kill landed in the planned phase."""
    point = plan.point
    if point is not None:
        assert marker.read_text() == f"{point.where}:{point.nth}:{point.when}"
    assert len(stored) == len(set(stored)), "one run stored a row twice"
    if plan.phase == "reading":
        assert emu.stats.chat_requests == 0 and emu.stats.token_requests == 0
        assert not stored
    elif plan.phase == "mid-flight":
        assert emu.stats.chat_requests >= plan.after_requests
        assert len(stored) < ROWS
    elif plan.phase == "checkpoint":
        assert point is not None
        renamed = point.where == "parts-dir-fsync" or (
            point.where == "part-replace" and point.when == "after"
        )
        assert len(part_files(output)) == point.nth - (not renamed)
    else:
        assert point is not None
        assert sorted(stored) == list(range(ROWS)), "the final write began before every row"
        assert output.exists() == (point.where == "output-replace" and point.when == "after")


def test_the_kill_plan_covers_every_phase_with_at_least_ten_seeds():
    phases = Counter(kill_plan(seed).phase for seed in SEEDS)
    assert len(SEEDS) >= 10
    assert set(phases) == set(PHASES) and min(phases.values()) >= 2


@pytest.mark.parametrize("seed", SEEDS, ids=plan_id)
def test_a_run_killed_at_a_seeded_moment_resumes_without_resending_checkpointed_rows(
    tmp_path: Path, seed: int
):
    plan = kill_plan(seed)
    source, prompts = write_prompts(tmp_path, ROWS)
    output = tmp_path / "in.responses.parquet"
    marker = tmp_path / "killed-at"
    with emulator_in_thread(latency=0.02) as emu:
        args = run_args(source, emu)
        with child(args, tmp_path, plan.point, marker) as process:
            if plan.point is None:
                wait_until(lambda: emu.stats.chat_requests >= plan.after_requests, process)
                time.sleep(plan.delay)  # the seeded moment after the k-th request, not a sync
                assert process.poll() is None
                process.kill()
            _, stderr = process.communicate(timeout=60)
        assert process.returncode == -signal.SIGKILL, stderr.decode()
        stored = stored_rows(output)
        assert_killed_in_phase(plan, marker, output, emu, stored)
        before = Counter(emu.stats.prompts)
        rerun = invoke(*args)
        assert rerun.exit_code == 0, rerun.stderr
        resent = Counter(emu.stats.prompts) - before
    assert_every_row_accounted(output, prompts)
    assert read_metadata(output)["counts"] == {
        "rows": ROWS,
        "ok": ROWS,
        "error": 0,
        "skipped": 0,
        "unsent": 0,
        "reused": len(stored),
        "deduped": 0,
    }
    assert not [row for row in stored if resent[prompts[row]]], "checkpointed rows sent again"
    assert sum(resent.values()) == ROWS - len(stored) and max(resent.values(), default=1) == 1
    assert not list((checkpoint_dir(output) / "parts").glob("*.tmp"))
    tally(runs_killed=1, rows_checked=ROWS)


def test_a_run_killed_during_the_final_write_leaves_no_stale_temp_file_after_the_rerun(
    tmp_path: Path,
):
    source, _ = write_prompts(tmp_path, 50)
    output = tmp_path / "in.responses.parquet"
    with emulator_in_thread() as emu:
        args = run_args(source, emu)
        with child(args, tmp_path, CrashPoint("output-replace")) as process:
            process.communicate(timeout=60)
        assert process.returncode == -signal.SIGKILL
        assert invoke(*args).exit_code == 0
    assert output.exists()
    assert not list(tmp_path.glob(f".{output.name}.*.tmp"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_exits_130_after_a_checkpoint_and_the_rerun_resumes(
    tmp_path: Path, signum: signal.Signals
):
    source, prompts = write_prompts(tmp_path, ROWS)
    output = tmp_path / "in.responses.parquet"
    with emulator_in_thread(latency=0.02) as emu:
        args = run_args(source, emu)
        with child(args, tmp_path, None) as process:
            wait_until(lambda: part_files(output), process)
            process.send_signal(signum)
            _, raw = process.communicate(timeout=30)
        stderr = raw.decode()
        assert process.returncode == 130, stderr
        assert f"aibatch: {signum.name}: finishing requests in flight" in stderr
        assert "run the same command again to resume" in stderr and "Traceback" not in stderr
        assert not output.exists()
        stored = stored_rows(output)
        sent = Counter(emu.stats.prompts)
        # Every request that went out was answered and stored before the exit.
        assert {prompts[row] for row in stored} == set(sent) and len(stored) < ROWS
        rerun = invoke(*args)
        assert rerun.exit_code == 0, rerun.stderr
        resent = Counter(emu.stats.prompts) - sent
    assert_every_row_accounted(output, prompts)
    assert not [row for row in stored if resent[prompts[row]]]
    assert sum(resent.values()) == ROWS - len(stored)
    tally(runs_killed=1, rows_checked=ROWS)


@pytest.mark.parametrize(
    ("where", "nth"), [("part-fsync", 3), ("output-fsync", 1)], ids=["checkpoint", "final_write"]
)
def test_a_disk_that_fills_up_gives_a_clear_error_keeps_the_checkpoint_and_a_rerun_completes(
    tmp_path: Path, where: str, nth: int
):
    source, prompts = write_prompts(tmp_path, ROWS)
    output = tmp_path / "in.responses.parquet"
    with emulator_in_thread(latency=0.02) as emu:
        args = run_args(source, emu)
        with child(args, tmp_path, CrashPoint(where, nth, action="enospc")) as process:
            _, raw = process.communicate(timeout=60)
        stderr = raw.decode()
        assert process.returncode == 2, stderr
        assert "Traceback" not in stderr
        last = stderr.splitlines()[-1]
        assert last.startswith("aibatch: error: cannot write ") and "No space left" in last
        stored = stored_rows(output)  # every part reads back
        assert len(stored) == len(set(stored))
        if where == "part-fsync":
            assert "rows stored so far are safe, re-run the same command" in last
            assert len(part_files(output)) == nth - 1
        else:
            assert sorted(stored) == list(range(ROWS))
        assert not output.exists()
        assert not [p.name for p in tmp_path.rglob("*.tmp")], "a temp file was left behind"
        before = Counter(emu.stats.prompts)
        rerun = invoke(*args)
        assert rerun.exit_code == 0, rerun.stderr
        resent = Counter(emu.stats.prompts) - before
    assert_every_row_accounted(output, prompts)
    assert not [row for row in stored if resent[prompts[row]]]
    assert sum(resent.values()) == ROWS - len(stored)
    tally(disk_full_runs=1, rows_checked=ROWS)


def test_an_emulate_run_stopped_by_a_full_disk_prints_no_traceback(tmp_path: Path):
    source, _ = write_prompts(tmp_path, 3000)
    point = CrashPoint("part-fsync", 2, action="enospc")
    args = ("run", source, "--emulate", "--no-progress", "-c", 32)
    with child(args, tmp_path, point) as process:
        _, raw = process.communicate(timeout=60)
    stderr = raw.decode()
    assert process.returncode == 2 and "No space left on device" in stderr
    assert "Traceback" not in stderr, stderr


def test_a_real_tmpfs_that_fills_up_keeps_the_checkpoint_and_a_rerun_completes_once_freed(
    tmp_path: Path,
):
    small = tmp_path / "small"
    small.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
        capture_output=True,
        check=False,
    )
    if mount.returncode:
        pytest.skip("cannot mount a tmpfs here; the injected ENOSPC tests cover a full disk")
    try:
        source = tmp_path / "in.csv"
        prompts = [f"{i} " + "x" * 1000 for i in range(3000)]
        source.write_text("prompt\n" + "".join(p + "\n" for p in prompts), encoding="utf-8")
        output = small / "out.parquet"
        with emulator_in_thread() as emu:
            args = ("run", source, "-o", output, "--base-url", emu.base_url, "--no-progress")
            full = invoke(*args)
            assert full.exit_code == 2, full.stderr
            last = full.stderr.splitlines()[-1]
            assert last.startswith("aibatch: error: cannot write checkpoint ")
            assert "No space left on device" in last
            stored = stored_rows(output)
            assert 0 < len(stored) < len(prompts)
            subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
            before = Counter(emu.stats.prompts)
            rerun = invoke(*args)
            assert rerun.exit_code == 0, rerun.stderr
            resent = Counter(emu.stats.prompts) - before
        assert_every_row_accounted(output, prompts)
        assert not [row for row in stored if resent[prompts[row]]]
        tally(disk_full_runs=1, rows_checked=len(prompts))
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True, check=False)
