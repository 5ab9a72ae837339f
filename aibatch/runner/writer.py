"""The writer: the one task that owns the checkpoint while a partition sends.

Workers hand it finished rows through a memory stream; it stores them in one checkpoint
part every :data:`FLUSH_SECONDS` (or every :data:`FLUSH_ROWS` rows, whichever comes
first), and records where each landed in the plan. Whatever happens to the run (an
error, a cancellation, a second Ctrl-C), what finished is stored before it returns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from ..jobs.checkpoint import Checkpoint, Plan
from ..types import RowResult
from .streams import receive

log = logging.getLogger(__name__)

__all__ = ["FLUSH_ROWS", "FLUSH_SECONDS", "Writer"]

FLUSH_SECONDS = 0.2
FLUSH_ROWS = 4096


class Writer:
    """Stores finished rows in ``checkpoint`` and their locations in ``plan``.

    Args:
        checkpoint: the open checkpoint; nothing else writes to it while this runs.
        plan: the partition's plan; stored rows get their location in it.
        on_stored: called with each batch of rows once they are durable.
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        plan: Plan,
        on_stored: Callable[[Sequence[RowResult]], None],
    ) -> None:
        self.checkpoint = checkpoint
        self.plan = plan
        self.on_stored = on_stored
        self._pending: list[RowResult] = []
        self._lock = anyio.Lock()

    async def run(self, results: MemoryObjectReceiveStream[RowResult]) -> None:
        """Store every row that arrives on ``results`` until it closes (then flush)."""
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._flush_every, FLUSH_SECONDS)
                async with results:
                    while True:
                        try:
                            result = await receive(results)
                        except anyio.EndOfStream:
                            break
                        # Append only after the await: a flush may swap the list meanwhile.
                        self._pending.append(result)
                        if len(self._pending) >= FLUSH_ROWS:
                            await self.flush()
                tg.cancel_scope.cancel()
        finally:
            # Also when the run is cancelled or fails: what finished is kept.
            with anyio.CancelScope(shield=True):
                await self.flush()

    async def _flush_every(self, seconds: float) -> None:
        while True:
            await anyio.sleep(seconds)
            await self.flush()

    async def flush(self) -> None:
        """Store the rows that arrived since the last flush, durably."""
        async with self._lock:
            batch, self._pending = self._pending, []
            if not batch:
                return
            # Rows taken from the buffer are stored and recorded in the plan as one step:
            # a cancellation in between (the ticker being stopped, a second Ctrl-C) would
            # leave them stored but unknown to this run, which would then end incomplete.
            with anyio.CancelScope(shield=True):
                locs = await anyio.to_thread.run_sync(self.checkpoint.write_part, batch)
            self.plan.loc[[r.row for r in batch]] = locs
            self.on_stored(batch)
