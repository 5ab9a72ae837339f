"""Measurements: one client run against an emulator, and side-by-side comparisons.

A :class:`Config` names what the emulator serves and what the client is asked to do. A
:class:`Run` is one client process's figures: wall time, CPU, peak RSS, the emulator's
CPU and request counters over the same span. :meth:`Bench.compare` runs several clients
against one emulator process, alternating them, ``reps`` times, and keeps every run so
that a later section asking for the same figures reuses them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .procs import (
    EmulatorProcess,
    ProcessResult,
    listen_overflows,
    run_measured,
    tcp_opens,
    venv_command,
)
from .prompts import write_csv, write_parquet

REPO = Path(__file__).resolve().parent.parent
CHUNKS = 8
AIBATCH, GPT4FREE, BASELINE = "aibatch", "gpt4free", "baseline"
CLIENTS = (AIBATCH, GPT4FREE, BASELINE)
# the official SDKs' async clients, against the emulator speaking their protocol
ANTHROPIC_SDK, OPENAI_SDK = "anthropic-sdk", "openai-sdk"
SDK_CLIENTS = {"anthropic": ANTHROPIC_SDK, "openai": OPENAI_SDK}
CLIENT_MODULES = {
    GPT4FREE: "benchmarks.g4f_client",
    BASELINE: "benchmarks.baseline",
    ANTHROPIC_SDK: "benchmarks.anthropic_sdk",
    OPENAI_SDK: "benchmarks.openai_sdk",
}
# start-up alone: `aibatch --help`, and the floor of a click program
HELP, CLICK = "aibatch --help", "import click"
STARTUP_COMMANDS = {HELP: ("aibatch", "--help"), CLICK: ("python", "-c", "import click")}
# 10% of chat requests fail: HTTP 500, 429 with Retry-After: 1, or a stream cut mid-way.
MIXED_FAULTS = {
    "error-rate": 0.034,
    "rate-limit-rate": 0.033,
    "cut-rate": 0.033,
    "retry-after": 1.0,
}


@dataclass(frozen=True, slots=True)
class Config:
    """What the emulator serves and what a client run is asked to do."""

    concurrency: int
    prompts: int
    latency: float = 0.05
    faults: tuple[tuple[str, float], ...] = ()
    input_format: str = "csv"  # of aibatch's input; the other clients take a count
    extra: tuple[str, ...] = ()  # more `aibatch run` options (--adaptive, --engine dask, ...)
    protocol: str = "aichatonline"  # the emulator's (`--protocol`); aibatch's --provider

    @property
    def bound(self) -> float:
        """Rows per second if every request took exactly the latency (concurrency / latency)."""
        return self.concurrency / self.latency if self.latency else float("inf")

    def describe(self) -> str:
        faults = " + faults" if self.faults else ""
        extra = f" {' '.join(self.extra)}" if self.extra else ""
        protocol = f"{self.protocol}, " if self.protocol != "aichatonline" else ""
        return (
            f"{protocol}c={self.concurrency}{extra}, {self.prompts:,} prompts, "
            f"{self.latency * 1000:g} ms{faults}"
        )

    @property
    def emulator_key(self) -> tuple[float, tuple[tuple[str, float], ...], str]:
        """What the emulator process serves: configs with the same key share one."""
        return (self.latency, self.faults, self.protocol)


@dataclass(slots=True)
class Run:
    """One client process's figures."""

    client: str
    config: Config
    process: ProcessResult | None = None
    emulator_cpu_s: float = 0.0
    token_requests: int = 0
    chat_requests: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    connections: int = 0
    listen_overflows: int = 0
    ok: int = 0
    failed: int = 0
    reused: int = 0
    error: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def good(self) -> bool:
        return self.error is None and self.process is not None

    @property
    def wall_s(self) -> float:
        return self.process.wall_s if self.process else float("nan")

    @property
    def rows_per_s(self) -> float:
        return self.config.prompts / self.wall_s

    @property
    def cpu_s(self) -> float:
        return self.process.cpu_s if self.process else float("nan")

    @property
    def cpu_per_prompt(self) -> float:
        return self.cpu_s / max(self.config.prompts, 1)

    @property
    def requests_per_prompt(self) -> float:
        return (self.token_requests + self.chat_requests) / max(self.config.prompts, 1)

    @property
    def client_cores(self) -> float:
        return self.cpu_s / self.wall_s

    @property
    def emulator_cores(self) -> float:
        return self.emulator_cpu_s / self.wall_s

    @property
    def peak_rss_mb(self) -> float:
        return self.process.peak_rss_kb / 1024 if self.process else float("nan")


