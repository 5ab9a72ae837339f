"""aibatch on Dask: ``run_dask`` for Dask DataFrames, ``run_dataset`` for files.

Needs the ``dask`` extra (``pip install 'aibatch[dask]'``). Each partition is one Dask
task that runs the same engine as a local run; see :mod:`aibatch.runner.distributed`.
"""

from __future__ import annotations

from .runner.distributed import run_dask, run_dataset

__all__ = ["run_dask", "run_dataset"]
