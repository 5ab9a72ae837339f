"""The sections of the suite, each one Markdown table, and the targets and headline.

A :class:`Plan` holds the sizes: :data:`FULL` for the record, :data:`QUICK` for a run in
under a minute. Sections ask :class:`~benchmarks.measure.Bench` for runs; runs another
section already made with the same config are reused, not repeated.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass

from .bigjob import bigjob
from .measure import (
    AIBATCH,
    BASELINE,
    CLICK,
    CLIENTS,
    GPT4FREE,
    HELP,
    MIXED_FAULTS,
    SDK_CLIENTS,
    Bench,
    Config,
    Run,
    median,
)
from .report import num, ratio, sig, spread, table

LATENCY_MS = 50


@dataclass(frozen=True, slots=True)
class Plan:
    """How big each section is."""

    name: str
    throughput: tuple[tuple[int, int], ...]  # (concurrency, prompts) at 50 ms
    cost: tuple[int, int]  # (concurrency, prompts) at 50 ms, for all three clients
    zero_latency_prompts: int  # aibatch alone, at the cost concurrency
    requests: tuple[int, ...]  # concurrencies whose runs the requests table reports
    memory_sizes: tuple[int, ...]
    memory_concurrency: int
    resume_rows: int
    faults: tuple[int, int]  # (concurrency, prompts)
    adaptive_prompts: tuple[int, ...]  # job sizes against a server taking ADAPTIVE_LIMIT at once
    overload_prompts: int  # against a server refusing above OVERLOAD_LIMIT in flight
    dask_prompts: int  # at zero latency, c=1024
    sdk: tuple[tuple[int, int], ...]  # (concurrency, prompts) at 50 ms, aibatch beside an SDK
    schema: tuple[int, int] = (512, 20_000)  # (concurrency, prompts), with and without --schema

    def prompts_at(self, concurrency: int) -> int:
        for c, n in (*self.throughput, self.cost):
            if c == concurrency:
                return n
        raise ValueError(f"no prompt count planned for concurrency {concurrency}")


FULL = Plan(
    name="full",
    # At least 20 s at the bound (concurrency / 50 ms) up to 128; 50,000 prompts above.
    throughput=((1, 400), (8, 3_200), (32, 12_800), (128, 51_200), (512, 50_000), (1024, 50_000)),
    cost=(512, 50_000),
    zero_latency_prompts=50_000,
    requests=(128, 512),
    memory_sizes=(10_000, 100_000, 1_000_000),
    memory_concurrency=512,
    resume_rows=100_000,
    faults=(128, 20_000),
    adaptive_prompts=(3_000, 16_000),
    overload_prompts=1_500,
    dask_prompts=100_000,
    # 5 s (c=32) and 2.5 s (c=128) at the bound; above, about 3 s of aibatch and 40 s of
    # an SDK script per run
    sdk=((32, 3_200), (128, 6_400), (512, 10_000), (1024, 10_000)),
)
QUICK = Plan(
    name="quick",
    throughput=((8, 160), (128, 2_000)),
    cost=(512, 2_000),
    zero_latency_prompts=2_000,
    requests=(128, 512),
    memory_sizes=(2_000, 5_000),
    memory_concurrency=512,
    resume_rows=5_000,
    faults=(128, 1_500),
    adaptive_prompts=(3_000,),
    overload_prompts=1_500,
    dask_prompts=5_000,
    sdk=((32, 640), (128, 2_560), (512, 2_000), (1024, 2_000)),
    schema=(512, 2_000),
)


@dataclass(frozen=True, slots=True)
class Section:
    title: str
    body: str


def _good(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.good]


def _failed(runs: list[Run]) -> str:
    """A table cell for a config whose runs all failed (details in the report's footer)."""
    failed = sum(1 for r in runs if r.error)
    return f"failed x{failed} (see Failed runs)" if failed else "no runs"


def _cpu_cell(runs: list[Run], cpu: Callable[[Run], float], cores: Callable[[Run], float]) -> str:
    return f"{num(median(cpu(r) for r in runs), 1)} ({median(cores(r) for r in runs):.2f})"


def limited_by(
    bound_ratio: float, client_cores: float, emulator_cores: float, overflows: float = 0
) -> str:
    """Which resource ran out, from the CPU each process used over the client's wall time."""
    if bound_ratio >= 0.9:
        verdict = "latency (at the bound)"
    else:
        saturated = [
            name
            for name, cores in (("client", client_cores), ("emulator", emulator_cores))
            if cores >= 0.85
        ]
        if saturated:
            verdict = " and ".join(saturated) + " CPU"
        elif client_cores + emulator_cores >= 1.6:
            verdict = "the 2 cores, shared"
        else:
            verdict = "neither CPU (start-up, waits)"
    if overflows:
        verdict += f"; {overflows:,.0f} listen queue overflows"
    return verdict


def throughput(bench: Bench, plan: Plan) -> Section:
    rows = []
    for c, n in plan.throughput:
        config = Config(concurrency=c, prompts=n)
        found = bench.compare_clients(CLIENTS, config)
        base = median(r.rows_per_s for r in _good(found[BASELINE]))
        g4f = median(r.rows_per_s for r in _good(found[GPT4FREE]))
        for client in CLIENTS:
            runs = _good(found[client])
            if not runs:
                rows.append([f"{c:,}", f"{n:,}", client, _failed(found[client]), *["-"] * 7])
                continue
            rate = median(r.rows_per_s for r in runs)
            bound_ratio = rate / config.bound
            rows.append(
                [
                    f"{c:,}",
                    f"{n:,}",
                    client,
                    spread([r.rows_per_s for r in runs], num),
                    ratio(bound_ratio),
                    ratio(rate / g4f),
                    ratio(rate / base),
                    spread([r.wall_s for r in runs], lambda v: num(v, 1)),
                    _cpu_cell(runs, lambda r: r.cpu_s, lambda r: r.client_cores),
                    _cpu_cell(runs, lambda r: r.emulator_cpu_s, lambda r: r.emulator_cores),
                    limited_by(
                        bound_ratio,
                        median(r.client_cores for r in runs),
                        median(r.emulator_cores for r in runs),
                        median(r.listen_overflows for r in runs),
                    ),
                ]
            )
    headers = [
        "concurrency",
        "prompts",
        "client",
        "rows/s median (range)",
        f"/ bound (c / {LATENCY_MS} ms)",
        "/ gpt4free",
        "/ baseline",
        "wall s",
        "client CPU s (cores)",
        "emulator CPU s (cores)",
        "limited by",
    ]
    note = (
        f"\n\n{LATENCY_MS} ms to the first chunk, 8 chunks per answer. rows/s = prompts / wall "
        "time of the whole client process, start-up included. CPU s is user + sys of each "
        "process over the client's run; cores = CPU s / wall s (this machine has "
        f"{_cores()}). A process near 1.0 core is out of CPU."
    )
    return Section("Throughput", table(headers, rows) + note)


def _cores() -> str:
    return f"{len(os.sched_getaffinity(0))} usable cores"


def cost(bench: Bench, plan: Plan) -> Section:
    c, n = plan.cost
    at_latency = bench.compare_clients(CLIENTS, Config(concurrency=c, prompts=n))
    zero = Config(concurrency=c, prompts=plan.zero_latency_prompts, latency=0.0)
    at_zero = bench.compare_clients([AIBATCH], zero)
    startup = bench.compare_clients(CLIENTS, Config(concurrency=1, prompts=1, latency=0.0))

    g4f = median(r.cpu_per_prompt for r in _good(at_latency[GPT4FREE]))
    base = median(r.cpu_per_prompt for r in _good(at_latency[BASELINE]))
    rows = []
    groups: list[tuple[str, str, list[Run]]] = [
        *(
            (client, f"c={c}, {n:,} prompts, {LATENCY_MS} ms", at_latency[client])
            for client in CLIENTS
        ),
        (AIBATCH, f"c={c}, {zero.prompts:,} prompts, 0 ms", at_zero[AIBATCH]),
        *((client, "1 prompt, 0 ms (start-up)", startup[client]) for client in CLIENTS),
    ]
    for client, setting, found in groups:
        runs = _good(found)
        if not runs:
            rows.append([client, setting, _failed(found), *["-"] * 7])
            continue
        per_prompt = median(r.cpu_per_prompt for r in runs)
        compare = setting.endswith(f"{LATENCY_MS} ms")
        rows.append(
            [
                client,
                setting,
                spread([r.cpu_per_prompt * 1000 for r in runs], sig),
                ratio(per_prompt / g4f) if compare else "-",
                ratio(per_prompt / base) if compare else "-",
                num(median(r.process.user_s for r in runs if r.process), 2),
                num(median(r.process.sys_s for r in runs if r.process), 2),
                spread([r.wall_s for r in runs], lambda v: num(v, 2)),
                num(median(r.client_cores for r in runs), 2),
                num(median(r.peak_rss_mb for r in runs), 0),
            ]
        )
    headers = [
        "client",
        "setting",
        "CPU ms per prompt",
        "/ gpt4free",
        "/ baseline",
        "user s",
        "sys s",
        "wall s",
        "cores",
        "peak RSS MB",
    ]
    note = (
        "\n\nCPU = user + sys of the whole client process (os.wait4), end to end: start-up, "
        "reading the CSV (aibatch), sending, checkpoint and Parquet output (aibatch). The "
        "start-up rows are one prompt each: the fixed cost every run pays."
    )
    return Section("Cost per prompt", table(headers, rows) + note)


STARTUP = Config(concurrency=1, prompts=1, latency=0.0)  # shared with the cost section
STARTUP_CLIENTS = (AIBATCH, BASELINE, HELP, CLICK)


def startup_runs(bench: Bench) -> dict[str, list[Run]]:
    """The start-up runs: one prompt (aibatch, the bare client), ``--help``, ``import click``.

    Each takes well under a second, and start-up is what varies most from one run to
    the next, so this comparison takes five times the repetitions of the others.
    """
    return bench.compare_clients(STARTUP_CLIENTS, STARTUP, reps=min(5 * bench.reps, 20))


def startup(bench: Bench, plan: Plan) -> Section:
    """What a short job pays every time: the whole process, one prompt, or only --help."""
    found = startup_runs(bench)
    walls = {c: median(r.wall_s for r in _good(found[c])) for c in STARTUP_CLIENTS}
    compared = {AIBATCH: BASELINE, BASELINE: BASELINE, HELP: CLICK, CLICK: CLICK}
    what = {
        AIBATCH: "`aibatch run` of a one-row CSV: Parquet out, checkpoint on",
        BASELINE: "the bare client: imports aiohttp, posts one prompt, reads the answer",
        HELP: "`aibatch --help`",
        CLICK: "`python -c 'import click'`",
    }
    rows = []
    for client in STARTUP_CLIENTS:
        runs = _good(found[client])
        if not runs:
            rows.append([client, what[client], _failed(found[client]), *["-"] * 4])
            continue
        rows.append(
            [
                client,
                what[client],
                spread([r.wall_s for r in runs], lambda v: num(v, 3)),
                f"{ratio(walls[client] / walls[compared[client]])} of {compared[client]}",
                num(median(r.process.user_s for r in runs if r.process), 3),
                num(median(r.process.sys_s for r in runs if r.process), 3),
                num(median(r.peak_rss_mb for r in runs)),
            ]
        )
    headers = ["client", "what", "wall s", "ratio", "user s", "sys s", "peak RSS MB"]
    note = (
        "\n\nEach a whole process, timed from `Popen` to its exit, alternating; the runs "
        "that send talk to an emulator at 0 ms in its own process. Bytecode compiled "
        "beforehand, as an installed package has it."
    )
    return Section("Start-up", table(headers, rows) + note)


def requests(bench: Bench, plan: Plan) -> Section:
    rows = []
    for c in plan.requests:
        n = plan.prompts_at(c)
        found = bench.compare_clients(CLIENTS, Config(concurrency=c, prompts=n))
        for client in CLIENTS:
            runs = _good(found[client])
            if not runs:
                rows.append([client, f"{c:,}", f"{n:,}", _failed(found[client]), *["-"] * 5])
                continue
            rows.append(
                [
                    client,
                    f"{c:,}",
                    f"{n:,}",
                    num(median(r.token_requests for r in runs)),
                    num(median(r.chat_requests for r in runs)),
                    spread([r.requests_per_prompt for r in runs], lambda v: num(v, 4)),
                    spread([r.connections / n for r in runs], lambda v: num(v, 3)),
                    num(median(r.listen_overflows for r in runs)),
                ]
            )
    headers = [
        "client",
        "concurrency",
        "prompts",
        "token requests",
        "chat requests",
        "requests per prompt",
        "connections per prompt",
        "listen queue overflows",
    ]
    note = (
        "\n\nRequests from the emulator's /stats, before and after each run. Connections: TCP "
        "connections the emulator accepted during the run (PassiveOpens in /proc/net/snmp, "
        "which counts the whole network namespace: other servers here would add to it). "
        "Listen queue overflows: connections the kernel dropped because the emulator's accept "
        "queue (a backlog of 4096) was full; each costs the client a SYN retry "
        "about a second later (TcpExt ListenOverflows, namespace-wide too)."
    )
    return Section("Requests per prompt", table(headers, rows) + note)


def memory(bench: Bench, plan: Plan) -> Section:
    c = plan.memory_concurrency
    configs = [
        Config(concurrency=c, prompts=n, latency=0.0, input_format=fmt)
        for n in plan.memory_sizes
        for fmt in ("csv", "parquet")
    ]
    bench.keep.update(cfg for cfg in configs if _resumable(cfg, plan))
    found = bench.compare([(AIBATCH, cfg) for cfg in configs], reps=1)
    reference = plan.memory_sizes[-2] if len(plan.memory_sizes) > 1 else plan.memory_sizes[-1]
    ref_rss = {
        cfg.input_format: median(r.peak_rss_mb for r in _good(found[(AIBATCH, cfg)]))
        for cfg in configs
        if cfg.prompts == reference
    }
    rows = []
    for cfg in configs:
        runs = _good(found[(AIBATCH, cfg)])
        if not runs:
            rows.append([f"{cfg.prompts:,}", cfg.input_format, _failed(found[(AIBATCH, cfg)])])
            rows[-1] += ["-"] * 5
            continue
        rss = median(r.peak_rss_mb for r in runs)
        rows.append(
            [
                f"{cfg.prompts:,}",
                cfg.input_format,
                num(rss),
                ratio(rss / ref_rss.get(cfg.input_format, float("nan"))),
                num(median(r.wall_s for r in runs), 1),
                num(median(r.rows_per_s for r in runs)),
                num(median(r.cpu_s for r in runs), 1),
            ]
        )
    headers = [
        "rows",
        "input",
        "peak RSS MB",
        f"/ {reference:,} rows",
        "wall s",
        "rows/s",
        "CPU s",
    ]
    note = (
        f"\n\naibatch run, c={c}, 0 ms latency, short prompts, output Parquet, checkpoint on. "
        "Peak RSS of the aibatch process itself (ru_maxrss from os.wait4). One run each: "
        "peak RSS hardly varies between runs."
    )
    return Section("Memory", table(headers, rows) + note)


def _resumable(config: Config, plan: Plan) -> bool:
    return config.prompts == plan.resume_rows and config.input_format == "csv"


def resume(bench: Bench, plan: Plan) -> Section:
    config = Config(concurrency=plan.memory_concurrency, prompts=plan.resume_rows, latency=0.0)
    bench.keep.add(config)
    first = bench.compare([(AIBATCH, config)], reps=1)[(AIBATCH, config)][0]
    run_dir = bench.finished.get(config)
    headers = [
        "rows",
        "first run wall s",
        "first run requests",
        "re-run wall s",
        "re-run requests",
        "rows reused",
        "re-run CPU s",
        "re-run peak RSS MB",
    ]
    if not first.good or run_dir is None:
        return Section("Resume cost", table(headers, [[f"{config.prompts:,}", _failed([first])]]))
    bench.log(f"  re-running the finished {config.prompts:,}-row job x {bench.reps}")
    with bench.emulator(config) as emulator:
        reruns = [
            bench.run_one(AIBATCH, config, emulator, run_dir=run_dir, keep=True)
            for _ in range(bench.reps)
        ]
    good = bench.reruns = _good(reruns)
    if not good:
        cells = [f"{config.prompts:,}", num(first.wall_s, 1), _failed(reruns)]
    else:
        cells = [
            f"{config.prompts:,}",
            num(first.wall_s, 1),
            num(first.token_requests + first.chat_requests),
            spread([r.wall_s for r in good], lambda v: num(v, 2)),
            spread([r.token_requests + r.chat_requests for r in good], num),
            num(median(r.reused for r in good)),
            num(median(r.cpu_s for r in good), 2),
            num(median(r.peak_rss_mb for r in good)),
        ]
    note = (
        "\n\nThe same `aibatch run` command again on a finished job (CSV input, "
        f"c={config.concurrency}), against a fresh emulator: requests are what it received."
    )
    return Section("Resume cost", table(headers, [cells]) + note)


def faults(bench: Bench, plan: Plan) -> Section:
    c, n = plan.faults
    clean = Config(concurrency=c, prompts=n)
    faulty = Config(concurrency=c, prompts=n, faults=tuple(MIXED_FAULTS.items()))
    found = bench.compare([(AIBATCH, clean), (AIBATCH, faulty)])
    clean_rate = median(r.rows_per_s for r in _good(found[(AIBATCH, clean)]))
    rows = []
    for label, cfg in (("no faults", clean), ("10% mixed faults", faulty)):
        runs = _good(found[(AIBATCH, cfg)])
        if not runs:
            rows.append([label, _failed(found[(AIBATCH, cfg)]), *["-"] * 7])
            continue
        outcomes = runs[0].outcomes
        injected = "/".join(
            num(median(r.outcomes.get(k, 0) for r in runs))
            for k in ("server_error", "rate_limited", "cut")
        )
        rows.append(
            [
                label,
                spread([r.rows_per_s for r in runs], num),
                ratio(median(r.rows_per_s for r in runs) / clean_rate),
                spread([r.requests_per_prompt for r in runs], lambda v: num(v, 3)),
                num(median(r.ok for r in runs)),
                num(median(r.failed for r in runs)),
                injected if outcomes else "0/0/0",
                num(median(r.wall_s for r in runs), 1),
                num(median(r.cpu_s for r in runs), 1),
            ]
        )
    headers = [
        "emulator",
        "rows/s",
        "/ no faults",
        "requests per prompt",
        "ok rows",
        "failed rows",
        "500 / 429 / cut",
        "wall s",
        "CPU s",
    ]
    share = ", ".join(f"{k} {v:g}" for k, v in MIXED_FAULTS.items())
    note = (
        f"\n\naibatch alone (the other clients do not retry), c={c}, {n:,} prompts, "
        f"{LATENCY_MS} ms; faults: {share} (seconds for retry-after). Requests per prompt "
        "counts token requests too."
    )
    return Section("Under faults", table(headers, rows) + note)


ADAPTIVE_LIMIT = 40
ADAPTIVE_FIXED = (32, 40, 64, 512)
ADAPTIVE_AUTO = "-c auto"


def adaptive_configs(prompts: int) -> dict[str, Config]:
    """Fixed -c and -c auto, against a server answering 429 above 40 requests in flight."""
    limited = (
        ("max-inflight", float(ADAPTIVE_LIMIT)),
        ("overload-status", 429.0),
        ("retry-after", 1.0),
    )
    configs = {
        f"-c {c}": Config(concurrency=c, prompts=prompts, faults=limited) for c in ADAPTIVE_FIXED
    }
    configs[ADAPTIVE_AUTO] = Config(
        concurrency=512, prompts=prompts, faults=limited, extra=("--adaptive",)
    )
    return configs


def adaptive_figures(bench: Bench, prompts: int) -> tuple[float, float, float]:
    """-c auto's rows/s over the best fixed -c's, its share of 429s, and the best fixed -c."""
    configs = adaptive_configs(prompts)
    rates = {
        label: median(r.rows_per_s for r in _good(bench.runs.get((AIBATCH, cfg), [])))
        for label, cfg in configs.items()
    }
    fixed = {label: rate for label, rate in rates.items() if label != ADAPTIVE_AUTO}
    best = max(fixed, key=lambda label: fixed[label] if fixed[label] == fixed[label] else -1)
    runs = _good(bench.runs.get((AIBATCH, configs[ADAPTIVE_AUTO]), []))
    refused = median(_share_429(r) for r in runs)
    return rates[ADAPTIVE_AUTO] / fixed[best], refused, configs[best].concurrency


def _share_429(run: Run) -> float:
    return run.outcomes.get("rate_limited", 0) / max(run.chat_requests, 1)


def adaptive(bench: Bench, plan: Plan) -> Section:
    """-c auto against a server that answers 429 above 40 in flight, beside fixed -c."""
    sized = {n: adaptive_configs(n) for n in plan.adaptive_prompts}
    found = bench.compare(
        [(AIBATCH, cfg) for configs in sized.values() for cfg in configs.values()]
    )
    rows = []
    for n, configs in sized.items():
        rates = {
            label: median(r.rows_per_s for r in _good(found[(AIBATCH, cfg)]))
            for label, cfg in configs.items()
        }
        best = max(v for k, v in rates.items() if k != ADAPTIVE_AUTO and v == v)
        for label, cfg in configs.items():
            runs = _good(found[(AIBATCH, cfg)])
            if not runs:
                rows.append([f"{n:,}", label, _failed(found[(AIBATCH, cfg)]), *["-"] * 5])
                continue
            rows.append(
                [
                    f"{n:,}",
                    label,
                    spread([r.rows_per_s for r in runs], num),
                    ratio(rates[label] / best),
                    spread([_share_429(r) * 100 for r in runs], lambda v: f"{v:.1f}%"),
                    spread([r.requests_per_prompt for r in runs], lambda v: num(v, 3)),
                    num(median(r.summary.get("concurrency", cfg.concurrency) for r in runs)),
                    num(median(r.wall_s for r in runs), 1),
                ]
            )
    headers = [
        "prompts",
        "concurrency",
        "rows/s",
        "/ best fixed",
        "requests answered 429",
        "requests per row",
        "settled at",
        "wall s",
    ]
    note = (
        f"\n\nThe emulator answers 429 (Retry-After: 1) above {ADAPTIVE_LIMIT} requests in "
        f"flight, {LATENCY_MS} ms to the first chunk; the bound is "
        f"{ADAPTIVE_LIMIT / (LATENCY_MS / 1000):,.0f} rows/s. `-c auto` is `-c 512 --adaptive`; "
        "`settled at` is the summary's concurrency; rows/s counts the whole process, "
        "start-up included."
    )
    return Section("Adaptive concurrency", table(headers, rows) + note)


OVERLOAD_LIMIT = 12
OVERLOAD_STATUSES = (503, 529, 429)


def overload_config(
    plan: Plan, status: int, *, auto: bool, protocol: str = "aichatonline"
) -> Config:
    """A run against a server that answers ``status`` above 12 in flight: -c auto or -c 12."""
    faults = (
        ("max-inflight", float(OVERLOAD_LIMIT)),
        ("overload-status", float(status)),
        ("retry-after", 1.0),
    )
    if auto:
        return Config(
            concurrency=512,
            prompts=plan.overload_prompts,
            faults=faults,
            extra=("--adaptive",),
            protocol=protocol,
        )
    return Config(
        concurrency=OVERLOAD_LIMIT, prompts=plan.overload_prompts, faults=faults, protocol=protocol
    )


# (protocol, status) of each -c auto run; each protocol's first is also run at -c 12
OVERLOAD_CASES = (*(("aichatonline", s) for s in OVERLOAD_STATUSES), ("anthropic", 529))


def overload(bench: Bench, plan: Plan) -> Section:
    """-c auto against a server refusing with 503, 529 or 429 above 12 in flight, beside -c 12."""
    configs: dict[tuple[str, str, str], Config] = {}
    for protocol, status in OVERLOAD_CASES:
        if not any(key[0] == protocol for key in configs):
            configs[(protocol, str(status), "-c 12")] = overload_config(
                plan, status, auto=False, protocol=protocol
            )
        configs[(protocol, str(status), "-c auto")] = overload_config(
            plan, status, auto=True, protocol=protocol
        )
    found = bench.compare([(AIBATCH, cfg) for cfg in configs.values()])
    fixed: dict[str, float] = {}
    for (protocol, _, label), cfg in configs.items():
        if label == "-c 12":
            good = _good(found[(AIBATCH, cfg)])
            fixed[protocol] = median(r.rows_per_s for r in good) if good else float("nan")
    rows = []
    for (protocol, status, label), cfg in configs.items():
        runs = _good(found[(AIBATCH, cfg)])
        if not runs:
            rows.append([protocol, status, label, _failed(found[(AIBATCH, cfg)]), *["-"] * 4])
            continue
        refused = median(
            (r.outcomes.get("overloaded", 0) + r.outcomes.get("rate_limited", 0))
            / max(r.chat_requests, 1)
            for r in runs
        )
        rows.append(
            [
                protocol,
                status,
                label,
                spread([r.rows_per_s for r in runs], num),
                ratio(median(r.rows_per_s for r in runs) / fixed[protocol]),
                spread([r.requests_per_prompt for r in runs], lambda v: num(v, 3)),
                f"{refused * 100:.1f}%",
                num(median(r.summary.get("concurrency", cfg.concurrency) for r in runs)),
            ]
        )
    headers = [
        "protocol",
        "server refuses with",
        "concurrency",
        "rows/s",
        "/ -c 12",
        "requests per row",
        "requests refused",
        "settled at",
    ]
    n = plan.overload_prompts
    note = (
        f"\n\nThe emulator refuses every request above {OVERLOAD_LIMIT} in flight with the "
        "status shown (Retry-After: 1; 529 with Anthropic's `overloaded_error` body), "
        f"{LATENCY_MS} ms to the first chunk, {n:,} prompts; the bound is "
        f"{OVERLOAD_LIMIT / (LATENCY_MS / 1000):,.0f} rows/s. A fixed -c {OVERLOAD_LIMIT} "
        "never exceeds the limit, whatever the status; requests per row counts token "
        "requests too. `settled at` is the summary's concurrency."
    )
    return Section("Adaptive concurrency under overload", table(headers, rows) + note)


def dask(bench: Bench, plan: Plan) -> Section:
    """One process beside 2 Dask workers, at zero latency: the cost of the engine."""
    n = plan.dask_prompts
    single = Config(concurrency=1024, prompts=n, latency=0.0)
    configs = {"one process": single}
    for parts in (2, 8):
        extra = ("--engine", "dask", "--workers", "2", "--partition-rows", str(-(-n // parts)))
        configs[f"2 Dask workers, {parts} partitions"] = Config(
            concurrency=1024, prompts=n, latency=0.0, extra=extra
        )
    found = bench.compare([(AIBATCH, cfg) for cfg in configs.values()])
    walls = {
        label: median(r.wall_s for r in _good(found[(AIBATCH, cfg)]))
        for label, cfg in configs.items()
    }
    rows = []
    for label, cfg in configs.items():
        runs = _good(found[(AIBATCH, cfg)])
        if not runs:
            rows.append([label, _failed(found[(AIBATCH, cfg)]), "-", "-", "-"])
            continue
        rows.append(
            [
                label,
                spread([r.rows_per_s for r in runs], num),
                num(median(r.wall_s for r in runs), 1),
                num(median(r.cpu_s for r in runs), 1),
                num(median(r.emulator_cpu_s for r in runs), 1),
            ]
        )
    few, many = walls["2 Dask workers, 2 partitions"], walls["2 Dask workers, 8 partitions"]
    per_partition = (many - few) / 6
    headers = ["engine", "rows/s", "wall s", "aibatch CPU s", "emulator CPU s"]
    note = (
        f"\n\nc=1024 in all (shared by the partitions running at once), {n:,} prompts, an "
        f"emulator at zero latency in its own process. On 2 cores the workers, the driver "
        f"and the emulator share the same CPUs, so this shows what the engine costs, not a "
        f"speed-up. Overhead per partition (8 partitions against 2, same rows): "
        f"{per_partition:.2f} s. aibatch CPU counts the aibatch process and the Dask worker "
        "processes it started (os.wait4 includes the children a process waited for)."
    )
    return Section("One process and Dask", table(headers, rows) + note)


def sdk_config(protocol: str, concurrency: int, prompts: int) -> Config:
    """A run of the ``anthropic`` or ``openai`` section: that protocol, 50 ms."""
    return Config(concurrency=concurrency, prompts=prompts, protocol=protocol)


def _beside_sdk(protocol: str, title: str) -> Callable[[Bench, Plan], Section]:
    """A section: ``aibatch run --provider PROTOCOL`` beside the bare client and the SDK."""
    sdk = SDK_CLIENTS[protocol]
    clients = (AIBATCH, BASELINE, sdk)

    def section(bench: Bench, plan: Plan) -> Section:
        rows = []
        for c, n in plan.sdk:
            config = sdk_config(protocol, c, n)
            found = bench.compare_clients(clients, config)
            base_rate = median(r.rows_per_s for r in _good(found[BASELINE]))
            sdk_runs = _good(found[sdk])
            sdk_rate = median(r.rows_per_s for r in sdk_runs)
            sdk_cpu = median(r.cpu_per_prompt for r in sdk_runs)
            for client in clients:
                runs = _good(found[client])
                if not runs:
                    rows.append([f"{c:,}", f"{n:,}", client, _failed(found[client]), *["-"] * 9])
                    continue
                rate = median(r.rows_per_s for r in runs)
                cpu = median(r.cpu_per_prompt for r in runs)
                rows.append(
                    [
                        f"{c:,}",
                        f"{n:,}",
                        client,
                        spread([r.rows_per_s for r in runs], num),
                        ratio(rate / config.bound),
                        ratio(rate / base_rate),
                        ratio(rate / sdk_rate),
                        spread([r.cpu_per_prompt * 1000 for r in runs], sig),
                        ratio(cpu / sdk_cpu),
                        f"{median(r.client_cores for r in runs):.2f}",
                        f"{median(r.emulator_cores for r in runs):.2f}",
                        num(median(r.peak_rss_mb for r in runs)),
                        spread([r.connections / n for r in runs], lambda v: num(v, 3)),
                    ]
                )
        headers = [
            "concurrency",
            "prompts",
            "client",
            "rows/s median (range)",
            f"/ bound (c / {LATENCY_MS} ms)",
            "/ baseline",
            f"/ {sdk}",
            "CPU ms per prompt",
            f"/ {sdk}",
            "client cores",
            "emulator cores",
            "peak RSS MB",
            "connections per prompt",
        ]
        note = (
            f"\n\n`aibatch emulate --protocol {protocol}`, {LATENCY_MS} ms to the first chunk, "
            f"8 chunks per answer, in its own process; the three clients alternate against it. "
            f"aibatch: `aibatch run --provider {protocol} --base-url URL -c C` (CSV in, Parquet "
            "out, checkpoint on, streamed). baseline: `benchmarks/baseline.py --protocol "
            f"{protocol}`, a bare aiohttp client of the protocol (one session with a pool of c "
            "connections, `stream: true`, the SSE `data:` lines parsed and their text joined, "
            f"no files, no retries). {sdk}: the official SDK's async client "
            f"(`benchmarks/{sdk.replace('-', '_')}.py`: streamed, no retries, the SDK's "
            "default connection pool of 1,000 connections with 100 kept alive), "
            "`asyncio.gather` under an `asyncio.Semaphore(c)`, no files. rows/s and CPU "
            "(user + sys, os.wait4) are those of each whole client process, start-up included."
        )
        return Section(title, table(headers, rows) + note)

    return section


anthropic = _beside_sdk(
    "anthropic", "Anthropic protocol: aibatch beside a bare client and the official SDK"
)
openai = _beside_sdk("openai", "OpenAI protocol: aibatch beside a bare client and the official SDK")


# The schema section's: one property of each kind that becomes a typed column.
SCHEMA_5: dict[str, object] = {
    "type": "object",
    "properties": {
        "summary": {"type": "string"},
        "count": {"type": "integer"},
        "score": {"type": "number"},
        "relevant": {"type": "boolean"},
        "label": {"type": "string", "enum": ["low", "medium", "high"]},
    },
    "required": ["summary", "count", "score", "relevant", "label"],
    "additionalProperties": False,
}


def schema_configs(bench: Bench, plan: Plan) -> tuple[Config, Config]:
    """The schema section's runs: OpenAI protocol, without and with a 5-property schema."""
    path = bench.workdir / "schema-5.json"
    if not path.exists():
        path.write_text(json.dumps(SCHEMA_5, indent=2), encoding="utf-8")
    c, n = plan.schema
    plain = Config(concurrency=c, prompts=n, protocol="openai")
    return plain, Config(concurrency=c, prompts=n, protocol="openai", extra=("--schema", str(path)))


def schema(bench: Bench, plan: Plan) -> Section:
    """The cost of --schema on the hot path: the same run with and without one."""
    plain, typed = schema_configs(bench, plan)
    found = bench.compare([(AIBATCH, plain), (AIBATCH, typed)])
    base = _good(found[(AIBATCH, plain)])
    base_rate = median(r.rows_per_s for r in base)
    base_cpu = median(r.cpu_per_prompt for r in base)
    rows = []
    for label, cfg in (("no schema", plain), ("5-property schema", typed)):
        runs = _good(found[(AIBATCH, cfg)])
        if not runs:
            rows.append([label, _failed(found[(AIBATCH, cfg)]), *["-"] * 6])
            continue
        cpu = median(r.cpu_per_prompt for r in runs)
        rows.append(
            [
                label,
                spread([r.rows_per_s for r in runs], num),
                ratio(median(r.rows_per_s for r in runs) / base_rate),
                spread([r.cpu_per_prompt * 1000 for r in runs], sig),
                ratio(cpu / base_cpu),
                f"{median(r.client_cores for r in runs):.2f}",
                f"{median(r.emulator_cores for r in runs):.2f}",
                num(median(r.ok for r in runs)),
            ]
        )
    headers = [
        "run",
        "rows/s median (range)",
        "/ no schema",
        "CPU ms per prompt",
        "/ no schema",
        "client cores",
        "emulator cores",
        "ok rows",
    ]
    note = (
        f"\n\n`aibatch run --provider openai -c {plain.concurrency}` on {plain.prompts:,} "
        f"prompts against `aibatch emulate --protocol openai`, {LATENCY_MS} ms to the first "
        "chunk, once plain and once with `--schema` (string, integer, number, boolean "
        "and a string enum, all required, no additional properties): the emulator "
        "answers such requests with conforming JSON, which aibatch parses, validates "
        "and writes as typed columns. Each run is its own process; CPU is user + sys "
        "of the whole process (os.wait4), start-up included."
    )
    return Section("Structured output (--schema)", table(headers, rows) + note)


SECTIONS: dict[str, Callable[[Bench, Plan], Section]] = {
    "throughput": throughput,
    "cost": cost,
    "startup": startup,
    "requests": requests,
    "memory": memory,
    "resume": resume,
    "faults": faults,
    "adaptive": adaptive,
    "overload": overload,
    "dask": dask,
    "anthropic": anthropic,
    "openai": openai,
    "schema": schema,
    "bigjob": bigjob,
}
