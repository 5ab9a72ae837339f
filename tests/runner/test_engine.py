"""The engine against a scripted provider: order, retries, dedupe, resume, stop."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import anyio
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from anyio import wait_all_tasks_blocked

from aibatch.errors import OutputError, PermanentError, TransientError
from aibatch.io.inputs import TableSource
from aibatch.io.output import read_metadata
from aibatch.jobs.spec import JobSpec, RetryPolicy
from aibatch.runner.engine import run_partition
from tests.fakes import ScriptedProvider, echo

FAST = RetryPolicy(attempts=3, wait_initial=0, wait_max=0, wait_jitter=0)


def source(prompts: list[str | None], **columns: list[object]) -> TableSource:
    return TableSource(pa.table({"prompt": prompts, **columns}), batch_rows=7)


async def run(provider: ScriptedProvider, src: TableSource, out: Path, **options: object):
    spec = JobSpec(input="<table>", output=str(out), retry=FAST, **options)  # type: ignore[arg-type]
    async with provider:
        return await run_partition(src, spec, provider, output=out, service="scripted")


async def test_every_row_is_answered_in_input_order(tmp_path: Path) -> None:
    prompts = [f"question {i}" for i in range(50)]
    summary = await run(
        ScriptedProvider(), source(prompts), tmp_path / "out.parquet", concurrency=8
    )
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("row").to_pylist() == list(range(50))
    assert table.column("response").to_pylist() == [echo(p) for p in prompts]
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert (summary.rows, summary.ok, summary.sent, summary.requests) == (50, 50, 50, 50)
    assert read_metadata(tmp_path / "out.parquet")["counts"]["ok"] == 50


async def test_a_transient_failure_is_retried_and_counted(tmp_path: Path) -> None:
    provider = ScriptedProvider({"a": [TransientError("HTTP 500", http_status=500), "fine"]})
    await run(provider, source(["a", "b"]), tmp_path / "out.parquet")
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert rows[0]["response"] == "fine" and rows[0]["attempts"] == 2
    assert rows[0]["status"] == "ok" and rows[0]["http_status"] == 200
    assert provider.calls["a"] == 2


async def test_a_permanent_error_becomes_an_error_row_and_the_run_goes_on(tmp_path: Path) -> None:
    provider = ScriptedProvider({"bad": [PermanentError("HTTP 400: no", http_status=400)]})
    summary = await run(provider, source(["ok 1", "bad", "ok 2"]), tmp_path / "out.parquet")
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert rows[1]["error_type"] == "PermanentError" and rows[1]["http_status"] == 400
    assert rows[1]["attempts"] == 1 and rows[1]["response"] is None
    assert summary.error == 1 and summary.errors_by_type == {"PermanentError": 1}


async def test_a_row_that_keeps_failing_ends_with_its_last_error(tmp_path: Path) -> None:
    provider = ScriptedProvider(
        {"x": [TransientError("cut 1"), TransientError("cut 2"), TransientError("cut 3")]}
    )
    await run(provider, source(["x"]), tmp_path / "out.parquet")
    (row,) = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert (row["status"], row["error"], row["attempts"]) == ("error", "cut 3", 3)


async def test_an_empty_answer_is_never_ok(tmp_path: Path) -> None:
    provider = ScriptedProvider({"silent": [""]})
    await run(provider, source(["silent"]), tmp_path / "out.parquet")
    (row,) = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert row["status"] == "error" and row["error_type"] == "TransientError"
    assert "empty answer" in row["error"] and provider.calls["silent"] == 3


async def test_empty_prompts_are_skipped_and_not_sent(tmp_path: Path) -> None:
    provider = ScriptedProvider()
    summary = await run(provider, source(["a", "", None, "  \n", "b"]), tmp_path / "o.parquet")
    rows = pq.read_table(tmp_path / "o.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["ok", "skipped", "skipped", "skipped", "ok"]
    assert rows[1]["sent_prompt"] is None and rows[1]["attempts"] == 0
    assert sum(provider.calls.values()) == 2 and summary.skipped == 3


async def test_requests_in_flight_never_exceed_the_concurrency(tmp_path: Path) -> None:
    gate = anyio.Event()
    provider = ScriptedProvider(gate=gate, wait_for=4)
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            partial(
                run,
                provider,
                source([f"p{i}" for i in range(40)]),
                tmp_path / "o.parquet",
                concurrency=4,
            )
        )
        with anyio.fail_after(10):
            await provider.started.wait()
        await wait_all_tasks_blocked()
        assert provider.inflight == 4
        gate.set()
    assert provider.max_inflight == 4


async def test_identical_requests_are_sent_once_and_copied(tmp_path: Path) -> None:
    provider = ScriptedProvider()
    summary = await run(provider, source(["same", "other", "same", "same"]), tmp_path / "o.parquet")
    rows = pq.read_table(tmp_path / "o.parquet").to_pylist()
    assert [r["response"] for r in rows] == [echo("same"), echo("other")] + [echo("same")] * 2
    assert provider.calls["same"] == 1 and summary.deduped == 2


async def test_no_dedupe_sends_every_row(tmp_path: Path) -> None:
    provider = ScriptedProvider()
    summary = await run(provider, source(["same"] * 3), tmp_path / "o.parquet", dedupe=False)
    assert provider.calls["same"] == 3 and summary.deduped == 0


async def test_a_rerun_reuses_every_stored_row_and_sends_nothing(tmp_path: Path) -> None:
    out = tmp_path / "o.parquet"
    prompts = [f"p{i}" for i in range(30)]
    await run(ScriptedProvider(), source(prompts), out)
    first = pq.read_table(out)
    again = ScriptedProvider()
    summary = await run(again, source(prompts), out)
    assert sum(again.calls.values()) == 0 and summary.reused == 30
    assert (
        pq.read_table(out)
        .select(["prompt", "response", "status"])
        .equals(first.select(["prompt", "response", "status"]))
    )


async def test_only_appended_and_changed_rows_are_sent_on_a_rerun(tmp_path: Path) -> None:
    out = tmp_path / "o.parquet"
    await run(ScriptedProvider(), source(["a", "b", "c"]), out)
    again = ScriptedProvider()
    await run(again, source(["a", "B changed", "c", "d new"]), out)
    assert dict(again.calls) == {"B changed": 1, "d new": 1}


async def test_failed_rows_are_sent_again_unless_told_not_to(tmp_path: Path) -> None:
    out = tmp_path / "o.parquet"
    await run(ScriptedProvider({"x": [PermanentError("no")]}), source(["x", "y"]), out)
    kept = ScriptedProvider()
    await run(kept, source(["x", "y"]), out, retry_failed=False)
    assert sum(kept.calls.values()) == 0
    retried = ScriptedProvider()
    summary = await run(retried, source(["x", "y"]), out)
    assert dict(retried.calls) == {"x": 1} and summary.ok == 2


async def test_a_changed_model_or_system_message_is_a_new_request(tmp_path: Path) -> None:
    out = tmp_path / "o.parquet"
    await run(ScriptedProvider(), source(["a"]), out)
    other_model = ScriptedProvider()
    await run(other_model, source(["a"]), out, model="fake-2")
    assert other_model.calls["a"] == 1
    with_system = ScriptedProvider()
    await run(with_system, source(["a"]), out, system="Be brief.")
    assert with_system.calls["System: Be brief.\nUser: a\nAssistant:"] == 1


async def test_a_stopped_run_keeps_finished_rows_and_the_rerun_sends_the_rest(
    tmp_path: Path,
) -> None:
    out = tmp_path / "o.parquet"
    prompts = [f"p{i}" for i in range(20)]
    gate = anyio.Event()
    stop = anyio.Event()

    class Stalling(ScriptedProvider):
        async def create_async_generator(self, model, messages, proxy=None, **kwargs):  # type: ignore[no-untyped-def]
            if messages[-1]["content"] not in ("p0", "p1"):
                stop.set()
                await gate.wait()
            async for piece in super().create_async_generator(model, messages, proxy, **kwargs):
                yield piece

    provider = Stalling()
    spec = JobSpec(input="<t>", output=str(out), retry=FAST, concurrency=1, grace=0)
    async with provider:
        summary = await run_partition(
            source(prompts), spec, provider, output=out, service="scripted", stop=stop
        )
    assert summary.interrupted and not out.exists()
    again = ScriptedProvider()
    summary = await run(again, source(prompts), out, concurrency=1)
    assert not summary.interrupted and summary.reused == 2
    assert set(again.calls) == set(prompts[2:])
    assert pq.read_table(out).column("status").to_pylist() == ["ok"] * 20


async def test_an_input_column_named_like_a_result_column_is_refused_before_sending(
    tmp_path: Path,
) -> None:
    provider = ScriptedProvider()
    with pytest.raises(OutputError, match="'response'"):
        await run(provider, source(["a"], response=["x"]), tmp_path / "o.parquet")
    assert not provider.calls


async def test_unknown_columns_in_a_template_are_refused_before_sending(tmp_path: Path) -> None:
    from aibatch.errors import InputError

    provider = ScriptedProvider()
    with pytest.raises(InputError, match=r"no column 'nope'.*prompt"):
        await run(provider, source(["a"]), tmp_path / "o.parquet", template="{nope}")
    assert not provider.calls
