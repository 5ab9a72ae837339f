"""Real processes: what start-up imports, and what a bug looks like to the user."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("pandas", "pyarrow", "numpy", "aiohttp")

IMPORTS_AFTER = """
import sys
from aibatch.cli import main
try:
    main(sys.argv[1:], prog_name="aibatch")
except SystemExit:
    pass
print(sorted({name.split(".")[0] for name in sys.modules} & set(sys.argv[0].split(","))))
"""


def python(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    "args", [["--help"], ["--version"], ["run", "--help"], ["emulate", "--help"]], ids=" ".join
)
def test_help_and_version_import_no_data_or_network_library(args: list[str]):
    code = IMPORTS_AFTER.replace("sys.argv[0]", repr(",".join(HEAVY)))

    done = python("-c", code, *args)

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


@pytest.mark.parametrize(
    "module",
    [
        "importlib.metadata",  # a plugin's entry point: only to load a plugin
        "tomllib",  # only to read a job file
        "tempfile",  # only to save a crash's traceback
    ],
)
def test_help_does_not_import_what_only_some_commands_need(module: str):
    code = IMPORTS_AFTER.replace("sys.argv[0]", repr(module))
    code = code.replace('name.split(".")[0]', "name")

    done = python("-c", code, "--help")

    assert done.stdout.splitlines()[-1] == "[]", done.stderr


@pytest.mark.parametrize(
    "module",
    [
        "importlib.metadata",  # a built-in provider scans no installed entry points
        "aibatch.runner.batch",  # the Batch API's send step: only with --batch-api
        "aibatch.runner.batch_state",  # ...and the ledger: only a job that used it
        "aibatch.jobs.batches",
        "aibatch.providers.batch",
        "numpy.ma",  # what np.unique imports to check for masked arrays
    ],
)
def test_a_live_run_does_not_import_what_it_does_not_use(tmp_path: Path, module: str):
    source = tmp_path / "in.csv"
    source.write_text("prompt\nhello\n", encoding="utf-8")
    output = tmp_path / "out.parquet"
    code = IMPORTS_AFTER.replace("sys.argv[0]", repr(module))
    code = code.replace('name.split(".")[0]', "name")

    done = python("-c", code, "run", str(source), "-o", str(output), "--emulate", "-q")

    assert output.exists(), done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


def test_a_run_of_a_csv_file_does_not_import_pandas(tmp_path: Path):
    source = tmp_path / "in.csv"
    source.write_text("prompt\nhello\n", encoding="utf-8")
    output = tmp_path / "out.parquet"
    code = IMPORTS_AFTER.replace("sys.argv[0]", repr("pandas"))

    done = python("-c", code, "run", str(source), "-o", str(output), "--emulate", "-q")

    assert output.exists(), done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


def test_every_class_of_the_error_tree_is_exported_from_the_package():
    code = (
        "import aibatch, aibatch.errors as e; print(sorted(n for n in e.__all__"
        " if isinstance(getattr(e, n), type) and n not in aibatch.__all__))"
    )

    done = python("-c", code)

    assert done.stdout.splitlines() == ["[]"], done.stderr


def test_the_public_api_still_imports_by_name():
    code = (
        "from aibatch import run_file, run_frame, arun_file, Summary, Emulator, Faults,"
        " JobSpec, Unauthorized, read_metadata; print(Summary.__name__, read_metadata.__name__)"
    )

    done = python("-c", code)

    assert done.stdout.split() == ["Summary", "read_metadata"], done.stderr


BUGGY = '''
"""A provider with a bug: it adds a number to a string."""

from aibatch.providers import AsyncGeneratorProvider, ProviderModelMixin


class Buggy(AsyncGeneratorProvider, ProviderModelMixin):
    name = "buggy"
    url = "http://127.0.0.1:9"
    default_model = "b-1"
    models = ("b-1",)

    def render(self, request):
        return request.messages[-1].content

    async def create_async_generator(self, model, messages, proxy=None, **kwargs):
        yield len(messages) + " messages"
'''


@pytest.fixture
def buggy_run(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """A command whose provider (a plugin) raises TypeError, and its environment."""
    site = tmp_path / "site"
    info = site / "buggy-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "buggy.py").write_text(textwrap.dedent(BUGGY), encoding="utf-8")
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: buggy\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[aibatch.providers]\nbuggy = buggy:Buggy\n")
    source = tmp_path / "in.csv"
    source.write_text("prompt\nhello\n", encoding="utf-8")
    args = ["-m", "aibatch", "run", str(source), "--provider", "buggy", "--no-progress"]
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "TMPDIR": str(tmp_path)}
    return args, env


CRASH = re.compile(
    r"aibatch: internal error: TypeError: unsupported operand type\(s\) for \+: 'int' and"
    r" 'str'; the traceback is in (\S+aibatch-crash-\S+\.txt) \(-vv prints it\)"
)


@pytest.mark.slow
def test_a_bug_exits_70_with_one_line_and_the_traceback_in_a_private_file(
    tmp_path: Path, buggy_run: tuple[list[str], dict[str, str]]
):
    args, env = buggy_run

    done = python(*args, env=env)

    assert done.returncode == 70, done.stderr
    (line,) = done.stderr.splitlines()
    found = CRASH.fullmatch(line)
    assert found, line
    saved = Path(found.group(1))
    assert saved.parent == tmp_path and stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert "Traceback (most recent call last)" in saved.read_text(encoding="utf-8")


@pytest.mark.slow
def test_a_bug_with_vv_after_the_command_also_prints_the_traceback(
    buggy_run: tuple[list[str], dict[str, str]],
):
    args, env = buggy_run

    done = python(*args, "-vv", env=env)

    assert done.returncode == 70
    assert "Traceback (most recent call last)" in done.stderr
    assert CRASH.fullmatch(done.stderr.splitlines()[-1])