def median(values: Iterable[float]) -> float:
    data = [v for v in values if v == v]  # drop NaN
    return statistics.median(data) if data else float("nan")


class Bench:
    """The state of one ``python -m benchmarks`` invocation: scratch folder, runs, log."""

    def __init__(self, *, reps: int, log: Callable[[str], None]) -> None:
        self.reps = reps
        self.log = log
        self.workdir = Path(tempfile.mkdtemp(prefix="aibatch-bench-"))
        # Failed runs' folders outlive the scratch folder (created on the first failure).
        self.failed_dir = self.workdir.with_name(self.workdir.name + "-failed")
        self.runs: dict[tuple[str, Config], list[Run]] = {}
        self.failures: list[Run] = []
        self.keep: set[Config] = set()  # configs whose finished job a later section re-runs
        self.finished: dict[Config, Path] = {}
        self.reruns: list[Run] = []  # the resume section's re-runs of a finished job
        self._serial = 0
        # aibatch keeps the price table's answers in a cache folder: this run's own, so
        # that no figure depends on what an earlier run left (the first run fills it,
        # as a cron job's first run does)
        os.environ["AIBATCH_CACHE_DIR"] = str(self.workdir / "cache")

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    # inputs

    def input_file(self, prompts: int, input_format: str = "csv") -> Path:
        csv_path = write_csv(self.workdir / f"prompts-{prompts}.csv", prompts)
        if input_format == "csv":
            return csv_path
        return write_parquet(self.workdir / f"prompts-{prompts}.parquet", csv_path)

    def run_dir(self, name: str) -> Path:
        self._serial += 1
        path = self.workdir / f"{self._serial:03d}-{name}"
        path.mkdir()
        return path

    # emulator

    def emulator(self, config: Config) -> EmulatorProcess:
        return EmulatorProcess(
            latency=config.latency,
            chunks=CHUNKS,
            faults=dict(config.faults),
            protocol=config.protocol,
            log=self.workdir / "emulator.log",
        )

    # one run

    def command(self, client: str, config: Config, url: str, run_dir: Path) -> list[str]:
        if client == AIBATCH:
            source = self.input_file(config.prompts, config.input_format)
            return [
                *venv_command("aibatch"),
                "run",
                str(source),
                "-o",
                str(run_dir / "out.parquet"),
                "-c",
                str(config.concurrency),
                "--base-url",
                url,
                "--no-progress",
                "--summary-json",
                str(run_dir / "summary.json"),
                *(("--provider", config.protocol) if config.protocol != "aichatonline" else ()),
                *config.extra,
            ]
        if client in STARTUP_COMMANDS:
            program, *args = STARTUP_COMMANDS[client]
            return [*(venv_command(program) if program != "python" else [sys.executable]), *args]
        module = CLIENT_MODULES[client]
        return [
            sys.executable,
            "-m",
            module,
            "--url",
            url,
            "--prompts",
            str(config.prompts),
            "-c",
            str(config.concurrency),
            *(("--protocol", config.protocol) if client == BASELINE else ()),
        ]

    def run_one(
        self,
        client: str,
        config: Config,
        emulator: EmulatorProcess,
        *,
        run_dir: Path | None = None,
        keep: bool = False,
    ) -> Run:
        """Run ``client`` once against ``emulator``; ``run_dir`` reuses a finished job's folder."""
        if run_dir is None:
            run_dir = self.run_dir(f"{client}-c{config.concurrency}")
        else:  # a finished job run again: never read the last run's report
            for name in ("summary.json", "stdout.txt", "stderr.txt"):
                (run_dir / name).unlink(missing_ok=True)
        run = Run(client=client, config=config)
        command = self.command(client, config, emulator.url, run_dir)
        timeout = 120 + config.prompts / 100 + 3 * config.prompts / config.bound
        try:
            before = emulator.stats()
            opens_before, overflows_before = tcp_opens(), listen_overflows()
            cpu_before = emulator.cpu_seconds()
        except OSError as exc:  # the emulator died: nothing to measure against
            run.error = f"emulator unreachable before the run: {exc!r}"
            self.failures.append(run)
            self.log(f"    FAILED {client} {config.describe()}: {run.error}")
            return run
        process = run_measured(
            command,
            cwd=REPO,
            stdout=run_dir / "stdout.txt",
            stderr=run_dir / "stderr.txt",
            timeout=timeout,
        )
        run.process = process
        run.connections = tcp_opens()[1] - opens_before[1]  # accepted by the emulator
        run.listen_overflows = listen_overflows() - overflows_before
        try:
            run.emulator_cpu_s = emulator.cpu_seconds() - cpu_before
            after = emulator.stats()
        except OSError as exc:
            run.error = f"emulator unreachable after the run: {exc!r}"
        else:
            run.token_requests = after["token_requests"] - before["token_requests"]
            run.chat_requests = after["chat_requests"] - before["chat_requests"]
            outcomes = Counter(after["outcomes"])
            outcomes.subtract(before["outcomes"])
            run.outcomes = {k: v for k, v in outcomes.items() if v}
            self._read_counts(run, run_dir)
        if config in self.keep and config not in self.finished and run.good:
            self.finished[config], keep = run_dir, True
        if run.error:  # keep its stdout, stderr and output for a post-mortem
            kept = self.failed_dir / run_dir.name
            shutil.copytree(run_dir, kept, dirs_exist_ok=True)
            run.error += f" (files: {kept})"
        if not keep:
            shutil.rmtree(run_dir, ignore_errors=True)
        if run.error:
            self.failures.append(run)
            self.log(f"    FAILED {client} {config.describe()}: {run.error}")
        else:
            self.log(
                f"    {client:<9} {config.describe():<40} {run.wall_s:7.2f} s"
                f" {run.rows_per_s:9,.0f} rows/s  cpu {run.cpu_s:6.2f} s"
                f"  emu {run.emulator_cpu_s:6.2f} s  req/prompt {run.requests_per_prompt:.3f}"
            )
        return run

    def _read_counts(self, run: Run, run_dir: Path) -> None:
        process = run.process
        assert process is not None
        stderr_tail = _tail(run_dir / "stderr.txt")
        if process.timed_out:
            run.error = f"killed after its deadline; stderr: {stderr_tail}"
            return
        if run.client in STARTUP_COMMANDS:  # nothing sent: it counts if it exits 0
            if process.exit_code != 0:
                run.error = f"exit {process.exit_code}; stderr: {stderr_tail}"
            run.ok = run.config.prompts
            return
        try:
            if run.client == AIBATCH:
                summary = json.loads((run_dir / "summary.json").read_text())
                run.summary = summary
                run.ok, run.failed, run.reused = summary["ok"], summary["error"], summary["reused"]
            else:
                report = json.loads((run_dir / "stdout.txt").read_text().splitlines()[-1])
                run.summary = report
                run.ok, run.failed = report["ok"], report["failed"]
        except (OSError, ValueError, KeyError, IndexError) as exc:
            run.error = f"exit {process.exit_code}, no report ({exc!r}); stderr: {stderr_tail}"
            return
        # aibatch exits 1 when some rows failed after retries: figures, not an error.
        if process.exit_code not in (0, 1) or (process.exit_code == 1 and run.client != AIBATCH):
            run.error = f"exit {process.exit_code}; stderr: {stderr_tail}"
        elif run.ok + run.failed != run.config.prompts:
            run.error = f"{run.ok} ok + {run.failed} failed != {run.config.prompts} prompts"

    # comparisons

    def compare(
        self, entries: Sequence[tuple[str, Config]], reps: int | None = None
    ) -> dict[tuple[str, Config], list[Run]]:
        """Run every (client, config) ``reps`` times, alternating; reuse earlier runs.

        Entries whose configs share the emulator's settings share one emulator process;
        the others get one each, all started before the first run.
        """
        reps = reps or self.reps
        todo = [e for e in dict.fromkeys(entries) if len(self.runs.get(e, [])) < reps]
        if todo:
            names = ", ".join(f"{client} ({config.describe()})" for client, config in todo)
            self.log(f"  {names} x {reps}")
            with contextlib.ExitStack() as stack:
                emulators: dict[object, EmulatorProcess] = {}
                for _, config in todo:
                    if config.emulator_key not in emulators:
                        emulators[config.emulator_key] = stack.enter_context(self.emulator(config))
                for rep in range(reps):
                    shift = rep % len(todo)
                    for client, config in todo[shift:] + todo[:shift]:
                        runs = self.runs.setdefault((client, config), [])
                        if len(runs) <= rep:
                            emulator = emulators[config.emulator_key]
                            runs.append(self.run_one(client, config, emulator))
        return {e: self.runs[e][:reps] for e in entries}

    def compare_clients(
        self, clients: Sequence[str], config: Config, reps: int | None = None
    ) -> dict[str, list[Run]]:
        """:meth:`compare` for several clients on one config, keyed by client."""
        found = self.compare([(c, config) for c in clients], reps)
        return {client: found[(client, config)] for client in clients}


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(none)"
    return " | ".join(text[-lines:]) or "(empty)"
