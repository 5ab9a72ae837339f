"""Deterministic crash points for a real ``aibatch`` child process, without patching aibatch.

The child runs ``python -c BOOTSTRAP run ...``. BOOTSTRAP wraps four standard library
functions that aibatch calls at the moments that matter, then hands over to the real
CLI. On the N-th matching call it kills its own process with SIGKILL (after writing a
marker file naming where it died, as evidence), raises ENOSPC, as a full disk would, or
pauses until the test lets it go on:

- ``csv.reader`` rows: ``reading`` (the scan of the input, before anything is sent);
- ``os.fsync`` of a checkpoint part's temp file (``part-fsync``), of the parts folder
  (``parts-dir-fsync``) or of the output's temp file ``.NAME.PID.tmp`` (``output-fsync``);
- ``os.replace`` of a part's temp file into place (``part-replace``) or of the output's
  (``output-replace``);
- ``os.open`` creating the output's temp file (``output-open``): every row is stored and
  the output is about to be written;
- ``os.replace`` of a batch chunk's record into place (``record-replace``, under the
  checkpoint's ``batches/`` folder): each step of a ``--batch-api`` chunk (prepared,
  uploaded, submitted, status seen, collected) rewrites its record.

``CHAOS_WHEN`` says whether to strike ``before`` or ``after`` the real call. With
``CHAOS_ACTION=enospc`` every matching call from the N-th on fails: the disk stays full
until the test "frees space" by running again without the bootstrap. With
``CHAOS_ACTION=pause`` the child writes the marker, then waits (60 s at most) until the
file ``CHAOS_RESUME`` exists: the test acts on the paused run, then creates that file.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

BOOTSTRAP = r"""
import csv, errno, os, signal, sys, time

WHERE = os.environ["CHAOS_WHERE"]
NTH = int(os.environ["CHAOS_NTH"])
WHEN = os.environ.get("CHAOS_WHEN", "before")
ACTION = os.environ.get("CHAOS_ACTION", "kill")
MARKER = os.environ.get("CHAOS_MARKER")
RESUME = os.environ.get("CHAOS_RESUME")
seen = 0


def strike():
    if ACTION == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if MARKER:
        fd = real_open(MARKER, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, f"{WHERE}:{NTH}:{WHEN}".encode())
        os.close(fd)
    if ACTION == "pause":
        deadline = time.monotonic() + 60
        while not os.path.exists(RESUME):
            if time.monotonic() > deadline:
                os._exit(99)  # the test never let the run go on
            time.sleep(0.001)
        return
    os.kill(os.getpid(), signal.SIGKILL)


def due(kind):
    global seen
    if kind != WHERE:
        return False
    seen += 1
    return seen >= NTH if ACTION == "enospc" else seen == NTH


def fd_kind(fd):
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    name = os.path.basename(path)
    if name.endswith(".arrow.tmp"):
        return "part-fsync"
    if name == "parts":
        return "parts-dir-fsync"
    if is_output_temp(name, path):
        return "output-fsync"
    return None


real_fsync, real_replace, real_reader, real_open = os.fsync, os.replace, csv.reader, os.open


def in_ledger(path):
    return os.path.basename(os.path.dirname(os.fspath(path))) == "batches"


def is_output_temp(name, path=""):
    return (
        name.startswith(".") and name.endswith(".tmp") and not name.endswith(".arrow.tmp")
        and not in_ledger(path)
    )


def fsync(fd):
    hit = due(fd_kind(fd))
    if hit and (WHEN == "before" or ACTION == "enospc"):
        strike()
    real_fsync(fd)
    if hit:
        strike()


def replace(src, dst, **kwargs):
    name = os.path.basename(os.fspath(src))
    kind = (
        "part-replace" if name.endswith(".arrow.tmp")
        else "record-replace" if in_ledger(src) and ".json." in name
        else "output-replace" if is_output_temp(name, src)
        else None
    )
    hit = due(kind)
    if hit and (WHEN == "before" or ACTION == "enospc"):
        strike()
    real_replace(src, dst, **kwargs)
    if hit:
        strike()


def open_(path, flags, *args, **kwargs):
    creates = flags & os.O_CREAT and is_output_temp(os.path.basename(os.fspath(path)), path)
    hit = due("output-open" if creates else None)
    if hit and WHEN == "before":
        strike()
    fd = real_open(path, flags, *args, **kwargs)
    if hit and WHEN == "after":
        strike()
    return fd


class Reader:
    def __init__(self, inner):
        self.inner = inner

    @property
    def line_num(self):
        return self.inner.line_num

    def __iter__(self):
        return self

    def __next__(self):
        record = next(self.inner)
        if due("reading"):
            strike()
        return record


os.fsync, os.replace, os.open = fsync, replace, open_
csv.reader = lambda *args, **kwargs: Reader(real_reader(*args, **kwargs))

sys.argv = ["aibatch", *sys.argv[1:]]
from aibatch.cli import main

main()
"""

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class CrashPoint:
    """Where the child strikes: hook ``where``, ``nth`` matching call, ``before``/``after``."""

    where: str
    nth: int = 1
    when: str = "before"
    action: str = "kill"

    def env(self, marker: Path | None = None, resume: Path | None = None) -> dict[str, str]:
        """The child's environment: :func:`child_env`, plus the crash point.

        ``resume`` is the file a paused child waits for (``action="pause"``).
        """
        env = child_env(
            CHAOS_WHERE=self.where,
            CHAOS_NTH=str(self.nth),
            CHAOS_WHEN=self.when,
            CHAOS_ACTION=self.action,
        )
        if marker is not None:
            env["CHAOS_MARKER"] = str(marker)
        if resume is not None:
            env["CHAOS_RESUME"] = str(resume)
        return env


def child_env(**extra: str) -> dict[str, str]:
    """Our environment, with this checkout's package first on the child's path."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def child_command(*cli_args: object, bootstrap: bool = True) -> list[str]:
    """``aibatch ...`` as a child process, through the crash-point bootstrap or plainly."""
    args = [str(a) for a in cli_args]
    if bootstrap:
        return [sys.executable, "-c", BOOTSTRAP, *args]
    return [sys.executable, "-m", "aibatch", *args]


@contextlib.contextmanager
def child(
    args: tuple[object, ...],
    cwd: Path,
    point: CrashPoint | None,
    marker: Path | None = None,
    resume: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """A child ``aibatch`` process, killed if the test leaves before it ended."""
    command = child_command(*args, bootstrap=point is not None)
    env = point.env(marker, resume) if point is not None else child_env()
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def wait_until(condition: Callable[[], object], process: subprocess.Popen[bytes]) -> None:
    """Poll (bounded) until ``condition`` holds while the child is still running."""
    deadline = time.monotonic() + 60
    while not condition():
        assert process.poll() is None, "the run ended before the moment it was to be stopped"
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.002)
