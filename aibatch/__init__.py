"""aibatch: run a file of prompts through a chat provider and get every answer back.

The public API: :func:`run_file`, :func:`run_frame` and their async twins, the job's
options as :class:`JobSpec`, the :class:`Summary` a run returns, the local
:class:`Emulator`, and the exception hierarchy of :mod:`aibatch.errors`.
"""

from __future__ import annotations

from ._version import __version__
from .errors import (
    AibatchError,
    CheckpointError,
    InputError,
    OutputError,
    PermanentError,
    ProviderError,
    RateLimited,
    TokenRejected,
    TransientError,
    UnknownModelError,
    UnknownProviderError,
    UsageError,
)
from .jobs.spec import JobSpec, RetryPolicy
from .providers import Emulator, Faults
from .runner.api import arun_file, arun_frame, run_file, run_frame
from .runner.summary import Summary

__all__ = [
    "AibatchError",
    "CheckpointError",
    "Emulator",
    "Faults",
    "InputError",
    "JobSpec",
    "OutputError",
    "PermanentError",
    "ProviderError",
    "RateLimited",
    "RetryPolicy",
    "Summary",
    "TokenRejected",
    "TransientError",
    "UnknownModelError",
    "UnknownProviderError",
    "UsageError",
    "__version__",
    "arun_file",
    "arun_frame",
    "run_file",
    "run_frame",
]
