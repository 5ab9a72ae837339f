"""The issue's targets beside the figures measured, and the headline for the README.

Figures only: a missed target is printed, never turned into a failing exit code. Each
line is computed from the runs this invocation made; a target whose runs were not made
(``--only``) reads ``n/a``.
"""

from __future__ import annotations

from .bigjob import bigjob_targets
from .measure import (
    AIBATCH,
    BASELINE,
    CLICK,
    GPT4FREE,
    HELP,
    SDK_CLIENTS,
    Bench,
    Config,
    Run,
    median,
)
from .report import num, ratio, table
from .sections import (
    ADAPTIVE_LIMIT,
    OVERLOAD_LIMIT,
    STARTUP,
    Plan,
    adaptive_figures,
    overload_config,
    schema_configs,
    sdk_config,
)

SDK_TARGET_CONCURRENCY = 512


def _runs(bench: Bench, client: str, config: Config) -> list[Run]:
    return [r for r in bench.runs.get((client, config), []) if r.good]


def _rate(bench: Bench, client: str, config: Config) -> float:
    return median(r.rows_per_s for r in _runs(bench, client, config))


def _cpu(bench: Bench, client: str, config: Config) -> float:
    return median(r.cpu_per_prompt for r in _runs(bench, client, config))


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "no")


def _cmp(value: float, limit: float, *, at_least: bool) -> bool | None:
    if value != value:
        return None
    return value >= limit if at_least else value <= limit


def targets(bench: Bench, plan: Plan) -> str:
    rows: list[list[str]] = []

    def add(target: str, value: float, limit: float, *, at_least: bool, shown: str = "") -> None:
        rows.append([target, shown or ratio(value), _met(_cmp(value, limit, at_least=at_least))])

    for c, n in plan.throughput:
        if 8 <= c <= 128:
            config = Config(concurrency=c, prompts=n)
            value = _rate(bench, AIBATCH, config) / _rate(bench, BASELINE, config)
            add(f"c={c}: aibatch rows/s / baseline >= 0.95", value, 0.95, at_least=True)

    c, n = plan.cost
    config = Config(concurrency=c, prompts=n)
    a, g, b = (_rate(bench, client, config) for client in (AIBATCH, GPT4FREE, BASELINE))
    add(f"c={c}, {n:,} prompts: aibatch / gpt4free rows/s >= 2.5", a / g, 2.5, at_least=True)
    add(f"c={c}, {n:,} prompts: aibatch / baseline rows/s >= 0.75", a / b, 0.75, at_least=True)
    cpu = _cpu(bench, AIBATCH, config) / _cpu(bench, GPT4FREE, config)
    add(f"c={c}: aibatch / gpt4free CPU per prompt <= 0.4", cpu, 0.4, at_least=False)

    def wall(client: str) -> float:
        return median(r.wall_s for r in _runs(bench, client, STARTUP))

    add(
        "one-prompt `aibatch run` / the bare client's one prompt, wall <= 2",
        wall(AIBATCH) / wall(BASELINE),
        2,
        at_least=False,
    )
    add(
        "`aibatch --help` / `python -c 'import click'`, wall <= 2.5",
        wall(HELP) / wall(CLICK),
        2.5,
        at_least=False,
    )

    clean = [
        r
        for (client, cfg), runs in bench.runs.items()
        if client == AIBATCH and not cfg.faults and cfg.prompts >= 100
        for r in runs
        if r.good and r.reused == 0
    ]
    worst = max((r.requests_per_prompt for r in clean), default=float("nan"))
    add(
        "aibatch requests per prompt <= 1.01 without faults (worst run)",
        worst,
        1.01,
        at_least=False,
        shown=num(worst, 4),
    )

    sizes = plan.memory_sizes
    for fmt in ("csv", "parquet"):
        big = Config(
            concurrency=plan.memory_concurrency, prompts=sizes[-1], latency=0.0, input_format=fmt
        )
        rss = median(r.peak_rss_mb for r in _runs(bench, AIBATCH, big))
        add(
            f"peak RSS at {sizes[-1]:,} rows ({fmt}) < 500 MB",
            rss,
            500,
            at_least=False,
            shown=f"{num(rss)} MB",
        )
        if len(sizes) > 1:
            small = Config(
                concurrency=plan.memory_concurrency,
                prompts=sizes[-2],
                latency=0.0,
                input_format=fmt,
            )
            growth = rss / median(r.peak_rss_mb for r in _runs(bench, AIBATCH, small))
            add(
                f"peak RSS {sizes[-1]:,} / {sizes[-2]:,} rows ({fmt}) <= 1.5",
                growth,
                1.5,
                at_least=False,
            )

    for n in plan.adaptive_prompts:
        auto, refused, best = adaptive_figures(bench, n)
        where = f"429 above {ADAPTIVE_LIMIT} in flight, {n:,} prompts: -c auto"
        add(f"{where} / best fixed -c (-c {best}) rows/s >= 0.9", auto, 0.9, at_least=True)
        add(
            f"{where}: requests answered 429 <= 2%",
            refused,
            0.02,
            at_least=False,
            shown=f"{refused * 100:.1f}%" if refused == refused else "n/a",
        )

    for protocol, status in (("aichatonline", 503), ("anthropic", 529)):
        fixed, auto = (
            overload_config(plan, status, auto=a, protocol=protocol) for a in (False, True)
        )
        requests_per_row = median(r.requests_per_prompt for r in _runs(bench, AIBATCH, auto))
        where = (
            f"{protocol}, {status} above {OVERLOAD_LIMIT} in flight, {plan.overload_prompts:,} rows"
        )
        add(
            f"{where}: -c auto / -c {OVERLOAD_LIMIT} rows/s >= 0.9",
            _rate(bench, AIBATCH, auto) / _rate(bench, AIBATCH, fixed),
            0.9,
            at_least=True,
        )
        add(
            f"{where}: -c auto requests per row <= 1.1",
            requests_per_row,
            1.1,
            at_least=False,
            shown=num(requests_per_row, 3),
        )

    for protocol, sdk in SDK_CLIENTS.items():
        for c, n in plan.sdk:
            if c != SDK_TARGET_CONCURRENCY:
                continue
            config = sdk_config(protocol, c, n)
            a, b, s = (_rate(bench, client, config) for client in (AIBATCH, BASELINE, sdk))
            where = f"{protocol}, c={c}, {n:,} prompts: aibatch"
            add(f"{where} / bare client rows/s >= 0.9", a / b, 0.9, at_least=True)
            add(f"{where} / {sdk} rows/s >= 10", a / s, 10, at_least=True)
            cpu = _cpu(bench, AIBATCH, config) / _cpu(bench, sdk, config)
            add(f"{where} / {sdk} CPU per prompt <= 0.1", cpu, 0.1, at_least=False)

    plain, typed = schema_configs(bench, plan)
    add(
        f"c={plain.concurrency}, 5-property schema: rows/s / no schema >= 0.9",
        _rate(bench, AIBATCH, typed) / _rate(bench, AIBATCH, plain),
        0.9,
        at_least=True,
    )

    reruns = bench.reruns
    if reruns:
        sent = max(r.token_requests + r.chat_requests for r in reruns)
        wall = median(r.wall_s for r in reruns)
        add(
            f"re-run of a finished {plan.resume_rows:,}-row job sends nothing",
            sent,
            0,
            at_least=False,
            shown=f"{sent} requests",
        )
        add(
            f"re-run of a finished {plan.resume_rows:,}-row job < 10 s",
            wall,
            10,
            at_least=False,
            shown=f"{num(wall, 2)} s",
        )
    else:
        rows.append([f"re-run of a finished {plan.resume_rows:,}-row job", "n/a", "n/a"])
    for target, value, limit, shown in bigjob_targets(bench, plan):
        add(target, value, limit, at_least=False, shown=shown if value == value else "n/a")
    return table(["target (for reference)", "measured (medians)", "met"], rows)


