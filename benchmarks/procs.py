"""Processes: the emulator in its own process, and one measured client run.

A client run is timed from ``Popen`` to its exit, and its CPU time (user + sys) and peak
RSS are those of that exact child, read with ``os.wait4`` on its pid. The emulator's CPU
time comes from ``/proc/<pid>/stat``, read before and after each run. Every wait has a
deadline; the emulator is killed in a ``finally``.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# urllib follows *_proxy variables; the harness talks to 127.0.0.1 only, never via a proxy.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def venv_command(name: str) -> list[str]:
    """The console script ``name`` beside this Python, or ``python -m name``."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", name]


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (its threads included)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def proc_peak_rss_kb(pid: int) -> int:
    """Peak resident set size of process ``pid`` so far, in KiB (VmHWM)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def tcp_opens() -> tuple[int, int]:
    """(active, passive) TCP opens in this network namespace so far (/proc/net/snmp)."""
    with open("/proc/net/snmp", encoding="ascii") as f:
        rows = [line.split() for line in f if line.startswith("Tcp:")]
    table = dict(zip(rows[0][1:], rows[1][1:], strict=True))
    return int(table["ActiveOpens"]), int(table["PassiveOpens"])


def listen_overflows() -> int:
    """Connections dropped because a listen queue was full, in this network namespace so far.

    The emulator listens with aiohttp's default backlog (128); a burst of new connections
    beyond it is dropped and the client's SYN is retried a second later.
    """
    with open("/proc/net/netstat", encoding="ascii") as f:
        rows = [line.split() for line in f if line.startswith("TcpExt:")]
    table = dict(zip(rows[0][1:], rows[1][1:], strict=True))
    return int(table.get("ListenOverflows", 0))


class EmulatorProcess:
    """``aibatch emulate`` in a child process; ``with`` it to get its base URL.

    Args:
        latency: seconds to the first chunk.
        chunks: chunks per answer.
        faults: extra ``aibatch emulate`` options, e.g. ``{"error-rate": 0.05}``.
        protocol: the wire protocol it serves (``--protocol``).
        log: file for its stderr.
    """

    START_TIMEOUT = 30.0

    def __init__(
        self,
        *,
        latency: float,
        chunks: int,
        faults: dict[str, Any] | None,
        log: Path,
        protocol: str = "aichatonline",
    ) -> None:
        self.command = [
            *venv_command("aibatch"),
            "emulate",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--latency",
            f"{latency:g}",
            "--chunks",
            str(chunks),
            "--protocol",
            protocol,
        ]
        for key, value in (faults or {}).items():
            self.command += [f"--{key}", f"{value:g}" if isinstance(value, float) else str(value)]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def __enter__(self) -> EmulatorProcess:
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                self.command, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL
            )
        try:
            self.url = self._read_url()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _read_url(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + self.START_TIMEOUT
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buffer:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
                    raise RuntimeError(
                        f"`{' '.join(self.command)}` printed no URL "
                        f"(exit {self.proc.returncode}): {' | '.join(tail) or 'no stderr'}"
                    )
                if selector.select(timeout=left):
                    data = os.read(self.proc.stdout.fileno(), 4096)
                    if not data:
                        continue
                    buffer += data
        url = buffer.split(b"\n", 1)[0].decode().strip()
        if not url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the emulator is not on 127.0.0.1: {url!r}")
        return url

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def stats(self) -> dict[str, Any]:
        root = self.url.removesuffix("/v1")  # the openai protocol's base URL ends in /v1
        with _OPENER.open(f"{root}/stats", timeout=30) as response:
            data: dict[str, Any] = json.load(response)
        return data

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        finally:
            if proc.stdout is not None:
                proc.stdout.close()


@dataclass(frozen=True, slots=True)
class ProcessResult:
    """What one client process cost, measured from outside."""

    exit_code: int
    wall_s: float
    user_s: float
    sys_s: float
    peak_rss_kb: int
    timed_out: bool

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


def run_measured(
    command: list[str], *, cwd: Path, stdout: Path, stderr: Path, timeout: float
) -> ProcessResult:
    """Run ``command`` to its end (killed after ``timeout`` s) and measure that child."""
    with stdout.open("wb") as out, stderr.open("wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    pidfd = os.pidfd_open(proc.pid)
    timed_out = False
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(pidfd, selectors.EVENT_READ)  # readable once the child exits
            if not selector.select(timeout=timeout):
                timed_out = True
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except BaseException:  # Ctrl-C in the harness: the child goes too
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        os.wait4(proc.pid, 0)
        proc.returncode = -signal.SIGKILL
        raise
    finally:
        os.close(pidfd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return ProcessResult(
        exit_code=proc.returncode,
        wall_s=wall,
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
        peak_rss_kb=usage.ru_maxrss,
        timed_out=timed_out,
    )
