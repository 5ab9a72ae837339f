"""Adversarial review of the performance work since 9a2d247: bugs found, one test each."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import genai_prices
import pytest

pytestmark = pytest.mark.slow

AIBATCH = str(Path(sys.executable).with_name("aibatch"))

# gpt-5-mini's input price, and every other 0.25 of the table with it
OLD_PRICE = "input_mtok=Decimal('0.25')"
NEW_PRICE = "input_mtok=Decimal('0.875')"

# A long-running process (a notebook, a service calling run_file) prices a model, the
# table is upgraded on disk under it, and it prices the model again from the table it
# has in memory.
UPGRADED_UNDER_IT = (
    "import pathlib, sys\n"
    "from aibatch.jobs.cost import look_up_price\n"
    "look_up_price('gpt-5-mini')\n"
    "table = pathlib.Path(sys.argv[1])\n"
    f"table.write_text(table.read_text().replace({OLD_PRICE!r}, {NEW_PRICE!r}))\n"
    "look_up_price('gpt-5-mini')\n"
)
NOTE = "from aibatch.jobs.cost import look_up_price\nprint(look_up_price('gpt-5-mini').note)\n"


def python(code: str, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


def test_a_table_upgraded_under_a_running_process_is_not_cached_with_its_old_prices(
    tmp_path: Path,
):
    site = tmp_path / "site"
    package = site / "genai_prices"
    shutil.copytree(
        Path(genai_prices.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__")
    )
    assert OLD_PRICE in (package / "data.py").read_text()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        "AIBATCH_CACHE_DIR": str(tmp_path / "cache"),
    }
    python(UPGRADED_UNDER_IT, env, str(package / "data.py"))

    later = python(NOTE, env)

    assert later == python(NOTE, {**env, "AIBATCH_CACHE_DIR": "off"})


def test_a_system_message_that_is_not_utf8_is_a_usage_error_not_a_crash(tmp_path: Path):
    (tmp_path / "in.csv").write_text("prompt\nhi\n")
    done = subprocess.run(
        [AIBATCH, "run", "in.csv", "--emulate", "--provider", "openai", "--system", b"\xff"],
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
    )

    assert done.returncode == 2, done.stderr
