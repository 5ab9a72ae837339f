"""``aibatch report``: one self-contained page, checked in a real headless browser."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

from click.testing import CliRunner, Result

from aibatch.cli import main
from tests.report.browser import open_page
from tests.report.conftest import HOSTILE, Made

ROOT = Path(__file__).resolve().parents[2]


def report(*args: object) -> Result:
    return CliRunner().invoke(main, ["report", *map(str, args)], catch_exceptions=False)


def page_of(made: Made, folder: Path, *args: object) -> Path:
    page = folder / "report.html"
    result = report(made.path, "-o", page, *args)
    assert result.exit_code == 0, result.output
    return page


class References(HTMLParser):
    """Every tag, and every attribute value that could make a browser fetch something."""

    LOADING = frozenset(
        {"src", "href", "xlink:href", "srcset", "action", "data", "poster", "background"}
    )

    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.urls += [value or "" for name, value in attrs if name in self.LOADING]


def test_the_page_renders_in_chromium_with_no_console_error_and_loads_nothing_else(
    failing: Made, tmp_path: Path
):
    page = page_of(failing, tmp_path)

    visit = open_page(page)

    assert visit.console == []
    assert visit.requests == [page.resolve().as_uri()]
    assert len(visit.charts) == 4
    assert all(chart["width"] > 100 and chart["height"] > 50 for chart in visit.charts)


def test_the_page_in_chromium_shows_the_counts_of_its_output(failing: Made, tmp_path: Path):
    s = failing.summary

    visit = open_page(page_of(failing, tmp_path))

    assert visit.cards[:4] == [
        f"{s.rows:,} rows",
        f"{s.ok:,} ok",
        f"{s.error:,} error",
        f"{s.skipped:,} skipped",
    ]


def test_the_page_has_no_script_and_no_http_reference(failing: Made, tmp_path: Path):
    text = page_of(failing, tmp_path).read_text(encoding="utf-8")
    parser = References()

    parser.feed(text)

    assert parser.tags.isdisjoint({"script", "link", "iframe", "object", "embed", "img"})
    assert [url for url in parser.urls if re.match(r"\s*(https?:)?//", url, re.I)] == []
    assert not re.search(r"@import|@font-face|url\(\s*['\"]?\s*(https?:)?//", text, re.I)


def test_hostile_prompts_show_as_text_in_the_browser_not_as_markup(failing: Made, tmp_path: Path):
    rows = failing.table.to_pylist()  # the page lists up to 100 failed rows: all of them
    assert any(r["status"] == "error" and HOSTILE in r["sent_prompt"] for r in rows)
    assert failing.summary.error <= 100
    page = page_of(failing, tmp_path)

    visit = open_page(page)

    assert '<script>alert("x")</script> <img src=x onerror=alert(1)>' in visit.text
    assert "\\x1b[31mred\\x1b[0m &amp;" in visit.text


def test_the_failed_rows_table_lists_the_first_rows_only(failing: Made, tmp_path: Path):
    text = page_of(failing, tmp_path, "--failed-rows", 5).read_text(encoding="utf-8")

    section = re.search(r'<section id="failed">(.*?)</section>', text, re.S)

    assert section is not None
    assert section.group(1).count("<tr>") == 1 + 5  # the head and five rows
    assert f"the first 5 of {failing.summary.error}" in section.group(1)


def test_a_page_of_an_output_with_no_failures_says_so(clean: Made, tmp_path: Path):
    visit = open_page(page_of(clean, tmp_path))

    assert re.search(r"Failed rows\s+No failed rows\.", visit.text)


def test_the_page_is_written_beside_a_dask_output_folder_by_default(
    parts: tuple[Path, list[Made]],
):
    folder, made = parts

    result = report(folder)

    assert result.exit_code == 0, result.output
    page = folder.with_name(f"{folder.name}.report.html")
    rows = sum(m.summary.rows for m in made)
    assert result.stdout.startswith(f"{page}: {rows} rows:")
    assert f'<div class="n">{rows:,}</div><div class="k">rows</div>' in page.read_text()


def test_without_matplotlib_the_report_exits_2_naming_the_extra(failing: Made, tmp_path: Path):
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"  # as if it were not installed
        "from aibatch.cli import main\n"
        "main(sys.argv[1:], prog_name='aibatch')\n"
    )
    page = tmp_path / "report.html"

    done = subprocess.run(
        [sys.executable, "-c", code, "report", str(failing.path), "-o", str(page)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )

    assert done.returncode == 2
    assert done.stderr == (
        "aibatch: error: the report draws its charts with matplotlib:"
        " pip install 'aibatch[report]'\n"
    )
    assert not page.exists()
