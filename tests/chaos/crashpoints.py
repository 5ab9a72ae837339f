"""Deterministic crash points for a real ``aibatch`` child process, without patching aibatch.

The child runs ``python -c BOOTSTRAP run ...``. BOOTSTRAP wraps three standard library
functions that aibatch calls at the moments that matter, then hands over to the real
CLI. On the N-th matching call it either kills its own process with SIGKILL (after
writing a marker file naming where it died, as evidence) or raises ENOSPC, as a full
disk would:

- ``csv.reader`` rows: ``reading`` (the scan of the input, before anything is sent);
- ``os.fsync`` of a checkpoint part's temp file (``part-fsync``), of the parts folder
  (``parts-dir-fsync``) or of the output's temp file ``.NAME.PID.tmp`` (``output-fsync``);
- ``os.replace`` of a part's temp file into place (``part-replace``) or of the output's
  (``output-replace``).

``CHAOS_WHEN`` says whether to strike ``before`` or ``after`` the real call. With
``CHAOS_ACTION=enospc`` every matching call from the N-th on fails: the disk stays full
until the test "frees space" by running again without the bootstrap.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

BOOTSTRAP = r"""
import csv, errno, os, signal, sys

WHERE = os.environ["CHAOS_WHERE"]
NTH = int(os.environ["CHAOS_NTH"])
WHEN = os.environ.get("CHAOS_WHEN", "before")
ACTION = os.environ.get("CHAOS_ACTION", "kill")
MARKER = os.environ.get("CHAOS_MARKER")
seen = 0


def strike():
    if ACTION == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if MARKER:
        fd = os.open(MARKER, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, f"{WHERE}:{NTH}:{WHEN}".encode())
        os.close(fd)
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
    if name.startswith(".") and name.endswith(".tmp"):
        return "output-fsync"
    return None


real_fsync, real_replace, real_reader = os.fsync, os.replace, csv.reader


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
        else "output-replace" if name.startswith(".") and name.endswith(".tmp")
        else None
    )
    hit = due(kind)
    if hit and (WHEN == "before" or ACTION == "enospc"):
        strike()
    real_replace(src, dst, **kwargs)
    if hit:
        strike()


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


os.fsync, os.replace = fsync, replace
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

    def env(self, marker: Path | None = None) -> dict[str, str]:
        """The child's environment: :func:`child_env`, plus the crash point."""
        env = child_env(
            CHAOS_WHERE=self.where,
            CHAOS_NTH=str(self.nth),
            CHAOS_WHEN=self.when,
            CHAOS_ACTION=self.action,
        )
        if marker is not None:
            env["CHAOS_MARKER"] = str(marker)
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
