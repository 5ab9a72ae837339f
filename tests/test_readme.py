"""The README's copies of ``aibatch run --help`` and of the exit codes match the program.

After changing an option or an exit code, rewrite both copies with::

    python -m tests.test_readme --write
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from click.testing import CliRunner

from aibatch import cli

README = Path(__file__).resolve().parent.parent / "README.md"
WIDTH = 80  # the help text as an 80-column terminal shows it
HELP_SECTION = re.compile(r"(## `aibatch run --help`\n\n```\n)(.*?)(```\n)", re.S)
EXIT_SECTION = re.compile(r"(## Exit codes\n\n)(\|.*?\n)(\n)", re.S)


def run_help() -> str:
    result = CliRunner().invoke(
        cli.main, ["run", "--help"], prog_name="aibatch", terminal_width=WIDTH
    )
    assert result.exit_code == 0, result.output
    return result.stdout


def exit_code_table() -> str:
    rows = "".join(f"| {code} | {meaning} |\n" for code, meaning in cli.EXIT_CODES)
    return "| code | meaning |\n|---|---|\n" + rows


def current_readme(text: str) -> str:
    """``text`` with both sections as the program gives them now."""
    for section, body in ((HELP_SECTION, run_help()), (EXIT_SECTION, exit_code_table())):
        assert section.search(text), f"README.md has no section matching {section.pattern!r}"
        text = section.sub(lambda m, body=body: m.group(1) + body + m.group(3), text, count=1)
    return text


def test_the_readme_shows_the_current_run_help_and_exit_codes():
    text = README.read_text(encoding="utf-8")

    assert text == current_readme(text), "run: python -m tests.test_readme --write"


def test_the_cli_docstring_lists_the_exit_codes_of_the_help():
    epilog = [line.strip() for line in cli._EPILOG.splitlines()[2:]]

    assert [line for line in epilog if line not in (cli.__doc__ or "")] == []


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.test_readme --write")
    README.write_text(current_readme(README.read_text(encoding="utf-8")), encoding="utf-8")
