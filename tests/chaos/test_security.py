"""Security: secrets never leak, templates stay templates, loopback only, no world-writable files.

The leak tests run the real CLI at debug verbosity through a loopback proxy that demands
credentials, with faults injected, then search everything written (stdout, stderr,
every file, the Parquet output and the checkpoint parts decoded) for every token the
emulator ever issued, the OpenAI API key, and the proxy's credentials.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import json
import os
import re
import socket
import stat
import string
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp import web
from click.testing import CliRunner
from hypothesis import event, given, settings
from hypothesis import strategies as st

from aibatch.cli import main
from aibatch.jobs.checkpoint import checkpoint_dir
from aibatch.jobs.spec import JobSpec
from aibatch.providers.emulator import Emulator, Faults, answer_for
from aibatch.runner.engine import Progress
from aibatch.runner.job import arun_job
from tests.conftest import emulator_in_thread

from .checks import injected, invoke, read_part, tally, write_prompts
from .crashpoints import child_command, child_env

USER, PASSWORD = "chaos-user", "Pr0xy-S3cret-7f3a"
API_KEY = "sk-chaos-0f1e2d3c4b5a69788796a5b4"
HOP_BY_HOP = {
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-authorization",
    "transfer-encoding",
}


class CredentialProxy:
    """A forward HTTP proxy on 127.0.0.1 that demands Basic credentials (407 without)."""

    def __init__(self, user: str, password: str) -> None:
        self.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.forwarded = 0
        self.refused = 0
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Proxy-Authorization") != self.expected:
            self.refused += 1
            return web.Response(status=407, text="proxy credentials required")
        self.forwarded += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with self.session.request(
            request.method, str(request.url), headers=headers, data=await request.read()
        ) as upstream:
            response = web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP},
            )
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except aiohttp.ClientPayloadError:
                assert request.transport is not None
                request.transport.close()  # a cut stream stays cut
                return response
            await response.write_eof()
            return response

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[CredentialProxy]:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as self.session:
            try:
                yield self
            finally:
                await runner.cleanup()


def secrets_of(emu: Emulator) -> dict[str, str]:
    """Every token ever issued, the API key, and the proxy credentials in each form."""
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    found = {f"token {i}": token for i, token in enumerate(emu.issued_tokens())}
    if emu.api_key:
        found["API key"] = emu.api_key
    return {**found, "proxy password": PASSWORD, "proxy Basic header": basic}


def decoded(path: Path) -> str:
    """The readable content of ``path``: Parquet and Arrow files decoded, metadata included."""
    data = path.read_bytes()
    if data[:4] == b"PAR1":
        metadata = pq.read_metadata(path).metadata or {}
        table = pq.read_table(path)
        return json.dumps([{k.decode(): v.decode() for k, v in metadata.items()}]) + str(
            table.to_pylist()
        )
    if data[:6] == b"ARROW1":
        return str(read_part(path).to_pylist())
    return data.decode("utf-8", "replace")


def leaks(secrets: dict[str, str], folder: Path, *streams: bytes) -> list[str]:
    """Where any secret shows up: in ``streams`` or any file under ``folder``, raw or decoded."""
    found = []
    texts = {f"stream {i}": s.decode("utf-8", "replace") for i, s in enumerate(streams)}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        texts[f"{path} (raw)"] = path.read_bytes().decode("latin-1")
        texts[f"{path} (decoded)"] = decoded(path)
    for where, text in texts.items():
        found += [f"{name} in {where}" for name, secret in secrets.items() if secret in text]
    return found


def test_the_leak_search_looks_inside_parquet_values_and_metadata(tmp_path: Path):
    secret = "planted-0123456789abcdef"
    output = tmp_path / "out.parquet"
    pq.write_table(pa.table({"error": [f"HTTP 401 for {secret}"]}), output, compression="zstd")
    metadata_only = tmp_path / "meta.parquet"
    table = pa.table({"x": [1]}).replace_schema_metadata({"aibatch": json.dumps({"p": secret})})
    pq.write_table(table, metadata_only, compression="zstd")
    found = leaks({"planted": secret}, tmp_path)
    assert f"planted in {output} (decoded)" in found
    assert f"planted in {metadata_only} (decoded)" in found


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["aichatonline", "openai"])
async def test_no_token_key_or_proxy_credential_appears_in_anything_a_faulty_debug_run_writes(
    tmp_path: Path, protocol: str
):
    source, _ = write_prompts(tmp_path, 100)
    faults = Faults(
        error_rate=0.1,
        rate_limit_rate=0.1,
        retry_after=0.01,
        cut_rate=0.1,
        garbage_rate=0.1,
        stall_rate=0.1,
        stall_seconds=2.0,
        token_max_uses=7,
        seed=5,
    )
    job = tmp_path / "job.toml"
    job.write_text("[retry]\nattempts = 2\nwait_initial = 0.01\nwait_max = 0.05\n")
    key = API_KEY if protocol == "openai" else None
    emu = Emulator(faults=faults, record_prompts=True, protocol=protocol, api_key=key)
    proxy = CredentialProxy(USER, PASSWORD)
    provider = ["--provider", "openai", "--model", "gpt-4o-mini"] if key else []
    env = child_env(OPENAI_API_KEY=API_KEY)
    with anyio.fail_after(60):
        async with emu, proxy.serving():
            proxy_url = f"http://{USER}:{PASSWORD}@127.0.0.1:{proxy.port}"
            command = child_command(
                "-vv",
                "run",
                source,
                *provider,
                "--job",
                job,
                "--base-url",
                emu.base_url,
                "--proxy",
                proxy_url,
                "--timeout",
                0.3,
                "-c",
                8,
                "--progress",
                "--summary-json",
                tmp_path / "summary.json",
                bootstrap=False,
            )
            run = await anyio.run_process(command, cwd=tmp_path, check=False, env=env)
    assert run.returncode in (0, 1), run.stderr.decode()[-3000:]
    assert proxy.forwarded >= emu.stats.chat_requests > 0 and proxy.refused == 0
    rows = pq.read_table(tmp_path / "in.responses.parquet").to_pylist()
    assert {r["status"] for r in rows} == {"ok", "error"}, "failures need messages to search"
    if key is None:
        assert emu.stats.outcomes["unauthorized"] > 0 and len(emu.issued_tokens()) > 5
    assert b"DEBUG" in run.stderr and b"\r" in run.stderr  # debug logs and a progress bar
    assert (checkpoint_dir(tmp_path / "in.responses.parquet") / "parts").is_dir()
    assert not leaks(secrets_of(emu), tmp_path, run.stdout, run.stderr)
    assert all(r["response"] == answer_for(r["prompt"]) for r in rows if r["status"] == "ok")
    tally(faults_injected=injected(emu), rows_checked=len(rows))


def test_a_refused_api_key_stops_the_run_without_showing_the_key(tmp_path: Path):
    source, _ = write_prompts(tmp_path, 20)
    wrong = "sk-wrong-9d1e5b7c3a"
    with emulator_in_thread(protocol="openai", api_key=API_KEY) as emu:
        result = CliRunner().invoke(
            main,
            ["run", str(source), "--provider", "openai", "--base-url", emu.base_url],
            env={"OPENAI_API_KEY": wrong},
            catch_exceptions=False,
        )
    assert result.exit_code == 2, result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("aibatch: error: ") and "OPENAI_API_KEY" in last  # names the variable
    assert not leaks({"wrong key": wrong, "right key": API_KEY}, tmp_path, result.stderr_bytes)


def test_no_proxy_credential_appears_when_the_proxy_refuses_connections(
    tmp_path: Path, live_emulator: Emulator
):
    source, _ = write_prompts(tmp_path, 3)
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # bound, never listening: connections refused
        proxy_url = f"http://{USER}:{PASSWORD}@127.0.0.1:{closed_port}"
        result = invoke(
            "run",
            source,
            "--base-url",
            live_emulator.base_url,
            "--proxy",
            proxy_url,
            "--max-attempts",
            1,
            "--summary-json",
            tmp_path / "summary.json",
        )
    assert result.exit_code == 1, result.stderr
    rows = pq.read_table(tmp_path / "in.responses.parquet").to_pylist()
    assert {r["error_type"] for r in rows} == {"TransientError"}
    assert all("connect" in r["error"].lower() for r in rows), rows[0]["error"]
    assert not leaks(secrets_of(live_emulator), tmp_path, result.stdout_bytes, result.stderr_bytes)


ESCAPES = [
    "{prompt.__class__}",
    "{prompt.__class__.__mro__[1].__subclasses__}",
    "{prompt[0]}",
    "{prompt!r}",
    "{prompt:>40}",
    "{prompt:{id}}",
    "Ask: {prompt} {id.__len__}",
    "{}",
    "{0}",
    "{__class__}",
    "{prompt",
    "prompt}",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_a_template_cannot_reach_attributes_indexes_or_conversions(
    tmp_path: Path, live_emulator: Emulator, template: str
):
    source, _ = write_prompts(tmp_path, 3)
    result = invoke("run", source, "--template", template, "--base-url", live_emulator.base_url)
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith("aibatch: error: ") and result.stderr.count("\n") == 1
    assert "<class" not in result.stderr and "<built-in" not in result.stderr
    assert live_emulator.stats.chat_requests == 0 and live_emulator.stats.token_requests == 0
    assert not (tmp_path / "in.responses.parquet").exists()


def test_escaped_braces_send_the_field_text_itself(tmp_path: Path, live_emulator: Emulator):
    source, prompts = write_prompts(tmp_path, 2)
    template = "{{prompt.__class__}} is literal; {prompt}"
    result = invoke("run", source, "--template", template, "--base-url", live_emulator.base_url)
    assert result.exit_code == 0, result.stderr
    sent = pq.read_table(tmp_path / "in.responses.parquet").column("sent_prompt").to_pylist()
    assert sent == [f"{{prompt.__class__}} is literal; {p}" for p in prompts]


COLUMNS = {"prompt": ["a {b} c", "", "x.y[0]"], "a": ["{prompt}", "  ", "1"], "b_c": ["", "", ""]}


def expected_prompts(template: str) -> list[str | None] | None:
    """The prompts a template must give: literal text and plain column values only.

    ``None`` when the template must be refused.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        return None
    names = [name for _, name, _, _ in parsed if name is not None]
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if spec or conversion or not name.strip() or any(c in name for c in ".[]"):
            return None
        if name not in COLUMNS:
            return None
    prompts: list[str | None] = []
    for row in range(3):
        values = {name: COLUMNS[name][row] for name in names}
        if names and all(not v.strip() for v in values.values()):
            prompts.append(None)
            continue
        text = "".join(lit + ("" if n is None else values[n]) for lit, n, _, _ in parsed)
        prompts.append(text if text.strip() else None)
    return prompts


