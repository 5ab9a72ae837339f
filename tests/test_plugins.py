"""Provider plugins: a tiny distribution in a temporary folder, found by its entry point.

No pip: each test writes a module and its ``NAME-0.1.dist-info`` (METADATA and
entry_points.txt, group ``aibatch.providers``) into a folder, and puts the folder on
``sys.path`` (in-process) or ``PYTHONPATH`` (a real ``python -m aibatch`` run).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from aibatch.cli import main
from aibatch.errors import UnknownProviderError, UsageError
from aibatch.providers import get_provider, provider_names

ROOT = Path(__file__).resolve().parent.parent

SHOUTY = '''
"""A provider that answers by shouting the last message back."""

from aibatch.errors import PermanentError
from aibatch.providers import AsyncGeneratorProvider, ProviderModelMixin


class Shouty(AsyncGeneratorProvider, ProviderModelMixin):
    name = "myplugin"
    url = "http://127.0.0.1:9"
    default_model = "loud-1"
    models = ("loud-1", "loud-2")
    sampling_options = frozenset({"temperature"})

    def render(self, request):
        return request.messages[-1].content

    async def create_async_generator(self, model, messages, proxy=None, **kwargs):
        text = messages[-1]["content"]
        if text == "refuse":
            raise PermanentError("I will not shout that", http_status=400)
        yield f"{model} at {kwargs.get('temperature')}: "
        yield text.upper()
'''


class PluginFolder:
    """A folder of installed-looking distributions, on ``sys.path`` for the test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.modules: list[str] = []

    def install(self, dist: str, modules: dict[str, str], entry_points: dict[str, str]) -> None:
        for module, source in modules.items():
            (self.root / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
            self.modules.append(module)
        info = self.root / f"{dist}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n", encoding="utf-8"
        )
        lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[aibatch.providers]\n{lines}", encoding="utf-8")

    def shouty(self) -> None:
        self.install("myplugin", {"myplugin": SHOUTY}, {"myplugin": "myplugin:Shouty"})


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PluginFolder]:
    folder = PluginFolder(tmp_path / "site")
    folder.root.mkdir()
    monkeypatch.syspath_prepend(str(folder.root))
    try:
        yield folder
    finally:
        for module in folder.modules:
            sys.modules.pop(module, None)


