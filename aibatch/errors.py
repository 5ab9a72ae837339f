"""The exception hierarchy of aibatch.

Every error aibatch raises on purpose is an :class:`AibatchError`::

    AibatchError
    ├── UsageError            bad option or job file (exit 2)
    │   ├── InputError        unreadable or malformed input: .path .line .column
    │   │   └── InputChanged  the input changed while the run was reading it
    │   ├── UnknownProviderError
    │   └── UnknownModelError
    ├── ProviderError         one request failed: .http_status
    │   ├── TransientError    retryable: 5xx, reset, timeout, cut stream, empty answer
    │   │   ├── Overloaded    too busy: 503, 529: .retry_after (congestion: -c auto cuts)
    │   │   │   └── RateLimited   429
    │   │   ├── ConnectionRefused  refused, or reset before an answer (congestion while up)
    │   │   ├── TokenRejected 401/403: refresh the token, then retry
    │   │   ├── BatchExpired  a Batch API request that never ran in its window
    │   │   └── BatchFailed   the provider failed a whole batch
    │   ├── InvalidOutput     the answer is not JSON valid for the job's schema: retried
    │   └── PermanentError    other 4xx: retrying cannot help
    │       ├── Unauthorized  the service refused the credentials: the run stops
    │       └── BatchCancelled  its batch was cancelled before it ran
    ├── BatchesPending        run_frame: batches (--batch-api) not finished; call again
    ├── CheckpointError       lock held by another run, unreadable state
    ├── BudgetReached         --max-cost spent: stop starting requests (exit 3)
    └── OutputError           output not writable, column clash, disk full

Retry decisions read the class, never the message. Errors from foreign libraries
(aiohttp, timeouts, OS errors) are translated once, where they are caught, with
``raise ... from exc``. Messages never contain a provider token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from os import PathLike

__all__ = [
    "AibatchError",
    "BatchCancelled",
    "BatchExpired",
    "BatchFailed",
    "BatchesPending",
    "BudgetReached",
    "CheckpointError",
    "ConnectionRefused",
    "InputChanged",
    "InputError",
    "InvalidOutput",
    "OutputError",
    "Overloaded",
    "PermanentError",
    "ProviderError",
    "RateLimited",
    "TokenRejected",
    "TransientError",
    "Unauthorized",
    "UnknownModelError",
    "UnknownProviderError",
    "UsageError",
    "plain_errors",
]


def shown(name: str) -> str:
    """A column or file name as it can stand in a one-line message."""
    return name if name.isprintable() else repr(name)


class AibatchError(Exception):
    """Base class of every error aibatch raises on purpose."""


class UsageError(AibatchError):
    """A bad option, job file or input: nothing was sent."""


class InputError(UsageError):
    """The input cannot be read or is malformed.

    Attributes:
        path: the input file (``"-"`` for standard input).
        line: 1-based line (CSV, JSONL) or row number (Parquet) where it went wrong.
        column: the column name or 1-based position, when known.
        reason: what is wrong, without the location.
    """

    def __init__(
        self,
        path: str | PathLike[str],
        reason: str,
        *,
        line: int | None = None,
        column: str | int | None = None,
    ) -> None:
        self.path = str(path)
        self.reason = reason
        self.line = line
        self.column = column
        where = self.path
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column!r}" if isinstance(column, str) else f", column {column}"
        super().__init__(f"{where}: {reason}")


class InputChanged(InputError):
    """The input file changed while a run was reading it.

    The run stops before any row could meet another row's answer; what finished is
    kept in the checkpoint, and the next run plans against the file as it is then.
    """

    def __init__(self, path: str | PathLike[str], what: str) -> None:
        super().__init__(
            path,
            f"changed while aibatch was running ({what}); the rows already finished are kept:"
            " run the same command again to continue with the file as it is now",
        )


class _UnknownNameError(UsageError):
    kind = "name"

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = sorted(known)
        super().__init__(f"unknown {self.kind} {name!r}; known: {', '.join(self.known)}")


class UnknownProviderError(_UnknownNameError):
    """No provider of that name is installed."""

    kind = "provider"


class UnknownModelError(_UnknownNameError):
    """The provider does not serve that model."""

    kind = "model"


class ProviderError(AibatchError):
    """One request to the provider failed.

    Attributes:
        http_status: the HTTP status of the failed attempt, if a response came back.
    """

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        self.http_status = http_status
        super().__init__(message)


class TransientError(ProviderError):
    """A failure that may pass: 5xx, connection reset, timeout, cut stream, empty answer."""


class Overloaded(TransientError):
    """The service is too busy to take the request now: 503, 529, or a 429.

    Congestion, not a fault: ``-c auto`` lowers its limit on it, and the retry waits at
    least ``retry_after``.

    Attributes:
        retry_after: seconds the server asked us to wait, if it said.
    """

    def __init__(
        self, message: str, *, retry_after: float | None = None, http_status: int | None = None
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, http_status=http_status)


class RateLimited(Overloaded):
    """The provider answered 429: too many requests from us."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, http_status: int | None = 429
    ) -> None:
        super().__init__(message, retry_after=retry_after, http_status=http_status)


