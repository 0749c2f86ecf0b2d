"""Group commit: many threads' checkpoint writes share one statement and one round trip.

Each `aput`/`aput_writes` of the stock saver is its own round trip and its own trip
through psycopg, whose per-statement client cost (~0.3 ms of CPU here) is larger than
LangGraph's own cost of a superstep. Under load many agent threads save at the same
moment, so `GroupCommitter` queues what they submit and sends everything that is queued
as one statement (rows passed as arrays and unnested server-side). While that statement
is in flight, new submissions gather into the next batch, so batches grow with load and
a lone thread pays nothing but one event-loop turn.

Guarantees, the same as one statement per operation:
- a caller's `submit` returns only after its rows are committed, and raises if they were not
  (a `CheckpointError` naming Postgres, with psycopg's error as its cause);
- a batch is one statement, so it commits or fails as a whole; it never half-applies;
- two submissions that touch the same row never share a batch, and a batch never starts
  while an earlier one touching the same row is in flight, so a later write wins exactly
  as it would row by row. Batches without shared rows commit concurrently (up to
  `max_in_flight`), so one thread's writes and checkpoint still overlap.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from agentstack.checkpoint._boundary import postgres_errors
from agentstack.errors import CheckpointError

__all__ = ["GroupCommitter"]

_log = logging.getLogger(__name__)

BlobRow = tuple[str, str, str, str, str, bytes | None]
WriteRow = tuple[str, str, str, str, str, int, str, str, bytes | None]
CheckpointRow = tuple[str, str, str, str | None, Jsonb, Jsonb]

_MAX_OPERATIONS_PER_BATCH = 500

_WRITES_COLUMNS = "thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob"
_WRITES_ARRAYS = (
    "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::int[], %s::text[], %s::text[], %s::bytea[]"
)
_WRITES_KEY = "(thread_id, checkpoint_ns, checkpoint_id, task_id, idx)"

# One INSERT per kind of row; a batch sends those it has rows for, chained as data-modifying
# CTEs into one statement (each variant is prepared once per connection).
_PARTS: dict[str, str] = {
    "blobs": """INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
    SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::bytea[])
    ON CONFLICT (thread_id, checkpoint_ns, channel, version) DO NOTHING""",
    "upserted_writes": f"""INSERT INTO checkpoint_writes ({_WRITES_COLUMNS})
    SELECT * FROM unnest({_WRITES_ARRAYS})
    ON CONFLICT {_WRITES_KEY} DO UPDATE
    SET channel = EXCLUDED.channel, type = EXCLUDED.type, blob = EXCLUDED.blob""",
    "inserted_writes": f"""INSERT INTO checkpoint_writes ({_WRITES_COLUMNS})
    SELECT * FROM unnest({_WRITES_ARRAYS})
    ON CONFLICT {_WRITES_KEY} DO NOTHING""",
    "checkpoints": """INSERT INTO checkpoints
        (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, metadata)
    SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::jsonb[], %s::jsonb[])
    ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id)
    DO UPDATE SET checkpoint = EXCLUDED.checkpoint, metadata = EXCLUDED.metadata""",
}
_WIDTHS = {"blobs": 6, "upserted_writes": 9, "inserted_writes": 9, "checkpoints": 6}


@functools.cache
def batch_sql(parts: tuple[str, ...]) -> str:
    """The statement for a batch holding rows of `parts` (in `_PARTS` order)."""
    *ctes, last = parts
    if not ctes:
        return _PARTS[last]
    with_clause = ",\n".join(f"{name} AS (\n    {_PARTS[name]}\n)" for name in ctes)
    return f"WITH {with_clause}\n{_PARTS[last]}"


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows to one list per column: the shape `unnest(a, b, ...)` takes."""
    columns = [list(col) for col in zip(*rows, strict=True)]
    assert len(columns) == width, f"expected rows of {width} columns"
    return columns


@dataclass
class _Batch:
    blobs: list[BlobRow] = field(default_factory=list)
    upserted_writes: list[WriteRow] = field(default_factory=list)
    inserted_writes: list[WriteRow] = field(default_factory=list)
    checkpoints: list[CheckpointRow] = field(default_factory=list)
    keys: set[Hashable] = field(default_factory=set)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)

    def statement(self) -> tuple[str, list[Any]]:
        """The SQL for the kinds of rows this batch holds, and its parameters (one array per column)."""
        parts = tuple(name for name in _PARTS if getattr(self, name))
        params = [column for name in parts for column in _columns(getattr(self, name), _WIDTHS[name])]
        return batch_sql(parts), params