def invoke(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def prompts_csv(path: Path, prompts: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt"])
        writer.writerows([p] for p in prompts)
    return path


# found


def test_an_installed_plugin_is_among_the_provider_names(plugins):
    plugins.shouty()

    names = provider_names()
    assert names == sorted(names)
    assert {"aichatonline", "myplugin", "openai"} <= set(names)
    provider = get_provider("myplugin")
    assert provider.__name__ == "Shouty"
    assert provider.__module__ == "myplugin"


def test_a_plugin_without_gpt4frees_mixin_is_a_provider(plugins):
    plugins.install(
        "bareplugin",
        {
            "bareplugin": (
                "from aibatch.providers import AsyncGeneratorProvider\n"
                "class Bare(AsyncGeneratorProvider):\n"
                "    name = 'bare'\n"
                "    default_model = 'b-1'\n"
                "    models = ('b-1',)\n"
                "    async def create_async_generator(self, model, messages, proxy=None, **kw):\n"
                "        yield 'bare'\n"
            )
        },
        {"bare": "bareplugin:Bare"},
    )

    provider = get_provider("bare")

    assert provider.get_model(None) == "b-1"


async def test_a_plugins_create_async_generator_works_on_the_class_as_in_gpt4free(plugins):
    plugins.shouty()
    shouty = get_provider("myplugin")
    messages = [{"role": "user", "content": "hello"}]

    chunks = [c async for c in shouty.create_async_generator("loud-2", messages, temperature=1)]

    assert chunks == ["loud-2 at 1: ", "HELLO"]


def test_providers_lists_the_plugin_with_its_models_and_options(plugins):
    plugins.shouty()

    result = invoke("providers")

    assert result.exit_code == 0
    assert "myplugin  (myplugin.Shouty)" in result.stdout
    assert "default model: loud-1; models: loud-1, loud-2" in result.stdout
    assert "options: temperature" in result.stdout
    assert "aichatonline  (" in result.stdout and "openai  (" in result.stdout


def test_without_the_plugin_its_name_is_unknown():
    with pytest.raises(UnknownProviderError) as caught:
        get_provider("myplugin")

    assert "aichatonline" in str(caught.value) and "openai" in str(caught.value)


# a job through it


def test_a_job_runs_through_the_plugin(plugins, tmp_path: Path):
    plugins.shouty()
    source = prompts_csv(tmp_path / "in.csv", ["hello there", "", "refuse", "bye"])

    result = invoke(
        "run", source, "--provider", "myplugin", "--model", "loud-2", "--temperature", 0.5
    )

    assert result.exit_code == 1, result.stderr  # the refused row failed
    rows = pq.read_table(tmp_path / "in.responses.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["ok", "skipped", "error", "ok"]
    assert [r["response"] for r in rows] == [
        "loud-2 at 0.5: HELLO THERE",
        None,
        None,
        "loud-2 at 0.5: BYE",
    ]
    assert rows[0]["sent_prompt"] == "hello there"
    assert {(r["provider"], r["model"]) for r in rows} == {("myplugin", "loud-2")}
    assert (rows[2]["error_type"], rows[2]["http_status"], rows[2]["attempts"]) == (
        "PermanentError",
        400,
        1,
    )
    assert "I will not shout that" in rows[2]["error"]


ONE_METHOD = """
from aibatch.providers import AsyncGeneratorProvider


class OneShot(AsyncGeneratorProvider):
    name = "oneshot"
    url = "http://127.0.0.1:9"
    default_model = "one-1"

    async def create_async_generator(self, model, messages, proxy=None, **kwargs):
        yield "heard: " + messages[-1]["content"]
"""


def test_a_plugin_of_one_method_runs_a_job_and_its_dry_run(plugins, tmp_path: Path):
    plugins.install("oneshot", {"oneshot": ONE_METHOD}, {"oneshot": "oneshot:OneShot"})
    source = prompts_csv(tmp_path / "in.csv", ["hello there"])

    dry = invoke("run", source, "--provider", "oneshot", "--dry-run")
    result = invoke("run", source, "--provider", "oneshot")

    assert (dry.exit_code, result.exit_code) == (0, 0), result.stderr
    (row,) = pq.read_table(tmp_path / "in.responses.parquet").to_pylist()
    assert (row["sent_prompt"], row["response"]) == ("hello there", "heard: hello there")


def test_a_rerun_through_the_plugin_resumes(plugins, tmp_path: Path):
    plugins.shouty()
    source = prompts_csv(tmp_path / "in.csv", ["one", "two"])

    first = invoke("run", source, "--provider", "myplugin")
    again = invoke("run", source, "--provider", "myplugin")

    assert first.exit_code == again.exit_code == 0
    assert "reused 2" in again.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "quiet-1"], "unknown model 'quiet-1'; known: loud-1, loud-2"),
        (["--top-p", "0.5"], "the myplugin provider does not take --top-p"),
        (["--no-stream"], "the myplugin provider always streams"),
        (["--api-key-env", "KEY"], "the myplugin provider takes no API key"),
        (["--emulate"], "not myplugin"),
    ],
    ids=["model", "top-p", "no-stream", "api-key-env", "emulate"],
)
def test_what_the_plugin_does_not_declare_is_refused_with_exit_2(
    plugins, tmp_path: Path, extra: list[str], message: str
):
    plugins.shouty()
    source = prompts_csv(tmp_path / "in.csv", ["hi"])

    result = invoke("run", source, "--provider", "myplugin", *extra)

    assert result.exit_code == 2
    assert message in result.stderr
    assert not (tmp_path / "in.responses.parquet").exists()


