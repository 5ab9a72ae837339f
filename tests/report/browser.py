"""A page opened in a real headless Chromium, driven over the DevTools protocol on a pipe.

``--remote-debugging-pipe`` speaks the protocol on file descriptors 3 (to the browser)
and 4 (from it): no port is opened at all. :func:`open_page` loads a page, waits for its
load event and reports what a person would care about: the text it shows, what the
console said, and every URL it asked for.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import selectors
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

TIMEOUT = 60.0  # seconds for the whole visit


def chromium() -> str:
    """Debian's chromium; its absence fails the test (CI installs it), never skips it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is not installed: apt-get install chromium (.ci/run does)")
    return found


@dataclass
class Visit:
    """What a page showed and did."""

    text: str = ""
    cards: list[str] = field(default_factory=list)
    charts: list[dict[str, float]] = field(default_factory=list)
    console: list[str] = field(default_factory=list)  # messages, exceptions, log entries
    requests: list[str] = field(default_factory=list)


class _Pipe:
    def __init__(self, to_browser: int, from_browser: int, deadline: float) -> None:
        self.to_browser, self.from_browser, self.deadline = to_browser, from_browser, deadline
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        self.selector = selectors.DefaultSelector()
        self.selector.register(from_browser, selectors.EVENT_READ)

    def _message(self) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0 or not self.selector.select(left):
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self.from_browser, 1 << 16)
            if not chunk:
                raise ConnectionError("chromium closed the pipe")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        return message

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        request: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session is not None:
            request["sessionId"] = session
        os.write(self.to_browser, json.dumps(request).encode() + b"\0")
        while True:
            message = self._message()
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self.events.append(message)

    def wait_for(self, method: str) -> None:
        while not any(event.get("method") == method for event in self.events):
            self.events.append(self._message())


@contextlib.contextmanager
def _browser() -> Iterator[_Pipe]:
    binary = chromium()
    to_read, to_write = os.pipe()  # the browser reads commands from fd 3
    from_read, from_write = os.pipe()  # and writes answers to fd 4

    # Moved above 9, clear of 3 and 4; bash puts them at 3 and 4 and becomes chromium.
    child = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_read, from_write)]
    for fd in (to_read, from_write):
        os.close(fd)
    to_read, from_write = child
    placed = f'exec "$@" 3<&{to_read} 4>&{from_write} {to_read}<&- {from_write}>&-'
    with tempfile.TemporaryDirectory(prefix="aibatch-chromium-") as profile:
        args = [
            "/bin/bash",
            "-c",
            placed,
            "bash",
            binary,
            "--headless",
            "--no-sandbox",  # root in CI containers
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(to_read, from_write),
        )
        os.close(to_read)
        os.close(from_write)
        pipe = _Pipe(to_write, from_read, time.monotonic() + TIMEOUT)
        try:
            yield pipe
        finally:
            with contextlib.suppress(OSError, TimeoutError, ConnectionError, RuntimeError):
                pipe.call("Browser.close")
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
            os.close(to_write)
            os.close(from_read)


CARDS = "[...document.querySelectorAll('.card')].map(c => c.innerText.replace(/\\s+/g, ' '))"
CHARTS = (
    "[...document.querySelectorAll('figure svg')].map(s => {"
    " const r = s.getBoundingClientRect(); return {width: r.width, height: r.height}; })"
)


def open_page(path: Path) -> Visit:
    """Load ``path`` in headless Chromium and report what it showed, said and asked for."""
    visit = Visit()
    with _browser() as pipe:
        target = pipe.call("Target.createTarget", url="about:blank")["targetId"]
        session = pipe.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            pipe.call(f"{domain}.enable", session)
        pipe.events.clear()  # what about:blank did is not the page's
        pipe.call("Page.navigate", session, url=path.resolve().as_uri())
        pipe.wait_for("Page.loadEventFired")

        def evaluate(expression: str) -> Any:
            answer = pipe.call(
                "Runtime.evaluate", session, expression=expression, returnByValue=True
            )
            return answer["result"].get("value")

        visit.text = evaluate("document.body.innerText")
        visit.cards = evaluate(CARDS)
        visit.charts = evaluate(CHARTS)
        for event in pipe.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled":
                args = " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
                visit.console.append(f"console.{params['type']}: {args}")
            elif method == "Runtime.exceptionThrown":
                visit.console.append(f"exception: {params['exceptionDetails']}")
            elif method == "Log.entryAdded":
                entry = params["entry"]
                visit.console.append(f"{entry['level']} ({entry['source']}): {entry['text']}")
            elif method == "Network.requestWillBeSent":
                visit.requests.append(params["request"]["url"])
    return visit