def headline(bench: Bench, plan: Plan) -> str:
    """A few sentences with the main figures, to quote in the README."""
    parts = []
    c, n = plan.cost
    config = Config(concurrency=c, prompts=n)
    a, g, b = (_rate(bench, client, config) for client in (AIBATCH, GPT4FREE, BASELINE))
    if a == a and g == g and b == b:
        ca, cg = _cpu(bench, AIBATCH, config), _cpu(bench, GPT4FREE, config)
        req = {
            client: median(r.requests_per_prompt for r in _runs(bench, client, config))
            for client in (AIBATCH, GPT4FREE)
        }
        parts.append(
            f"At concurrency {c} on {n:,} prompts with 50 ms to the first chunk, `aibatch run` "
            f"(CSV in, Parquet out, checkpoint on) did {num(a)} rows/s, gpt4free's own client "
            f"{num(g)} and a bare aiohttp baseline {num(b)}: {a / g:.1f}x gpt4free and "
            f"{a / b:.2f} of the baseline, at {ca * 1000:.2f} ms of CPU per prompt against "
            f"gpt4free's {cg * 1000:.2f} ({ca / cg:.2f}x), with {req[AIBATCH]:.3f} requests per "
            f"prompt against gpt4free's {req[GPT4FREE]:.3f}."
        )
    big = plan.memory_sizes[-1]
    rss = {
        fmt: median(
            r.peak_rss_mb
            for r in _runs(
                bench,
                AIBATCH,
                Config(
                    concurrency=plan.memory_concurrency, prompts=big, latency=0.0, input_format=fmt
                ),
            )
        )
        for fmt in ("csv", "parquet")
    }
    if all(v == v for v in rss.values()):
        parts.append(
            f"Peak RSS on {big:,} rows: {num(rss['csv'])} MB from CSV, "
            f"{num(rss['parquet'])} MB from Parquet."
        )
    if bench.reruns:
        wall = median(r.wall_s for r in bench.reruns)
        sent = max(r.token_requests + r.chat_requests for r in bench.reruns)
        parts.append(
            f"Re-running a finished {plan.resume_rows:,}-row job took {wall:.1f} s and sent "
            f"{sent} requests."
        )
    return " ".join(parts) or "n/a (the sections it quotes were not run)"
