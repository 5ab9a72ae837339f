"""The Dask driver: a job's partitions as Dask tasks, each run by the one engine.

The driver splits a single input file into partitions of ``partition_rows`` rows
(checking every row first, so a bad row stops the job before anything is sent), or takes
each file of a Parquet dataset as a partition. Each partition is one Dask task that
calls :func:`arun_job` (so :func:`run_partition`) in the worker's own event loop, with
its own provider session and token, its own output file ``part-NNNNN.parquet`` and its
own checkpoint beside it in the output folder. A task that Dask retries after its
worker died resumes from that checkpoint. A partition whose output already records the
same rows and request options is finished: no task is started for it.

``-c`` and ``--rps`` are the whole job's budget: each running partition gets an equal
share, ``c // slots`` and ``rps / slots``, where ``slots`` is the number of partitions
that can run at once (the cluster's worker threads, or fewer partitions). ``--max-cost``
is the whole job's too: each partition to run gets a share in proportion to its rows,
the shares never adding up to more, so no schedule can pass it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio

from ..errors import OutputError, UsageError
from ..io.inputs import PartitionFile, dataset_files, dataset_partitions, open_input
from ..io.inputs import stage_partitions as _stage
from ..io.output import concatenate, output_frame, output_schema, read_metadata
from ..jobs.cost import budget_shares
from ..jobs.spec import JobSpec
from .job import arun_frame_spec, arun_job, checked_provider, open_job_input
from .prompts import PromptBuilder
from .summary import Summary

log = logging.getLogger(__name__)

__all__ = ["run_dask", "run_dask_job", "run_dataset"]


def _dask() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise UsageError("--engine dask needs Dask: pip install 'aibatch[dask]'") from exc
    return distributed


def run_dataset(input: str | Path, output: str | Path | None = None, **options: Any) -> Summary:
    """Run a file or a Parquet dataset on a Dask cluster; write a Parquet dataset.

    Args:
        input: a file (split into partitions of ``partition_rows``), or a folder or glob
            of Parquet files (one partition each).
        output: the output folder [default: ``INPUT_STEM.responses``]; with
            ``single_file=True``, the one Parquet file.
        **options: any :class:`JobSpec` field; ``scheduler=`` an existing cluster's
            address or ``workers=N`` for a local cluster of N processes.

    Returns:
        The summary over every partition.
    """
    spec = JobSpec(
        input=str(input),
        output=None if output is None else str(output),
        engine="dask",
        **options,
    )
    return run_dask_job(spec)


def run_dask_job(spec: JobSpec) -> Summary:
    """Run ``spec`` (``engine="dask"``) partition by partition on a Dask cluster."""
    began = time.monotonic()
    distributed = _dask()
    provider = checked_provider(spec)
    target = spec.output_path()
    folder = target.with_name(target.name + ".parts") if spec.single_file else target
    if spec.scheduler and not folder.is_absolute():
        raise UsageError(
            f"with a remote --scheduler the output must be an absolute path on storage every"
            f" worker reaches, not {str(folder)!r}"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {folder}: {exc.strerror}") from exc
    partitions = _partitions(spec, folder, provider.get_model(spec.model))
    identity = _request_identity(spec)
    outputs = [folder / f"part-{p.index:05d}.parquet" for p in partitions]
    done = [
        _finished(out, p, identity, spec.retry_failed)
        for p, out in zip(partitions, outputs, strict=True)
    ]
    todo = [i for i, counts in enumerate(done) if counts is None]
    log.info(
        "%d partitions: %d finished, %d to run",
        len(partitions),
        len(partitions) - len(todo),
        len(todo),
    )
    results: list[dict[str, Any]] = []
    if todo:
        with _client(distributed, spec) as client:
            slots = max(1, min(len(todo), sum(client.nthreads().values())))
            share = spec.replace(
                engine="local",
                scheduler=None,
                workers=None,
                single_file=False,
                concurrency=max(1, spec.concurrency // slots),
                rps=spec.rps / slots if spec.rps else None,
            )
            specs = [share] * len(todo)
            if spec.max_cost is not None:
                weights = [partitions[i].rows for i in todo]
                specs = [share.replace(max_cost=c) for c in budget_shares(spec.max_cost, weights)]
            futures = client.map(
                run_partition_task,
                specs,
                [partitions[i] for i in todo],
                [str(outputs[i]) for i in todo],
                [identity] * len(todo),
                pure=False,
                retries=3,
            )
            results = client.gather(futures)
    summary = _aggregate(spec, target, [d for d in done if d is not None], results)
    if spec.single_file and not summary.interrupted:
        concatenate([str(o) for o in outputs], target, {"counts": summary.counts()})
    summary.wall_s = time.monotonic() - began
    return summary


def run_partition_task(
    spec: JobSpec, partition: PartitionFile, output: str, identity: str
) -> dict[str, Any]:
    """One Dask task: run one partition through the engine, in this worker's own loop."""
    source = open_input(
        partition.path,
        input_format="parquet",
        batch_rows=spec.batch_rows,
        offset=partition.offset,
        name=f"{spec.input} (partition {partition.index})",
    )
    metadata = {
        "partition": {
            "index": partition.index,
            "rows": partition.rows,
            "offset": partition.offset,
            "identity": identity,
            "digest": partition.digest,
        }
    }
    job = spec.replace(input=partition.path, output=output)
    run = functools.partial(arun_job, job, source=source, metadata=metadata)
    return anyio.run(run, backend="asyncio").to_dict()


