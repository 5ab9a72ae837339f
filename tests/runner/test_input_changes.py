"""An input file that changes under a running job: never a prompt beside another's answer."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from aibatch.errors import InputChanged
from aibatch.io.inputs import open_input
from aibatch.jobs.spec import JobSpec, RetryPolicy
from aibatch.runner.engine import Progress, run_partition
from tests.fakes import ScriptedProvider, echo

FAST = RetryPolicy(attempts=2, wait_initial=0, wait_max=0, wait_jitter=0)
PROMPTS = [f"question number {i:02d}" for i in range(20)]


def write_csv(path: Path, prompts: list[str]) -> None:
    path.write_text("prompt\n" + "".join(f"{p}\n" for p in prompts), encoding="utf-8")


def rewrite_keeping_size_and_time(path: Path, prompts: list[str]) -> None:
    """Rewrite ``path`` in place, then put its modification time back (as cp -p does)."""
    before = path.stat()
    write_csv(path, prompts)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size


def once_when(
    condition: Callable[[Progress], bool], action: Callable[[], None]
) -> Callable[[Progress], None]:
    """A progress callback that runs ``action`` the first time ``condition`` holds."""
    done: list[bool] = []

    def on_progress(progress: Progress) -> None:
        if not done and condition(progress):
            done.append(True)
            action()

    return on_progress


def before_sending(progress: Progress) -> bool:
    return progress.done == 0


def after_sending(progress: Progress) -> bool:
    return progress.to_send > 0 and progress.done == progress.to_send


async def run(
    path: Path,
    out: Path,
    provider: ScriptedProvider,
    on_progress: Callable[[Progress], None],
    limit: int | None = None,
) -> None:
    spec = JobSpec(
        input=str(path), output=str(out), retry=FAST, concurrency=4, batch_rows=5, limit=limit
    )
    source = open_input(str(path), batch_rows=spec.batch_rows, limit=limit)
    async with provider:
        await run_partition(
            source, spec, provider, output=out, service="scripted", on_progress=on_progress
        )


async def rerun_answers(path: Path, out: Path) -> list[tuple[str, str]]:
    """Run again untouched; the (prompt, response) pairs of the output."""
    await run(path, out, ScriptedProvider(), lambda progress: None)
    table = pq.read_table(out)
    return list(
        zip(table.column("prompt").to_pylist(), table.column("response").to_pylist(), strict=True)
    )


async def test_rows_reordered_before_sending_stop_the_run_before_anything_is_sent(tmp_path):
    path, out = tmp_path / "in.csv", tmp_path / "out.parquet"
    write_csv(path, PROMPTS)
    provider = ScriptedProvider()
    reorder = once_when(before_sending, lambda: rewrite_keeping_size_and_time(path, PROMPTS[::-1]))

    with pytest.raises(InputChanged, match="changed while aibatch was running"):
        await run(path, out, provider, reorder)

    assert sum(provider.calls.values()) == 0
    assert not out.exists()


async def test_after_rows_were_reordered_the_rerun_pairs_every_prompt_with_its_answer(tmp_path):
    path, out = tmp_path / "in.csv", tmp_path / "out.parquet"
    write_csv(path, PROMPTS)
    reorder = once_when(before_sending, lambda: rewrite_keeping_size_and_time(path, PROMPTS[::-1]))
    with pytest.raises(InputChanged):
        await run(path, out, ScriptedProvider(), reorder)

    pairs = await rerun_answers(path, out)

    assert [prompt for prompt, _ in pairs] == PROMPTS[::-1]
    assert all(response == echo(prompt) for prompt, response in pairs)


async def test_rows_appended_before_sending_are_an_input_changed_error_not_a_crash(tmp_path):
    path, out = tmp_path / "in.csv", tmp_path / "out.parquet"
    write_csv(path, PROMPTS)
    append = once_when(before_sending, lambda: write_csv(path, [*PROMPTS, "one more", "two"]))

    with pytest.raises(InputChanged):
        await run(path, out, ScriptedProvider(), append)


async def test_rows_reordered_after_sending_leave_no_output_and_a_correct_rerun(tmp_path):
    path, out = tmp_path / "in.csv", tmp_path / "out.parquet"
    write_csv(path, PROMPTS)
    provider = ScriptedProvider()
    reorder = once_when(after_sending, lambda: rewrite_keeping_size_and_time(path, PROMPTS[::-1]))

    with pytest.raises(InputChanged):
        await run(path, out, provider, reorder)
    assert not out.exists()

    pairs = await rerun_answers(path, out)
    assert all(response == echo(prompt) for prompt, response in pairs)


async def test_rows_reordered_after_sending_a_limited_run_leave_no_output(tmp_path):
    path, out = tmp_path / "in.csv", tmp_path / "out.parquet"
    write_csv(path, PROMPTS)
    reorder = once_when(after_sending, lambda: rewrite_keeping_size_and_time(path, PROMPTS[::-1]))

    with pytest.raises(InputChanged, match="first rows changed"):
        await run(path, out, ScriptedProvider(), reorder, limit=15)
    assert not out.exists()


async def test_rows_removed_after_sending_are_an_input_changed_error(tmp_path):
    path, out = tmp_path / "in.csv", tmp_path / "out.parquet"
    write_csv(path, PROMPTS)
    shorten = once_when(after_sending, lambda: write_csv(path, PROMPTS[:7]))

    with pytest.raises(InputChanged):
        await run(path, out, ScriptedProvider(), shorten)
    assert not out.exists()


async def test_rows_finished_before_the_change_are_not_sent_again(tmp_path):
    path, out = tmp_path / "in.csv", tmp_path / "out.parquet"
    write_csv(path, PROMPTS)
    first = ScriptedProvider()
    append = once_when(after_sending, lambda: write_csv(path, [*PROMPTS, "a new row"]))
    with pytest.raises(InputChanged):
        await run(path, out, first, append)

    second = ScriptedProvider()
    await run(path, out, second, lambda progress: None)

    assert sum(first.calls.values()) == len(PROMPTS)
    assert dict(second.calls) == {"a new row": 1}