@pytest.mark.slow
def test_a_real_process_finds_the_plugin_on_pythonpath(plugins, tmp_path: Path):
    plugins.shouty()
    source = prompts_csv(tmp_path / "in.csv", ["from a subprocess"])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(plugins.root), str(ROOT)]),
    }

    done = subprocess.run(
        [sys.executable, "-m", "aibatch", "run", str(source), "--provider", "myplugin"],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr.decode()
    (row,) = pq.read_table(tmp_path / "in.responses.parquet").to_pylist()
    assert row["response"] == "loud-1 at None: FROM A SUBPROCESS"
    assert row["provider"] == "myplugin"


# broken plugins


BROKEN = {
    "import-error": (
        {"brokenplugin": "import missing_dependency_of_the_plugin\n"},
        "brokenplugin:Provider",
        "provider 'broken' (brokenplugin:Provider) cannot be loaded:"
        " No module named 'missing_dependency_of_the_plugin'",
    ),
    "error-on-import": (
        {"brokenplugin": "raise RuntimeError('plugin configuration is missing')\n"},
        "brokenplugin:Provider",
        "cannot be loaded: plugin configuration is missing",
    ),
    "missing-attribute": (
        {"brokenplugin": "class Other:\n    pass\n"},
        "brokenplugin:Provider",
        "provider 'broken' (brokenplugin:Provider) cannot be loaded",
    ),
    "not-a-class": (
        {"brokenplugin": "def Provider():\n    return None\n"},
        "brokenplugin:Provider",
        "provider 'broken' (brokenplugin:Provider) must subclass AsyncGeneratorProvider",
    ),
    "not-a-provider": (
        {"brokenplugin": "class Provider:\n    name = 'broken'\n"},
        "brokenplugin:Provider",
        "must subclass AsyncGeneratorProvider",
    ),
    "gpt4free-classmethod": (
        {
            "brokenplugin": (
                "from aibatch.providers import AsyncGeneratorProvider\n"
                "class Provider(AsyncGeneratorProvider):\n"
                "    name = 'broken'\n"
                "    @classmethod\n"
                "    async def create_async_generator(cls, model, messages, proxy=None):\n"
                "        yield 'hi'\n"
            )
        },
        "brokenplugin:Provider",
        "cannot be loaded: Provider.create_async_generator must be a plain method",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_plugin_exits_2_saying_what_is_wrong(plugins, tmp_path: Path, case: str):
    modules, target, message = BROKEN[case]
    plugins.install("brokenplugin", modules, {"broken": target})
    source = prompts_csv(tmp_path / "in.csv", ["hi"])

    with pytest.raises(UsageError):
        get_provider("broken")
    result = invoke("run", source, "--provider", "broken")

    assert result.exit_code == 2
    assert result.stderr.startswith("aibatch: error: ")
    assert message in result.stderr
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_providers_still_lists_the_others_beside_a_broken_plugin(plugins):
    modules, target, _ = BROKEN["import-error"]
    plugins.install("brokenplugin", modules, {"broken": target})
    plugins.shouty()

    result = invoke("providers")

    assert result.exit_code == 0
    assert "broken: provider 'broken' (brokenplugin:Provider) cannot be loaded" in result.stdout
    assert "myplugin  (myplugin.Shouty)" in result.stdout
    assert "openai  (aibatch.providers.openai.OpenAIChat)" in result.stdout


def test_a_broken_plugin_does_not_stop_other_providers_from_running(plugins, tmp_path: Path):
    modules, target, _ = BROKEN["error-on-import"]
    plugins.install("brokenplugin", modules, {"broken": target})
    source = prompts_csv(tmp_path / "in.csv", ["hi"])

    result = invoke("run", source, "--provider", "openai", "--emulate", "-q")

    assert result.exit_code == 0, result.stderr
