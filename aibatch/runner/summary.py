"""Summary: what a run did, as counts, rates and latency percentiles."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Summary", "percentile"]


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) of already sorted values, nearest rank."""
    if not sorted_values:
        return None
    rank = max(0, min(len(sorted_values) - 1, round(q / 100.0 * (len(sorted_values) - 1))))
    return float(sorted_values[rank])


@dataclass(slots=True, kw_only=True)
class Summary:
    """The outcome of a run.

    Attributes:
        rows: input rows; ``ok + error + skipped + unsent == rows`` once the output is
            written.
        unsent: rows not sent because the budget ran out (``budget_reached``).
        sent: rows sent and stored in this run (fewer than planned when interrupted).
        requests: chat requests made in this run, retries included.
        reused: rows answered from the checkpoint of an earlier run.
        deduped: rows that shared an identical request with an earlier row.
        token_requests: token requests the provider made.
        prompt_tokens, completion_tokens: totals over the rows whose provider reports them.
        truncated: ok rows whose answer was cut at the length limit (finish_reason "length").
        concurrency: requests in flight allowed at the end (with ``adaptive``, where the
            limit settled).
        interrupted: the run stopped early (Ctrl-C, SIGTERM); no output was written.
        errors_by_type: failed rows per error class.
        cost_usd: what this run spent, in USD, from the usage the service reported for
            each answer (retries that were billed included); ``None`` when unknown: no
            price for the model, or no answer reported usage. Never 0 for unknown.
        cost_note: the price used and its source, or why the cost is unknown.
        max_cost: the budget (``--max-cost``), if any.
        budget_reached: the budget stopped the run: the output holds the rows done, the
            others are ``unsent``.
        batch_pending: rows in Batch API batches that have not ended (``--batch-api``):
            no output was written; the same command run later collects them.
    """

    input: str
    output: str | None = None
    provider: str = ""
    model: str = ""
    rows: int = 0
    ok: int = 0
    error: int = 0
    skipped: int = 0
    unsent: int = 0
    sent: int = 0
    requests: int = 0
    reused: int = 0
    deduped: int = 0
    token_requests: int = 0
    garbage_lines: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated: int = 0
    concurrency: int = 0
    wall_s: float = 0.0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    interrupted: bool = False
    errors_by_type: dict[str, int] = field(default_factory=dict)
    cost_usd: float | None = None
    cost_note: str = ""
    max_cost: float | None = None
    budget_reached: bool = False
    batch_pending: int = 0

    @property
    def rows_per_s(self) -> float:
        """Rows finished per second of wall time."""
        return self.rows / self.wall_s if self.wall_s > 0 else 0.0

    def counts(self) -> dict[str, int]:
        """The row counts an output file's metadata records."""
        return {
            "rows": self.rows,
            "ok": self.ok,
            "error": self.error,
            "skipped": self.skipped,
            "unsent": self.unsent,
            "reused": self.reused,
            "deduped": self.deduped,
        }

    @classmethod
    def merge(cls, parts: Iterable[Summary], **fields: Any) -> Summary:
        """One summary for a job made of ``parts`` (its partitions).

        Counts add up; errors by type add up per type; the job is interrupted (or
        stopped by its budget) when any part was; costs add up over the parts whose
        cost is known (``None`` when none is). Percentiles do not add up: the p50 is the
        median of the parts' p50s, the p95 the worst part's. ``fields`` set the rest
        (input, output, ...).
        """
        merged = cls(**fields)
        medians: list[float] = []
        worst: list[float] = []
        for part in parts:
            for name in _SUMMED:
                setattr(merged, name, getattr(merged, name) + getattr(part, name))
            for kind, count in part.errors_by_type.items():
                merged.errors_by_type[kind] = merged.errors_by_type.get(kind, 0) + count
            merged.interrupted |= part.interrupted
            merged.budget_reached |= part.budget_reached
            if part.cost_usd is not None:
                merged.cost_usd = (merged.cost_usd or 0.0) + part.cost_usd
            merged.cost_note = merged.cost_note or part.cost_note
            merged.model = part.model or merged.model
            if part.latency_p50_ms is not None and part.latency_p95_ms is not None:
                medians.append(part.latency_p50_ms)
                worst.append(part.latency_p95_ms)
        if medians:
            merged.latency_p50_ms = sorted(medians)[len(medians) // 2]
            merged.latency_p95_ms = max(worst)
        return merged

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Summary:
        """A summary from :meth:`to_dict` (or an output's recorded counts)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{"input": "", **{k: v for k, v in data.items() if k in names}})

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready values."""
        data = dataclasses.asdict(self)
        data["rows_per_s"] = round(self.rows_per_s, 3)
        return data

    def to_json(self) -> str:
        """The summary as a JSON document."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)


# The counts that add up across partitions: every whole-number field but the limit.
_SUMMED = tuple(
    f.name for f in dataclasses.fields(Summary) if f.type == "int" and f.name != "concurrency"
)
