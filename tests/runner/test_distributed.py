"""The Dask driver on a real LocalCluster of worker processes, against a real emulator."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import aibatch
import aibatch.dask
from aibatch.jobs.checkpoint import checkpoint_dir
from aibatch.jobs.spec import RetryPolicy
from aibatch.providers.emulator import answer_for
from aibatch.providers.faults import Faults
from tests.conftest import emulator_in_thread

distributed = pytest.importorskip("distributed")
dask_dataframe = pytest.importorskip("dask.dataframe")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as local:
        yield local


@pytest.fixture
def client(cluster: object) -> Iterator[object]:
    with distributed.Client(cluster) as connected:
        yield connected


def write_csv(path: Path, rows: int) -> Path:
    lines = ["id,prompt", *(f'r{i},"Prompt {i}, tell me"' for i in range(rows))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tasks_run(client: object, run: object) -> int:
    """How many tasks the scheduler ran while ``run()`` ran."""
    with distributed.get_task_stream(client) as stream:
        run()  # type: ignore[operator]
    return len(stream.data)


def test_a_dask_run_writes_the_same_rows_as_a_single_machine_run(
    tmp_path: Path, cluster: object
) -> None:
    source = write_csv(tmp_path / "in.csv", 20_000)
    with emulator_in_thread() as emu:
        local = aibatch.run_file(
            source, tmp_path / "local.parquet", base_url=emu.base_url, concurrency=64
        )
        summary = aibatch.dask.run_dataset(
            source,
            tmp_path / "dask",
            base_url=emu.base_url,
            concurrency=64,
            partition_rows=2_500,
            scheduler=cluster.scheduler_address,  # type: ignore[attr-defined]
        )
    parts = sorted((tmp_path / "dask").glob("part-*.parquet"))
    assert len(parts) == 8
    columns = ["id", "prompt", "row", "sent_prompt", "response", "status"]
    dask_table = pa.concat_tables(pq.read_table(p, columns=columns) for p in parts)
    assert dask_table.equals(pq.read_table(tmp_path / "local.parquet", columns=columns))
    assert (summary.rows, summary.ok, summary.sent) == (20_000, 20_000, 20_000)
    assert local.ok == 20_000
    assert pq.read_schema(parts[0]).names == pq.read_schema(tmp_path / "local.parquet").names


def test_a_killed_worker_loses_no_row_and_checkpointed_rows_are_not_sent_again(
    tmp_path: Path, cluster: object, client: object
) -> None:
    source = write_csv(tmp_path / "in.csv", 8_000)
    output = tmp_path / "out"
    pids = client.run(os.getpid)  # type: ignore[attr-defined]
    victim = sorted(pids.values())[0]
    stored_before: list[int] = []
    with emulator_in_thread(latency=0.02) as emu:

        def kill_once_partitions_are_checkpointed() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                stored = _stored_rows(output)
                if len(stored) >= 500:
                    stored_before.extend(stored)
                    os.kill(victim, signal.SIGKILL)
                    return
                time.sleep(0.02)

        killer = threading.Thread(target=kill_once_partitions_are_checkpointed)
        killer.start()
        summary = aibatch.dask.run_dataset(
            source,
            output,
            base_url=emu.base_url,
            concurrency=16,
            partition_rows=1_000,
            scheduler=cluster.scheduler_address,  # type: ignore[attr-defined]
        )
        killer.join(timeout=60)
        sent = Counter(emu.stats.prompts)
    assert stored_before, "the worker was not killed mid-run"
    table = pa.concat_tables(pq.read_table(p) for p in sorted(output.glob("part-*.parquet")))
    assert table.column("row").to_pylist() == list(range(8_000))
    assert table.column("status").to_pylist() == ["ok"] * 8_000
    assert all(
        r == answer_for(p)
        for r, p in zip(
            table.column("response").to_pylist(), table.column("prompt").to_pylist(), strict=True
        )
    )
    prompts = table.column("prompt").to_pylist()
    assert [prompts[r] for r in stored_before if sent[prompts[r]] != 1] == []
    assert summary.rows == 8_000 and summary.ok == 8_000


def _stored_rows(output: Path) -> list[int]:
    rows: list[int] = []
    for parts in output.glob(".part-*.parquet.aibatch/parts"):
        offset = int(parts.parent.name.split("-")[1].split(".")[0]) * 1_000
        for part in sorted(parts.glob("*.arrow")):
            try:
                with pa.OSFile(str(part), "rb") as handle:
                    local = pa.ipc.open_file(handle).read_all().column("row").to_pylist()
            except (OSError, pa.ArrowException):
                continue
            rows += [offset + r for r in local]
    return rows


def test_a_rerun_of_a_finished_job_starts_no_task_and_sends_nothing(
    tmp_path: Path, cluster: object, client: object
) -> None:
    source = write_csv(tmp_path / "in.csv", 3_000)
    with emulator_in_thread() as emu:

        def run() -> aibatch.Summary:
            return aibatch.dask.run_dataset(
                source,
                tmp_path / "out",
                base_url=emu.base_url,
                partition_rows=1_000,
                scheduler=cluster.scheduler_address,  # type: ignore[attr-defined]
            )

        assert tasks_run(client, run) == 3
        sent = emu.stats.chat_requests
        assert tasks_run(client, run) == 0
        assert emu.stats.chat_requests == sent == 3_000


def test_a_rerun_sends_the_rows_that_failed_again_and_only_those(
    tmp_path: Path, cluster: object
) -> None:
    source = write_csv(tmp_path / "in.csv", 400)

    def run(emu: object, **options: object) -> aibatch.Summary:
        return aibatch.dask.run_dataset(
            source,
            tmp_path / "out",
            base_url=emu.base_url,  # type: ignore[attr-defined]
            partition_rows=100,
            scheduler=cluster.scheduler_address,  # type: ignore[attr-defined]
            **options,
        )

    with emulator_in_thread(faults=Faults(error_rate=0.2, seed=3)) as flaky:
        first = run(flaky, retry=RetryPolicy(attempts=1))
    assert first.error > 0
    with emulator_in_thread() as healthy:
        second = run(healthy)

    assert healthy.stats.chat_requests == first.error
    assert (second.ok, second.error) == (400, 0)


def test_appending_a_partition_to_a_dataset_sends_only_its_rows(
    tmp_path: Path, cluster: object, client: object
) -> None:
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    for index in range(3):
        prompts = [f"part {index} prompt {i}" for i in range(500)]
        pq.write_table(pa.table({"prompt": prompts}), dataset / f"p{index}.parquet")
    with emulator_in_thread() as emu:

        def run() -> aibatch.Summary:
            return aibatch.dask.run_dataset(
                dataset,
                tmp_path / "out",
                base_url=emu.base_url,
                scheduler=cluster.scheduler_address,  # type: ignore[attr-defined]
            )

        assert tasks_run(client, run) == 3
        pq.write_table(
            pa.table({"prompt": [f"new prompt {i}" for i in range(200)]}), dataset / "p3.parquet"
        )
        before = emu.stats.chat_requests
        assert tasks_run(client, run) == 1
        assert emu.stats.chat_requests - before == 200
    rows = pq.read_table(tmp_path / "out" / "part-00003.parquet").column("row").to_pylist()
    assert rows == list(range(1_500, 1_700))
    assert checkpoint_dir(tmp_path / "out" / "part-00003.parquet").exists()


def test_run_dask_answers_a_dask_dataframe_lazily(tmp_path: Path, client: object) -> None:
    frame = pd.DataFrame({"prompt": [f"question {i}" for i in range(40)], "n": range(40)})
    ddf = dask_dataframe.from_pandas(frame, npartitions=4)
    with emulator_in_thread() as emu:
        lazy = aibatch.dask.run_dask(ddf, base_url=emu.base_url, output=str(tmp_path / "out"))
        assert emu.stats.chat_requests == 0  # nothing runs until computed
        assert list(lazy.columns[:3]) == ["prompt", "n", "row"]
        result = lazy.compute().reset_index(drop=True)
    assert list(result["n"]) == list(range(40))
    assert list(result["response"]) == [answer_for(p) for p in frame["prompt"]]
    assert set(result["status"]) == {"ok"}
    assert len(list((tmp_path / "out").glob("part-*.parquet"))) == 4


def test_run_dask_keeps_the_partitions_index_and_divisions(client: object) -> None:
    frame = pd.DataFrame(
        {"prompt": [f"question {i}" for i in range(40)]},
        index=pd.Index(range(0, 80, 2), name="ticket"),
    )
    ddf = dask_dataframe.from_pandas(frame, npartitions=4)
    with emulator_in_thread() as emu:
        lazy = aibatch.dask.run_dask(ddf, base_url=emu.base_url)
        result = lazy.compute()

    assert lazy.divisions == ddf.divisions
    pd.testing.assert_index_equal(result.index, frame.index)
    assert list(result["response"]) == [answer_for(p) for p in frame["prompt"]]


def test_dask_options_without_the_dask_engine_are_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(aibatch.UsageError, match="--engine dask"):
        aibatch.run_file(tmp_path / "in.csv", workers=2)


def test_a_relative_output_with_a_remote_scheduler_is_refused(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "in.csv", 3)
    with pytest.raises(aibatch.UsageError, match="absolute path"):
        aibatch.dask.run_dataset(source, "relative-out", scheduler="tcp://127.0.0.1:1")


def test_a_bad_row_stops_the_job_before_any_partition_runs(tmp_path: Path, cluster: object) -> None:
    source = tmp_path / "in.csv"
    source.write_text("prompt,x\nfine,1\nbroken,2,3\n", encoding="utf-8")
    with emulator_in_thread() as emu, pytest.raises(aibatch.InputError, match="line 3"):
        aibatch.dask.run_dataset(
            source,
            tmp_path / "out",
            base_url=emu.base_url,
            partition_rows=1,
            scheduler=cluster.scheduler_address,  # type: ignore[attr-defined]
        )
    assert emu.stats.chat_requests == 0


def test_the_cli_runs_a_local_cluster_and_joins_a_single_file(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from aibatch.cli import main

    source = write_csv(tmp_path / "in.csv", 1_000)
    with emulator_in_thread() as emu:
        result = CliRunner().invoke(
            main,
            [
                "run",
                str(source),
                "--engine",
                "dask",
                "--workers",
                "1",
                "--partition-rows",
                "300",
                "--single-file",
                "-o",
                str(tmp_path / "all.parquet"),
                "--base-url",
                emu.base_url,
                "-q",
            ],
            catch_exceptions=False,
        )
    assert result.exit_code == 0, result.stderr
    table = pq.read_table(tmp_path / "all.parquet")
    assert table.column("row").to_pylist() == list(range(1_000))
    assert len(list((tmp_path / "all.parquet.parts").glob("part-*.parquet"))) == 4
