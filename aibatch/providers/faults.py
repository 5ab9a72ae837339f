"""Faults: what the emulator injects, and the protocols it speaks.

They live apart from the emulator, which needs aiohttp, so that the command line can
build ``aibatch emulate``'s options without importing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UsageError

__all__ = ["OVERLOAD_STATUSES", "PROTOCOLS", "Faults"]

PROTOCOLS = ("aichatonline", "openai", "anthropic")

#: what a server may answer when it is too busy: 429, 503, and Anthropic's 529
OVERLOAD_STATUSES = (429, 503, 529)


def _help(text: str) -> dict[str, str]:
    """A fault field's metadata: the one-line help of its ``aibatch emulate`` option."""
    return {"help": text}


@dataclass(frozen=True, slots=True, kw_only=True)
class Faults:
    """Faults the emulator injects, drawn per chat request (or batch) with seeded randomness.

    Attributes:
        error_rate: share of chat requests answered HTTP 500.
        rate_limit_rate: share answered 429 with ``Retry-After: retry_after``.
        retry_after: seconds sent in ``Retry-After``.
        cut_rate: share of streams cut mid-way (connection closed before the end).
        garbage_rate: share of streams with garbage and blank lines mixed in.
        stall_rate: share of requests whose first byte waits ``stall_seconds``.
        stall_seconds: how long a stalled request waits.
        overload_rate: share answered "overloaded": 529 on the anthropic protocol, 503
            on the others.
        error_event_rate: share of streams that stop half-way with an error event
            (anthropic: ``overloaded_error``; openai: an ``error`` object); the
            aichatonline protocol has none.
        invalid_json_rate: share of structured (schema) requests answered with malformed
            or non-conforming JSON; other requests are answered as usual.
        token_max_uses: a token expires after this many chat requests (then 401).
        token_max_age: a token expires after this many seconds (then 401).
        token_concurrency: chat requests one token may have in flight (above: 429).
        max_inflight: chat requests the server takes at once (above: ``overload_status``).
        overload_status: the status of a refusal above ``max_inflight``: 429 (too many
            requests), 503 (unavailable, as gateways and OpenAI answer when overloaded)
            or 529 (with the body of Anthropic's ``overloaded_error``, whatever the
            protocol); each sends ``Retry-After: retry_after``.
        max_rps: chat requests the server takes per second (above: 429).
        seed: seed of the fault draws.
        batch_fail_rate: share of batches (Batch APIs) that fail: openai ``failed``, with
            an ``errors`` entry and no output; anthropic has no failed state, so each
            request of the batch ends ``errored`` (``api_error``).
        batch_expire_rate: share of the requests of each batch that expire unanswered
            (openai: the batch ends ``expired``, they are in its error file with code
            ``batch_expired``; anthropic: result type ``expired``).
        batch_error_rate: share of the requests of each batch answered with an error
            (openai: status 500 in the error file; anthropic: ``errored``, ``api_error``).
        batch_stuck_rate: share of batches that never end: in progress until cancelled.

    The batch rates are drawn per batch or per batch request, apart from the chat
    request rates (they need not add up with them).

    Each field's ``metadata["help"]`` is the help of its ``aibatch emulate`` option.

    Raises:
        UsageError: a rate outside [0, 1], chat request rates adding up to more than 1, or an
            ``overload_status`` other than those of :data:`OVERLOAD_STATUSES`.
    """

    error_rate: float = field(default=0.0, metadata=_help("Share of HTTP 500s."))
    rate_limit_rate: float = field(default=0.0, metadata=_help("Share of 429s."))
    retry_after: float = field(default=1.0, metadata=_help("Seconds sent in Retry-After."))
    cut_rate: float = field(default=0.0, metadata=_help("Share of streams cut mid-way."))
    garbage_rate: float = field(default=0.0, metadata=_help("Share of streams with garbage lines."))
    stall_rate: float = field(
        default=0.0, metadata=_help("Share of requests whose first byte stalls.")
    )
    stall_seconds: float = field(default=30.0, metadata=_help("How long a stall lasts."))
    overload_rate: float = field(
        default=0.0, metadata=_help("Share of overloaded answers (529 anthropic, else 503).")
    )
    error_event_rate: float = field(
        default=0.0, metadata=_help("Share of streams ending in an error event mid-way.")
    )
    invalid_json_rate: float = field(
        default=0.0, metadata=_help("Share of schema answers with malformed or wrong JSON.")
    )
    token_max_uses: int | None = field(
        default=None, metadata=_help("A token expires after N uses.")
    )
    token_max_age: float | None = field(
        default=None, metadata=_help("A token expires after S seconds.")
    )
    token_concurrency: int | None = field(
        default=None, metadata=_help("Requests in flight per token (429 above).")
    )
    max_inflight: int | None = field(
        default=None, metadata=_help("Requests in flight in all (--overload-status above).")
    )
    overload_status: int = field(
        default=429, metadata=_help("Status above --max-inflight: 429, 503 or 529.")
    )
    max_rps: int | None = field(
        default=None, metadata=_help("Requests per second in all (429 above).")
    )
    seed: int = field(default=0, metadata=_help("Seed of the fault draws."))
    batch_fail_rate: float = field(default=0.0, metadata=_help("Share of batches that fail."))
    batch_expire_rate: float = field(
        default=0.0, metadata=_help("Share of batch requests that expire unanswered.")
    )
    batch_error_rate: float = field(
        default=0.0, metadata=_help("Share of batch requests answered with an error.")
    )
    batch_stuck_rate: float = field(
        default=0.0, metadata=_help("Share of batches that never end (until cancelled).")
    )

    def __post_init__(self) -> None:
        rates = (
            self.error_rate,
            self.rate_limit_rate,
            self.cut_rate,
            self.garbage_rate,
            self.stall_rate,
            self.overload_rate,
            self.error_event_rate,
            self.invalid_json_rate,
        )
        if any(not 0.0 <= r <= 1.0 for r in rates) or sum(rates) > 1.0:
            raise UsageError("fault rates must each lie in [0, 1] and add up to at most 1")
        batch_rates = (
            self.batch_fail_rate,
            self.batch_expire_rate,
            self.batch_error_rate,
            self.batch_stuck_rate,
        )
        if any(not 0.0 <= r <= 1.0 for r in batch_rates):
            raise UsageError("batch fault rates must each lie in [0, 1]")
        if self.overload_status not in OVERLOAD_STATUSES:
            known = ", ".join(map(str, OVERLOAD_STATUSES))
            raise UsageError(f"overload status must be one of {known}")
