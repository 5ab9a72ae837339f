"""The command line the two comparison clients share (``--url``, ``--prompts``, ``-c``).

A client is one coroutine function ``run(url, prompts, concurrency)`` returning one
answer (a string) or one exception per prompt. The command prints a JSON line with the
counts and exits 1 unless every prompt got a non-empty answer, so that the harness never
reports the speed of a run that failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

from .prompts import load

Answers = Sequence[str | BaseException]
Client = Callable[[str, list[str], int], Awaitable[Answers]]


def main(name: str, client: Client, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}")
    parser.add_argument("--url", required=True, help="emulator base URL (loopback)")
    parser.add_argument("--prompts", required=True, help="a count N, or a CSV with a prompt column")
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://127.0.0.1:", "http://localhost:")):
        parser.error("--url must point at 127.0.0.1")
    if args.concurrency < 1:
        parser.error("-c must be at least 1")
    prompts = load(args.prompts)
    started = time.perf_counter()
    answers = asyncio.run(client(args.url, prompts, args.concurrency))
    wall = time.perf_counter() - started
    ok = sum(1 for a in answers if isinstance(a, str) and a)
    errors = Counter(type(a).__name__ for a in answers if isinstance(a, BaseException))
    report = {
        "client": name,
        "prompts": len(prompts),
        "ok": ok,
        "failed": len(prompts) - ok,
        "errors": dict(errors),
        "answer_chars": sum(len(a) for a in answers if isinstance(a, str)),
        "send_s": round(wall, 3),
    }
    print(json.dumps(report))
    if ok != len(prompts):
        first = next((a for a in answers if isinstance(a, BaseException)), None)
        print(f"{name}: {len(prompts) - ok} prompts failed; first: {first!r}", file=sys.stderr)
        return 1
    return 0
