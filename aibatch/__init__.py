"""aibatch: run a file of prompts through a chat provider and get every answer back.

The public API: :func:`run_file`, :func:`run_frame` and their async twins, the job's
options as :class:`JobSpec`, the :class:`Summary` a run returns, the local
:class:`Emulator` and its :class:`Faults`, :func:`read_metadata` of an output file, and
the exception hierarchy of :mod:`aibatch.errors`.

Names that need pandas, pyarrow or aiohttp are imported on first use (PEP 562), so
``import aibatch`` and ``aibatch --help`` stay quick.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    AibatchError,
    BatchCancelled,
    BatchesPending,
    BatchExpired,
    BatchFailed,
    BudgetReached,
    CheckpointError,
    ConnectionRefused,
    InputChanged,
    InputError,
    InvalidOutput,
    OutputError,
    Overloaded,
    PermanentError,
    ProviderError,
    RateLimited,
    TokenRejected,
    TransientError,
    Unauthorized,
    UnknownModelError,
    UnknownProviderError,
    UsageError,
)
from .jobs.spec import JobSpec, RetryPolicy
from .providers.faults import Faults

if TYPE_CHECKING:
    from .io.output import read_metadata
    from .providers.emulator import Emulator
    from .runner.api import arun_file, arun_frame, run_file, run_frame
    from .runner.summary import Summary

__all__ = [
    "AibatchError",
    "BatchCancelled",
    "BatchExpired",
    "BatchFailed",
    "BatchesPending",
    "BudgetReached",
    "CheckpointError",
    "ConnectionRefused",
    "Emulator",
    "Faults",
    "InputChanged",
    "InputError",
    "InvalidOutput",
    "JobSpec",
    "OutputError",
    "Overloaded",
    "PermanentError",
    "ProviderError",
    "RateLimited",
    "RetryPolicy",
    "Summary",
    "TokenRejected",
    "TransientError",
    "Unauthorized",
    "UnknownModelError",
    "UnknownProviderError",
    "UsageError",
    "__version__",
    "arun_file",
    "arun_frame",
    "read_metadata",
    "run_file",
    "run_frame",
]

_LAZY = {
    "Emulator": ".providers.emulator",
    "Summary": ".runner.summary",
    "arun_file": ".runner.api",
    "arun_frame": ".runner.api",
    "read_metadata": ".io.output",
    "run_file": ".runner.api",
    "run_frame": ".runner.api",
}


def __getattr__(name: str) -> Any:
    """Import a public name that needs a heavy dependency when it is first used."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
