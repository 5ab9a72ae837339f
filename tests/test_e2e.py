"""Real subprocesses against a real emulator: kill -9, Ctrl-C, and two runs at once."""

from __future__ import annotations

import signal
import sys
from collections import Counter
from pathlib import Path

import anyio
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from anyio.abc import Process

from aibatch.jobs.checkpoint import checkpoint_dir
from aibatch.providers.emulator import Emulator, answer_for

pytestmark = pytest.mark.slow


def make_input(folder: Path, rows: int) -> Path:
    path = folder / "in.csv"
    lines = ["id,prompt"] + [f'r{i},"Prompt {i}, with a comma"' for i in range(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def command(source: Path, emu: Emulator, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "aibatch",
        "run",
        str(source),
        "--base-url",
        emu.base_url,
        "--no-progress",
        *extra,
    ]


def parts(output: Path) -> list[Path]:
    folder = checkpoint_dir(output) / "parts"
    return sorted(folder.glob("*.arrow")) if folder.exists() else []


def stored_rows(output: Path) -> list[int]:
    rows: list[int] = []
    for part in parts(output):
        with pa.OSFile(str(part), "rb") as handle:
            rows += pa.ipc.open_file(handle).read_all().column("row").to_pylist()
    return rows


async def wait_for_parts(output: Path, count: int, process: Process) -> None:
    """Wait (bounded) until the run under test has stored ``count`` checkpoint parts."""
    with anyio.fail_after(60):
        while len(parts(output)) < count:
            assert process.returncode is None, "the run ended before it was interrupted"
            await anyio.sleep(0.02)


def assert_complete(output: Path, rows: int) -> None:
    table = pq.read_table(output)
    assert table.column("row").to_pylist() == list(range(rows))
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(rows)]
    assert table.column("status").to_pylist() == ["ok"] * rows
    assert table.column("response").to_pylist() == [
        answer_for(p) for p in table.column("prompt").to_pylist()
    ]


async def test_a_run_killed_with_sigkill_resumes_without_resending_stored_rows(tmp_path: Path):
    rows = 3000
    source = make_input(tmp_path, rows)
    output = tmp_path / "in.responses.parquet"
    emu = Emulator(latency=0.01, record_prompts=True)
    async with emu:
        process = await anyio.open_process(command(source, emu, "-c", "16"), cwd=tmp_path)
        async with process:
            await wait_for_parts(output, 3, process)
            process.kill()
            await process.wait()
        assert process.returncode == -signal.SIGKILL
        stored = stored_rows(output)
        assert 0 < len(stored) < rows and len(set(stored)) == len(stored)
        before = Counter(emu.stats.prompts)
        rerun = await anyio.run_process(command(source, emu, "-c", "16"), cwd=tmp_path, check=False)
        assert rerun.returncode == 0, rerun.stderr.decode()
        resent = Counter(emu.stats.prompts) - before
    assert_complete(output, rows)
    prompts = pq.read_table(output).column("prompt").to_pylist()
    assert not [prompts[r] for r in stored if resent[prompts[r]]]
    assert sum(resent.values()) <= rows - len(stored) + 16 * 5  # the rest, plus retries


async def test_sigint_exits_130_after_a_checkpoint_and_the_rerun_completes(tmp_path: Path):
    rows = 2000
    source = make_input(tmp_path, rows)
    output = tmp_path / "in.responses.parquet"
    emu = Emulator(latency=0.01, record_prompts=True)
    async with emu:
        process = await anyio.open_process(command(source, emu, "-c", "8"), cwd=tmp_path)
        async with process:
            await wait_for_parts(output, 2, process)
            process.send_signal(signal.SIGINT)
            with anyio.fail_after(30):
                await process.wait()
            assert process.stderr is not None
            stderr = (await process.stderr.receive(65536)).decode()
        assert process.returncode == 130, stderr
        assert "run the same command again to resume" in stderr
        assert not output.exists()
        stored = stored_rows(output)
        before = Counter(emu.stats.prompts)
        rerun = await anyio.run_process(command(source, emu, "-c", "8"), cwd=tmp_path, check=False)
        assert rerun.returncode == 0, rerun.stderr.decode()
        resent = Counter(emu.stats.prompts) - before
    assert_complete(output, rows)
    prompts = pq.read_table(output).column("prompt").to_pylist()
    assert not [prompts[r] for r in stored if resent[prompts[r]]]


async def test_a_second_run_on_the_same_output_is_refused_while_the_first_runs(tmp_path: Path):
    source = make_input(tmp_path, 500)
    output = tmp_path / "in.responses.parquet"
    emu = Emulator(latency=0.05)
    async with emu:
        first = await anyio.open_process(command(source, emu, "-c", "2"), cwd=tmp_path)
        async with first:
            await wait_for_parts(output, 1, first)
            second = await anyio.run_process(command(source, emu), cwd=tmp_path, check=False)
            first.kill()
    assert second.returncode == 2
    message = second.stderr.decode()
    assert f"another aibatch run (pid {first.pid})" in message and "Traceback" not in message


async def test_aibatch_emulate_prints_its_url_serves_and_stops_on_sigint() -> None:
    import aiohttp

    process = await anyio.open_process(
        [sys.executable, "-m", "aibatch", "emulate", "--port", "0", "--record-prompts"]
    )
    async with process:
        assert process.stdout is not None
        with anyio.fail_after(30):
            line = (await process.stdout.receive(1024)).decode().strip()
        assert line.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as session, session.get(f"{line}/stats") as response:
            stats = await response.json()
        assert stats["token_requests"] == 0 and stats["chat_requests"] == 0
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(30):
            await process.wait()
    assert process.returncode == 0


async def test_a_second_sigint_exits_at_once_and_leaves_a_consistent_checkpoint(tmp_path: Path):
    from aibatch.jobs.checkpoint import Checkpoint
    from aibatch.providers.emulator import Faults

    source = make_input(tmp_path, 400)
    output = tmp_path / "in.responses.parquet"
    # Half the requests stall for a minute: in flight at the first SIGINT, they would hold
    # the run for the whole grace period; the second SIGINT must not wait for them.
    emu = Emulator(latency=0.01, faults=Faults(stall_rate=0.5, stall_seconds=60, seed=3))
    async with emu:
        process = await anyio.open_process(command(source, emu, "-c", "8"), cwd=tmp_path)
        async with process:
            await wait_for_parts(output, 1, process)
            process.send_signal(signal.SIGINT)
            assert process.stderr is not None
            with anyio.fail_after(10):
                seen = b""
                while b"again to stop now" not in seen:
                    seen += await process.stderr.receive(4096)
            process.send_signal(signal.SIGINT)
            # well inside the 5 s grace the first SIGINT granted, and the 60 s stall
            with anyio.fail_after(4):
                await process.wait()
    assert process.returncode == 130
    assert not output.exists()
    with Checkpoint(checkpoint_dir(output)) as checkpoint:
        assert checkpoint.stored_rows == len(stored_rows(output)) > 0
    assert not list((checkpoint_dir(output) / "parts").glob("*.tmp"))
    assert not list((checkpoint_dir(output) / "parts").glob("*.unreadable"))