class GroupCommitter:
    """Queue checkpoint rows from many coroutines and commit them in shared statements."""

    def __init__(self, pool: AsyncConnectionPool[psycopg.AsyncConnection[DictRow]], *, max_in_flight: int = 4) -> None:
        self._pool = pool
        self._max_in_flight = max_in_flight
        self._queued: deque[_Batch] = deque()
        self._in_flight: dict[asyncio.Task[None], _Batch] = {}
        self._start_scheduled = False
        # told each committed batch's seconds and operations (`PoolSaver.report_commits`: the metrics)
        self.on_commit: Callable[[float, int], None] | None = None

    async def submit(
        self,
        *,
        keys: set[Hashable],
        blobs: Sequence[BlobRow] = (),
        checkpoint: CheckpointRow | None = None,
        upserted_writes: Sequence[WriteRow] = (),
        inserted_writes: Sequence[WriteRow] = (),
    ) -> None:
        """Queue rows and wait until the statement that carries them has committed."""
        batch = self._open_batch(keys)
        batch.keys |= keys
        batch.blobs.extend(blobs)
        batch.upserted_writes.extend(upserted_writes)
        batch.inserted_writes.extend(inserted_writes)
        if checkpoint is not None:
            batch.checkpoints.append(checkpoint)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        batch.waiters.append(waiter)
        if not self._start_scheduled:
            # Start on the next loop turn, so submissions made in the same instant share a batch.
            self._start_scheduled = True
            loop.call_soon(self._start_ready)
        await waiter

    async def drain(self) -> None:
        """Wait until everything submitted so far is committed (or has failed)."""
        while self._in_flight or self._queued:
            if not self._in_flight:
                self._start_ready()
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    def _open_batch(self, keys: set[Hashable]) -> _Batch:
        last = self._queued[-1] if self._queued else None
        if last is None or len(last.waiters) >= _MAX_OPERATIONS_PER_BATCH or not last.keys.isdisjoint(keys):
            last = _Batch()
            self._queued.append(last)
        return last

    def _start_ready(self) -> None:
        """Start queued batches in order while there is room and no row is already in flight.

        A batch that shares a row with one in flight waits (and so does every batch behind
        it): that keeps the order of two writes to the same row the order they were made.
        """
        self._start_scheduled = False
        while self._queued and len(self._in_flight) < self._max_in_flight:
            batch = self._queued[0]
            if any(not batch.keys.isdisjoint(other.keys) for other in self._in_flight.values()):
                return
            self._queued.popleft()
            task = asyncio.get_running_loop().create_task(self._commit(batch), name="agentstack-group-commit")
            self._in_flight[task] = batch
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        del self._in_flight[task]
        self._start_ready()

    async def _commit(self, batch: _Batch) -> None:
        started = time.perf_counter()
        try:
            with postgres_errors(self._pool.conninfo, doing=f"saving {len(batch.waiters)} checkpoint operation(s)"):
                async with self._pool.connection() as conn:
                    await conn.execute(*batch.statement(), binary=True)
        except BaseException as exc:
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.set_exception(exc if isinstance(exc, Exception) else _abandoned(exc, len(batch.waiters)))
            if not isinstance(exc, Exception):
                raise
        else:
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.set_result(None)
            if self.on_commit is not None:  # after: an observer's fault never fails writes that were committed
                try:
                    self.on_commit(time.perf_counter() - started, len(batch.waiters))
                except Exception:
                    _log.exception("the checkpoint commit observer failed")


def _abandoned(cause: BaseException, operations: int) -> CheckpointError:
    """For the callers of a batch whose commit was cancelled (the event loop shutting down with writes queued)."""
    return CheckpointError(
        f"{operations} checkpoint operation(s) were not saved: their commit was interrupted ({cause!r})",
        fix="let a graph run finish or drain the saver (`await saver.drain()`) before its event loop stops; "
        "the run resumes from its last saved checkpoint",
    )