@pytest.fixture(scope="module")
def template_server() -> Iterator[Emulator]:
    with emulator_in_thread() as emu:
        yield emu


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(
    template=st.lists(
        st.sampled_from(["{", "}", "{{", "}}", ".", "[", "]", "!", ":", "r", "0", " "])
        | st.sampled_from(["prompt", "a", "b_c", "__class__", "text", "Say: "]),
        max_size=8,
    ).map("".join)
)
def test_any_template_sends_only_literal_text_and_column_values_or_is_refused(
    template_server: Emulator, template: str
):
    expected = expected_prompts(template)
    with tempfile.TemporaryDirectory(prefix="aibatch-template-") as folder:
        source = Path(folder) / "in.csv"
        with source.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(COLUMNS)
            writer.writerows(zip(*COLUMNS.values(), strict=True))
        chats = template_server.stats.chat_requests
        result = invoke(
            "run", source, "--template", template, "--base-url", template_server.base_url, "-q"
        )
        event("refused" if expected is None else "rendered")
        if expected is None:
            assert result.exit_code == 2, (template, result.stderr)
            assert result.stderr.count("\n") == 1
            assert template_server.stats.chat_requests == chats
            return
        assert result.exit_code == 0, (template, result.stderr)
        sent = pq.read_table(Path(folder) / "in.responses.parquet").column("sent_prompt")
        assert sent.to_pylist() == expected, template
        assert template_server.stats.chat_requests - chats == len(set(expected) - {None})