def _partitions(spec: JobSpec, folder: Path, model: str) -> list[PartitionFile]:
    files = dataset_files(spec.input)
    if files is not None:
        partitions = dataset_partitions(files)
        first = open_input(files[0], input_format="parquet")
        builder = PromptBuilder(spec, model, spec.input)
        builder.check_columns(first.columns)
        output_schema(first.schema())
        return partitions
    source = open_job_input(spec)
    builder = PromptBuilder(spec, model, source.name)
    if source.columns:
        builder.check_columns(source.columns)

    def check(batch: Any) -> None:
        builder.ids(batch)
        builder.requests(batch)

    partitions = _stage(source, folder / "_input", spec.partition_rows, check)
    builder.check_columns(source.columns)
    output_schema(source.schema())
    return partitions


def _request_identity(spec: JobSpec) -> str:
    # The options that change what is asked: a partition run under others runs again.
    text = json.dumps(spec.request_options(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _finished(
    output: Path, partition: PartitionFile, identity: str, retry_failed: bool
) -> dict[str, Any] | None:
    """The counts of a partition whose output is complete for these rows and options.

    A partition with failed rows is not finished when failed rows are to be retried:
    its task runs again, reuses its checkpoint's answers and sends only those rows.
    """
    if not output.exists():
        return None
    try:
        metadata = read_metadata(output)
    except (OSError, ValueError):
        return None
    recorded = metadata.get("partition", {})
    if recorded.get("digest") != partition.digest or recorded.get("identity") != identity:
        return None
    counts: dict[str, Any] = metadata.get("counts", {})
    if retry_failed and counts.get("error", 0):
        return None
    if counts.get("unsent", 0):
        return None  # the budget stopped it: the rest is still to send
    return counts


def _aggregate(
    spec: JobSpec,
    target: Path,
    finished: Sequence[dict[str, Any]],
    ran: Sequence[dict[str, Any]],
) -> Summary:
    parts = [Summary.from_dict(result) for result in ran]
    for counts in finished:  # untouched partitions: every row reused from before
        part = Summary.from_dict(counts)
        part.reused = part.rows - part.skipped
        part.deduped = 0
        parts.append(part)
    summary = Summary.merge(parts, input=spec.input, output=str(target), provider=spec.provider)
    summary.concurrency = spec.concurrency  # the whole job's budget, shared by partitions
    summary.max_cost = spec.max_cost
    return summary


@contextmanager
def _client(distributed: Any, spec: JobSpec) -> Iterator[Any]:
    if spec.scheduler:
        with distributed.Client(spec.scheduler) as client:
            yield client
        return
    with (
        distributed.LocalCluster(
            n_workers=spec.workers or 2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.WARNING,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def run_dask(ddf: Any, **options: Any) -> Any:
    """Answer every row of a Dask DataFrame, lazily: one task per partition.

    Args:
        ddf: a ``dask.dataframe.DataFrame`` with a prompt column (or ``prompt_column=``).
        **options: any :class:`JobSpec` field; ``output=`` a folder where each partition
            keeps its Parquet file and checkpoint, so recomputing resumes.

    Returns:
        A lazy ``dask.dataframe.DataFrame``: the input columns and the result columns
        (its ``meta`` is the output schema). ``row`` counts within each partition.
    """
    spec = JobSpec(input="<dask>", **options)
    checked_provider(spec)
    if spec.max_cost is not None:  # the whole frame's budget: an equal share a partition
        spec = spec.replace(max_cost=budget_shares(spec.max_cost, [1] * ddf.npartitions)[0])
    if spec.output:
        Path(spec.output).mkdir(parents=True, exist_ok=True)
    return ddf.map_partitions(_frame_task, spec, meta=output_frame(ddf._meta))


def _frame_task(frame: Any, spec: JobSpec, partition_info: dict[str, Any] | None = None) -> Any:
    number = (partition_info or {}).get("number", 0)
    output = str(Path(spec.output) / f"part-{number:05d}.parquet") if spec.output else None
    job = dataclasses.replace(spec, output=output)
    return anyio.run(functools.partial(arun_frame_spec, frame, job), backend="asyncio")