class ConnectionRefused(TransientError):
    """The server refused the connection, or reset it before any answer began.

    Congestion while the service is up (it has been answering), an outage otherwise:
    ``-c auto`` tells the two apart (:mod:`aibatch.runner.concurrency`).
    """


class TokenRejected(TransientError):
    """The provider rejected the token (401/403): fetch a new one and retry."""


class InvalidOutput(ProviderError):
    """The answer is not JSON, or not valid for the job's schema (``--schema``): retried.

    Attributes:
        response: the raw answer, kept in the row's ``response`` when retries run out.
        path: the JSON path where validation failed (``$`` for the whole answer).
    """

    def __init__(
        self, message: str, *, response: str, path: str = "$", http_status: int | None = None
    ) -> None:
        self.response = response
        self.path = path
        super().__init__(message, http_status=http_status)


class PermanentError(ProviderError):
    """A failure that retrying cannot fix: a 4xx other than 401, 403, 408 and 429."""


class Unauthorized(PermanentError):
    """The service refused the API key: every row would fail, so the run stops early."""


class BatchExpired(TransientError):
    """The provider's batch ended (its 24 hours ran out) before this request ran: retried."""


class BatchFailed(TransientError):
    """The provider failed a whole batch (say, its file did not validate): retried."""


class BatchCancelled(PermanentError):
    """The request's batch was cancelled (``aibatch batches --cancel``) before it ran.

    Not retried in that run; a re-run sends it again, as it does every failed row.
    """


class BatchesPending(AibatchError):
    """The job's Batch API batches have not all ended: no output yet (``run_frame``).

    Attributes:
        rows: the rows in batches not ended.
    """

    def __init__(self, rows: int, output: str) -> None:
        self.rows = rows
        super().__init__(
            f"{rows} rows are in provider batches not finished; call again later with"
            f" output={output!r} to collect them"
        )


class CheckpointError(AibatchError):
    """The checkpoint is locked by another run or cannot be read."""


class BudgetReached(AibatchError):
    """The budget (``--max-cost``) cannot cover another request: no more are started.

    Attributes:
        limit: the budget, in USD.
        spent: what the run spent, in USD (an answer without usage at its worst case).
    """

    def __init__(self, limit: float, spent: float) -> None:
        self.limit = limit
        self.spent = spent
        super().__init__(
            f"the budget of ${limit:g} is spent (${spent:.6g}) and cannot cover another"
            " request; re-run with a higher --max-cost to send the rest"
        )


class OutputError(AibatchError):
    """The output cannot be written: directory missing, not writable, column clash, disk full."""


@contextlib.contextmanager
def plain_errors() -> Iterator[None]:
    """Re-raise the :class:`AibatchError` that a task group wrapped in an ExceptionGroup.

    When every exception in the group is an :class:`AibatchError`, the first is raised
    on its own, the others added to it as notes. A group holding anything else (a bug,
    an interrupt) is re-raised whole: no exception is ever dropped.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if not leaves or not all(isinstance(exc, AibatchError) for exc in leaves):
            raise
        first = leaves[0]
        for other in leaves[1:]:
            first.add_note(f"also: {type(other).__name__}: {other}")
        raise first from None


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
