"""``python -m benchmarks [--quick] [--only SECTIONS] [--reps N] [--write]``.

Runs the sections in order, prints each one's Markdown table as it finishes (progress
goes to stderr), then the targets and the headline. ``--write`` also writes
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import compileall
import sys
import time
from pathlib import Path

from .measure import Bench
from .report import Machine
from .sections import FULL, QUICK, SECTIONS, Section
from .targets import headline, targets

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
REPO = RESULTS.parent.parent


def compile_bytecode() -> None:
    """Write the bytecode of aibatch and the clients, as an installed package has it.

    With ``PYTHONDONTWRITEBYTECODE`` set (or a read-only tree), every run would compile
    aibatch's modules from source again: a cost no installed copy pays (pip compiles
    them at install), which would weigh on every start-up figure.
    """
    for folder in ("aibatch", "benchmarks"):
        compileall.compile_dir(REPO / folder, quiet=2)


#: sections run only when named in --only: the 10,000,000-row job takes most of an hour
OPT_IN = ("bigjob",)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="aibatch beside gpt4free's client and a bare baseline; prints Markdown.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    everyday = [name for name in SECTIONS if name not in OPT_IN]
    parser.add_argument(
        "--only",
        default=",".join(everyday),
        help=f"comma-separated sections of {','.join(SECTIONS)} [default: all but"
        f" {','.join(OPT_IN)}: most of an hour]",
    )
    parser.add_argument(
        "--reps", type=int, help="repetitions per comparison [default: 3, --quick: 1]"
    )
    parser.add_argument("--write", action="store_true", help=f"also write {RESULTS.name}")
    args = parser.parse_args(argv)
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = sorted(only - SECTIONS.keys())
    if unknown or not only:
        parser.error(f"--only takes some of {', '.join(SECTIONS)}; got {args.only!r}")
    args.only = [name for name in SECTIONS if name in only]  # resume reuses memory's job
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if not 1 <= args.reps <= 20:
        parser.error("--reps must be between 1 and 20")
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    machine = Machine()
    compile_bytecode()
    bench = Bench(reps=args.reps, log=log)
    started = time.monotonic()
    done: list[Section] = []
    broken: list[str] = []
    title = "# aibatch benchmarks" + (
        " (quick run: small sizes, not the record)" if args.quick else ""
    )
    intro = (
        f"{title}\n\n{machine.started:%Y-%m-%d %H:%M} UTC; plan `{plan.name}`, "
        f"{args.reps} repetition(s) per comparison, sections: {', '.join(args.only)}. "
        "Every figure is a median over the repetitions, with the range in brackets; the "
        "clients alternate within each comparison."
    )
    print(intro + "\n\n## Machine\n\n" + machine.block() + "\n", flush=True)
    try:
        for name in args.only:
            log(f"[{time.monotonic() - started:6.0f} s] {name}")
            try:
                section = SECTIONS[name](bench, plan)
            except RuntimeError as exc:  # the emulator would not start: no figures to give
                section = Section(name.capitalize(), f"Not measured: {exc}")
                broken.append(name)
            done.append(section)
            print(f"## {section.title}\n\n{section.body}\n\n{machine.line()}\n", flush=True)
        summary = (
            f"## Headline\n\n{headline(bench, plan)}\n\n## Targets\n\n{targets(bench, plan)}\n\n"
            f"{machine.line()}\n"
        )
        print(summary, flush=True)
        elapsed = time.monotonic() - started
        failures = [f"- {r.client} ({r.config.describe()}): {r.error}" for r in bench.failures]
        footer = f"Suite time: {elapsed / 60:.1f} min."
        if failures:
            footer += "\n\nFailed runs (left out of the figures):\n" + "\n".join(failures)
        print(footer, flush=True)
        if args.write:
            sections = "\n".join(f"## {s.title}\n\n{s.body}\n\n{machine.line()}\n" for s in done)
            RESULTS.write_text(
                f"{intro}\n\n{summary}\n## Machine\n\n{machine.block()}\n\n{sections}\n{footer}\n",
                encoding="utf-8",
            )
            log(f"wrote {RESULTS}")
    finally:
        bench.close()
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