def listening_sockets() -> dict[str, str]:
    """Listening TCP sockets of the whole machine: inode -> local address, from /proc."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as handle:
            for line in list(handle)[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    found[fields[9]] = fields[1]
    return found


def own_socket_inodes() -> set[str]:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


LOOPBACK = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1 and ::1 in /proc


def assert_own_listeners_are_loopback_only() -> int:
    listening = listening_sockets()
    own = [listening[inode] for inode in own_socket_inodes() if inode in listening]
    assert own, "no listening socket found"
    assert all(address.split(":")[0] in LOOPBACK for address in own), own
    return len(own)


async def test_the_emulator_binds_loopback_by_default():
    emu = Emulator()
    assert emu.host == "127.0.0.1"
    async with emu as url:
        assert url.startswith("http://127.0.0.1:")
        assert_own_listeners_are_loopback_only()


async def test_an_emulate_run_listens_on_loopback_only(tmp_path: Path):
    source, _ = write_prompts(tmp_path, 50)
    checked = []

    def on_progress(progress: Progress) -> None:
        if not checked:
            checked.append(assert_own_listeners_are_loopback_only())

    summary = await arun_job(
        JobSpec(input=str(source), emulate=True, concurrency=2), on_progress=on_progress
    )
    assert summary.ok == 50 and checked and checked[0] >= 1


def test_aibatch_emulate_defaults_to_loopback():
    result = invoke("emulate", "--help")
    assert "--host TEXT" in result.stdout and "[default: 127.0.0.1]" in result.stdout


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(folder: Path, skip: set[Path]) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode)
        for p in [folder, *folder.rglob("*")]
        if p not in skip
    }


def run_twice(folder: Path, emu: Emulator, *extra: Any) -> set[Path]:
    """A run, then a re-run after appending a row (a second part); the inputs it made."""
    source, _ = write_prompts(folder, 5)
    inputs = {folder, source}
    assert invoke("run", source, "--base-url", emu.base_url, "-q", *extra).exit_code == 0
    with source.open("a", encoding="utf-8") as handle:
        handle.write("r5,one more\n")
    assert invoke("run", source, "--base-url", emu.base_url, "-q", *extra).exit_code == 0
    return inputs


def test_output_and_checkpoint_are_never_world_writable_even_under_umask_000(
    tmp_path: Path, live_emulator: Emulator
):
    with umask(0o000):
        inputs = run_twice(tmp_path, live_emulator)
    made = modes(tmp_path, inputs)
    assert "in.responses.parquet" in made
    assert any(re.fullmatch(r".*/parts/00000002-[0-9a-f]{32}\.arrow", name) for name in made)
    assert ".in.responses.parquet.aibatch/lock" in made
    assert {name: oct(m) for name, m in made.items() if m & stat.S_IWOTH} == {}


def test_output_and_checkpoint_follow_a_strict_umask(tmp_path: Path, live_emulator: Emulator):
    with umask(0o077):
        inputs = run_twice(tmp_path, live_emulator)
    made = modes(tmp_path, inputs)
    assert {name: oct(m) for name, m in made.items() if m & 0o077} == {}


def test_the_summary_json_is_never_world_writable_even_under_umask_000(
    tmp_path: Path, live_emulator: Emulator
):
    with umask(0o000):
        run_twice(tmp_path, live_emulator, "--summary-json", tmp_path / "summary.json")
    assert not (tmp_path / "summary.json").stat().st_mode & stat.S_IWOTH
