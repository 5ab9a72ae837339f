"""Files written whole or not at all; devices and pipes written to, never replaced."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from aibatch.files import write_file

ROOT = Path(__file__).resolve().parent.parent


def test_write_file_replaces_a_regular_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    target.write_text("old")

    write_file(target, b"new")

    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_write_file_to_a_device_writes_into_it_and_leaves_it_a_device() -> None:
    write_file(Path("/dev/null"), b"discarded")

    assert Path("/dev/null").is_char_device()


def test_summary_json_to_dev_stdout_through_a_pipe_prints_the_summary(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("prompt\nhello\n", encoding="utf-8")

    done = subprocess.run(
        [sys.executable, "-m", "aibatch", "run", str(source), "--emulate", "-q",
         "--summary-json", "/dev/stdout"],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] == 1
