"""The agent server's runs queue on Postgres: threads, runs, leases, cancels and stream events.

A run is a row. Any number of worker processes share one queue with no other coordinator: a worker claims
the oldest claimable run under a row lock taken with `SKIP LOCKED` (so two workers never wait on each other
or take the same run) and holds it with a lease it renews; a worker that dies stops renewing, its lease
lapses and another worker claims the run again (`attempt` counts the tries), which then continues from the
thread's last checkpoint. Every write of a worker is fenced by its claim (`worker` and `attempt`): one whose
lease lapsed and was taken over can neither finish the run nor append to its stream.

Runs of one thread run one at a time, oldest first: only a thread's oldest unfinished run is claimable, and
its thread row is locked with it. `multitask_strategy` is applied when a run is put, in the transaction that
locks the thread: `reject` refuses a second run (`ConflictError`), `enqueue` queues it, `interrupt` and
`rollback` ask the unfinished ones to stop (a pending one is settled at once; a running one sees `cancel` at
its next lease renewal). Stream events are appended with a per-run sequence, so a client that reconnects with
`Last-Event-ID` reads the rest from any worker, with no gap and no duplicate.

Statuses are the LangGraph API's: a run is pending, running, then success, error, timeout or interrupted (a
rolled back run is deleted); a thread is idle, busy, interrupted or error.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

from psycopg.types.json import Jsonb

from agentstack.api._schema import migrate
from agentstack.api._thread_rows import Thread, ThreadRows, ThreadStatusValue, as_uuid, thread_key
from agentstack.errors import ConfigError, ConflictError, LeaseLostError, LimitError, NotFoundError

__all__ = ["QueueStats", "Run", "RunQueue", "StreamEvent", "Thread", "ThreadStatusValue"]

RunStatus = Literal["pending", "running", "success", "error", "timeout", "interrupted"]
MultitaskStrategy = Literal["reject", "enqueue", "interrupt", "rollback"]
CancelAction = Literal["interrupt", "rollback"]

FINAL: frozenset[str] = frozenset({"success", "error", "timeout", "interrupted"})
_STRATEGIES = ("reject", "enqueue", "interrupt", "rollback")

_RUN_COLUMNS = (
    "run_id, thread_id, assistant_id, created_at, updated_at, status, metadata, kwargs, multitask_strategy, "
    "attempt, worker, lease_until, cancel, error"
)


@dataclass(frozen=True)
class Run:
    run_id: str
    thread_id: str
    assistant_id: str
    created_at: datetime
    updated_at: datetime
    status: RunStatus
    metadata: dict[str, Any]
    kwargs: dict[str, Any]
    multitask_strategy: MultitaskStrategy
    attempt: int = 0
    worker: str | None = None
    lease_until: datetime | None = None
    cancel: CancelAction | None = None
    error: Any = None

    @property
    def graph_id(self) -> str:
        """The graph the run runs: the one its assistant named when it was queued (its assistant id names it
        for a run queued before the graph id was stored with it)."""
        return str(self.kwargs.get("graph_id") or self.assistant_id)


@dataclass(frozen=True)
class StreamEvent:
    """One event of a run's stream; `seq` is what a client sends back as `Last-Event-ID`."""

    seq: int
    event: str
    data: Any


@dataclass(frozen=True)
class QueueStats:
    """Runs and threads by status (every status present, zero or not), running runs whose lease lapsed (their
    worker died and none has taken them yet), and how long the oldest pending run has waited."""

    runs: dict[str, int]
    threads: dict[str, int]
    lapsed_leases: int
    oldest_pending_s: float


class RunQueue(ThreadRows):
    """Threads (`ThreadRows`), runs and their stream events on a psycopg async pool in autocommit mode
    (`open_pool(url)`).

    Postgres errors are not mapped here: the server and the workers that call this map them where they
    know what was being done (a request, a claim) and what to tell the caller.
    """

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def setup(self) -> None:
        """Create or migrate the agent server's tables (`_schema`); safe when several processes start at once."""
        async with self.pool.connection() as conn:
            await migrate(conn)

    # -- runs ---------------------------------------------------------------------------------------

    async def put_run(
        self,
        thread_id: str,
        assistant_id: str,
        *,
        kwargs: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        multitask_strategy: MultitaskStrategy = "enqueue",
        if_not_exists: Literal["reject", "create"] = "reject",
        thread_metadata: Mapping[str, Any] | None = None,
        owner: str | None = None,
        visible_to: str | None = None,
        max_runs: int | None = None,
    ) -> Run:
        """Queue a run on `thread_id`, applying `multitask_strategy` to the thread's unfinished runs.

        `thread_metadata` is merged into the thread's (the server records which graph the thread runs). A thread
        made here is `owner`'s; with `visible_to`, a thread of another key is missing (404), as it is to reads.
        `max_runs`: refused (`LimitError`) while `owner` has that many runs unfinished, counted under a lock on
        the owner so that two servers creating at once cannot both pass."""
        if multitask_strategy not in _STRATEGIES:
            raise ConfigError(
                f"multitask_strategy {multitask_strategy!r} is not one of {', '.join(_STRATEGIES)}",
                fix="multitask_strategy='enqueue' queues the run behind the thread's others",
            )
        thread_id = thread_key(thread_id)
        run_id = str(_uuid7())
        # Pipelined: the lock and the look at the thread's runs go in one round trip, the writes and the commit
        # in a second (each statement still reads after the one before it took its lock).
        async with self.pool.connection() as conn, conn.pipeline():
            async with conn.transaction():
                counting = None
                if max_runs is not None and owner is not None:
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('agentstack runs of ' || %s))", (owner,))
                    counting = await conn.execute(
                        "SELECT count(*) AS n FROM agentstack_runs r JOIN agentstack_threads t USING (thread_id) "
                        "WHERE t.owner = %s AND r.status IN ('pending', 'running')",
                        (owner,),
                    )
                if if_not_exists == "create":
                    await conn.execute(
                        "INSERT INTO agentstack_threads (thread_id, metadata, owner) VALUES (%s, %s, %s) "
                        "ON CONFLICT DO NOTHING",
                        (thread_id, Jsonb({"assistant_id": assistant_id}), owner),
                    )
                locking = await conn.execute(
                    "SELECT 1 FROM agentstack_threads WHERE thread_id = %s AND (%s::text IS NULL OR owner = %s) "
                    "FOR UPDATE",
                    (thread_id, visible_to, visible_to),
                )
                looking = await conn.execute(
                    "SELECT run_id, status FROM agentstack_runs WHERE thread_id = %s "
                    "AND status IN ('pending', 'running') ORDER BY created_at",
                    (thread_id,),
                )
                if await locking.fetchone() is None:
                    raise NotFoundError(
                        f"there is no thread {thread_id}", fix="create it first, or pass if_not_exists='create'"
                    )
                unfinished = await looking.fetchall()
                running = int((await counting.fetchone())["n"]) if counting is not None else 0
                if max_runs is not None and counting is not None and running >= max_runs:
                    raise LimitError(
                        f"key {owner} has {running} runs unfinished, its limit of runs at once ({max_runs})",
                        fix="wait for one to end, or cancel one",
                    )
                if unfinished and multitask_strategy == "reject":
                    raise ConflictError(
                        f"thread {thread_id} is already running a task",
                        fix="wait for it to finish, or choose another multitask_strategy (enqueue, interrupt, "
                        "rollback)",
                    )
                if unfinished and multitask_strategy in ("interrupt", "rollback"):
                    await _cancel_rows(conn, [r["run_id"] for r in unfinished], multitask_strategy)
                inserting = await conn.execute(
                    f"INSERT INTO agentstack_runs (run_id, thread_id, assistant_id, metadata, kwargs, "
                    f"multitask_strategy) VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_RUN_COLUMNS}",
                    (
                        run_id,
                        thread_id,
                        assistant_id,
                        Jsonb({"assistant_id": assistant_id, **(metadata or {})}),
                        Jsonb(dict(kwargs or {})),
                        multitask_strategy,
                    ),
                )
                await conn.execute(
                    "UPDATE agentstack_threads SET status = 'busy', updated_at = now(), metadata = metadata || %s "
                    "WHERE thread_id = %s",
                    (Jsonb(dict(thread_metadata or {})), thread_id),
                )
                await conn.execute("SELECT pg_notify('agentstack_runs', %s)", (thread_id,))
            row = await inserting.fetchone()
        return _run(row)

    async def get_run(self, thread_id: str, run_id: str) -> Run:
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    f"SELECT {_RUN_COLUMNS} FROM agentstack_runs WHERE thread_id = %s AND run_id = %s",
                    (thread_key(thread_id), as_uuid(run_id, "run")),
                )
            ).fetchone()
        if row is None:
            raise NotFoundError(f"there is no run {run_id} on thread {thread_id}", fix="list the thread's runs")
        return _run(row)

    async def list_runs(
        self, thread_id: str, *, limit: int = 10, offset: int = 0, status: str | None = None
    ) -> list[Run]:
        """The thread's runs, newest first."""
        await self.get_thread(thread_id)  # a missing thread is an error, not an empty list
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    f"SELECT {_RUN_COLUMNS} FROM agentstack_runs WHERE thread_id = %s "
                    "AND (%s::text IS NULL OR status = %s) ORDER BY created_at DESC, run_id DESC LIMIT %s OFFSET %s",
                    (thread_key(thread_id), status, status, limit, offset),
                )
            ).fetchall()
        return [_run(r) for r in rows]

    async def stats(self) -> QueueStats:
        """What `/metrics` reports, read in one statement: runs and threads by status, leases, queue age."""
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    """SELECT
    (SELECT coalesce(jsonb_object_agg(status, n), '{}') FROM
        (SELECT status, count(*) AS n FROM agentstack_runs GROUP BY status) r) AS runs,
    (SELECT coalesce(jsonb_object_agg(status, n), '{}') FROM
        (SELECT status, count(*) AS n FROM agentstack_threads GROUP BY status) t) AS threads,
    (SELECT count(*) FROM agentstack_runs WHERE status = 'running' AND lease_until < clock_timestamp()) AS lapsed,
    (SELECT coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)
        FROM agentstack_runs WHERE status = 'pending') AS oldest_pending_s"""
                )
            ).fetchone()
        assert row is not None
        return QueueStats(
            runs={s: int(row["runs"].get(s, 0)) for s in get_args(RunStatus)},
            threads={s: int(row["threads"].get(s, 0)) for s in get_args(ThreadStatusValue)},
            lapsed_leases=int(row["lapsed"]),
            oldest_pending_s=float(row["oldest_pending_s"]),
        )

    async def claim(self, worker: str, *, lease_s: float) -> Run | None:
        """The oldest claimable run, now `running` under `worker`'s lease, or None.

        Claimable: pending, or running under a lease that lapsed (its worker died), and the oldest unfinished
        run of its thread. The run and its thread are locked `SKIP LOCKED`, and the update checks the run's
        status again: a run another worker claimed since this statement's snapshot is not taken twice.
        """
        async with self.pool.connection() as conn:  # one statement: atomic by itself
            row = await (
                await conn.execute(
                    f"""WITH candidate AS (
    SELECT r.run_id FROM agentstack_runs r JOIN agentstack_threads t ON t.thread_id = r.thread_id
    WHERE (r.status = 'pending' OR (r.status = 'running' AND r.lease_until < clock_timestamp()))
      AND NOT EXISTS (
        SELECT 1 FROM agentstack_runs o WHERE o.thread_id = r.thread_id
          AND o.status IN ('pending', 'running') AND (o.created_at, o.run_id) < (r.created_at, r.run_id))
    ORDER BY r.created_at, r.run_id
    LIMIT 1
    FOR UPDATE OF r, t SKIP LOCKED
)
UPDATE agentstack_runs AS u
SET status = 'running', worker = %(worker)s, attempt = u.attempt + 1,
    lease_until = clock_timestamp() + make_interval(secs => %(lease)s), updated_at = clock_timestamp()
FROM candidate
WHERE u.run_id = candidate.run_id
  AND (u.status = 'pending' OR (u.status = 'running' AND u.lease_until < clock_timestamp()))
RETURNING {", ".join(f"u.{c}" for c in _RUN_COLUMNS.split(", "))}""",
                    {"worker": worker, "lease": lease_s},
                )
            ).fetchone()
        return _run(row) if row is not None else None

    async def renew(self, run: Run, *, lease_s: float) -> CancelAction | None:
        """Extend `run`'s lease; the cancel asked for it since (stop at the next superstep), or None.

        Raises `LeaseLostError` when the run is no longer this claim's: its lease lapsed and another worker
        took it, or it was settled (cancelled while pending, deleted by a rollback).
        """
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    "UPDATE agentstack_runs SET lease_until = clock_timestamp() + make_interval(secs => %s) "
                    "WHERE run_id = %s AND worker = %s AND attempt = %s AND status = 'running' RETURNING cancel",
                    (lease_s, run.run_id, run.worker, run.attempt),
                )
            ).fetchone()
        if row is None:
            raise _lost(run)
        return row["cancel"]

    async def finish(self, run: Run, status: RunStatus, *, thread_status: ThreadStatusValue, error: Any = None) -> None:
        """Settle a claimed run; the thread takes `thread_status` unless another run of it is unfinished.

        A run cancelled with rollback is deleted instead, its thread's checkpoints with it being the
        caller's to delete (they are the checkpointer's tables).
        """
        if status not in FINAL:
            raise ConfigError(f"{status!r} is not a final run status", fix=f"one of {', '.join(sorted(FINAL))}")
        # two round trips, as in `put_run`
        async with self.pool.connection() as conn, conn.pipeline(), conn.transaction():
            owned = await (
                await conn.execute(
                    "SELECT cancel FROM agentstack_runs WHERE run_id = %s AND worker = %s AND attempt = %s "
                    "AND status = 'running' FOR UPDATE",
                    (run.run_id, run.worker, run.attempt),
                )
            ).fetchone()
            if owned is None:
                raise _lost(run)
            if owned["cancel"] == "rollback":
                await conn.execute("DELETE FROM agentstack_runs WHERE run_id = %s", (run.run_id,))
            else:
                await conn.execute(
                    "UPDATE agentstack_runs SET status = %s, error = %s, worker = NULL, lease_until = NULL, "
                    "updated_at = clock_timestamp() WHERE run_id = %s",
                    (status, Jsonb(error) if error is not None else None, run.run_id),
                )
            await _settle_thread(conn, run.thread_id, thread_status, error)
            await conn.execute(
                "SELECT pg_notify('agentstack_runs', %s), pg_notify('agentstack_events', %s), "
                "pg_notify('agentstack_ended', %s)",
                (run.thread_id, run.run_id, run.run_id),
            )

    async def release(self, run: Run) -> None:
        """Give a claimed run back (a worker draining on shutdown): pending again, for the next worker."""
        async with self.pool.connection() as conn:
            done = await conn.execute(
                "UPDATE agentstack_runs SET status = 'pending', worker = NULL, lease_until = NULL, "
                "updated_at = clock_timestamp() WHERE run_id = %s AND worker = %s AND attempt = %s "
                "AND status = 'running'",
                (run.run_id, run.worker, run.attempt),
            )
            if done.rowcount:
                await conn.execute("SELECT pg_notify('agentstack_runs', %s)", (run.thread_id,))

    async def delete_run(self, run: Run) -> None:
        """Delete an ended run and its events (its checkpoints are the checkpointer's to delete)."""
        async with self.pool.connection() as conn:
            done = await conn.execute(
                "DELETE FROM agentstack_runs WHERE run_id = %s AND status <> ALL(%s)",
                (run.run_id, ["pending", "running"]),
            )
        if not done.rowcount:
            raise ConflictError(f"run {run.run_id} has not ended", fix="cancel it first, or wait for it to end")

    async def cancel(self, thread_id: str, run_id: str, action: CancelAction = "interrupt") -> None:
        """Stop a run: a pending one at once, a running one at its worker's next lease renewal."""
        if action not in ("interrupt", "rollback"):
            raise ConfigError(f"cancel action {action!r} is not interrupt or rollback", fix="action='interrupt'")
        async with self.pool.connection() as conn, conn.transaction():
            found = await (
                await conn.execute(
                    "SELECT status FROM agentstack_runs WHERE thread_id = %s AND run_id = %s FOR UPDATE",
                    (thread_key(thread_id), as_uuid(run_id, "run")),
                )
            ).fetchone()
            if found is None:
                raise NotFoundError(f"there is no run {run_id} on thread {thread_id}", fix="list the thread's runs")
            if found["status"] in FINAL:
                return
            await _cancel_rows(conn, [run_id], action)

    # -- stream events ------------------------------------------------------------------------------

    async def append_event(self, run: Run, event: str, data: Any) -> int:
        """Append one event to `run`'s stream, fenced by the claim; its sequence number."""
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    """WITH appended AS (
    INSERT INTO agentstack_run_events (run_id, seq, event, data)
    SELECT %(run)s, coalesce((SELECT max(seq) FROM agentstack_run_events WHERE run_id = %(run)s), 0) + 1,
           %(event)s, %(data)s
    WHERE EXISTS (SELECT 1 FROM agentstack_runs WHERE run_id = %(run)s AND worker = %(worker)s
                  AND attempt = %(attempt)s AND status = 'running')
    RETURNING seq
)
SELECT seq, pg_notify('agentstack_events', %(run)s::text) FROM appended""",
                    {
                        "run": run.run_id,
                        "event": event,
                        "data": Jsonb(data),
                        "worker": run.worker,
                        "attempt": run.attempt,
                    },
                )
            ).fetchone()
        if row is None:
            raise _lost(run)
        return int(row["seq"])

    async def delete_events(self, *, ended_before_s: float) -> int:
        """Delete the stream events of runs that ended more than `ended_before_s` seconds ago; how many.

        The runs stay (status, error, metadata), and so do their threads' checkpoints: only the replay of
        their streams goes."""
        async with self.pool.connection() as conn:
            done = await conn.execute(
                "DELETE FROM agentstack_run_events e USING agentstack_runs r WHERE e.run_id = r.run_id "
                "AND r.status IN ('success', 'error', 'timeout', 'interrupted') "
                "AND r.updated_at < clock_timestamp() - make_interval(secs => %s)",
                (ended_before_s,),
            )
        return done.rowcount

    async def final_events(self, run_id: str) -> dict[str, StreamEvent]:
        """The events a finished run's result is made of, in one query: its last `values`, its last `error`, and
        its last `updates` that carried an interrupt (keyed "interrupt")."""
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    """SELECT DISTINCT ON (kind) kind, seq, event, data FROM (
    SELECT CASE WHEN event = 'updates' THEN 'interrupt' ELSE event END AS kind, seq, event, data
    FROM agentstack_run_events
    WHERE run_id = %s AND (event IN ('values', 'error') OR (event = 'updates' AND data ? '__interrupt__'))
) AS e ORDER BY kind, seq DESC""",
                    (as_uuid(run_id, "run"),),
                )
            ).fetchall()
        return {r["kind"]: StreamEvent(int(r["seq"]), r["event"], r["data"]) for r in rows}

    async def events_after(self, run_id: str, seq: int = 0, *, limit: int = 1000) -> list[StreamEvent]:
        """The run's events after `seq` (a client's `Last-Event-ID`; 0: from the start), in order."""
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    "SELECT seq, event, data FROM agentstack_run_events WHERE run_id = %s AND seq > %s "
                    "ORDER BY seq LIMIT %s",
                    (as_uuid(run_id, "run"), seq, limit),
                )
            ).fetchall()
        return [StreamEvent(int(r["seq"]), r["event"], r["data"]) for r in rows]


async def _cancel_rows(conn: Any, run_ids: list[Any], action: CancelAction) -> None:
    """Pending runs settle now (interrupted; deleted by a rollback); running ones are told through `cancel`."""
    ids = [str(r) for r in run_ids]
    if action == "rollback":
        await conn.execute("DELETE FROM agentstack_runs WHERE run_id = ANY(%s::uuid[]) AND status = 'pending'", (ids,))
    else:
        await conn.execute(
            "UPDATE agentstack_runs SET status = 'interrupted', updated_at = clock_timestamp() "
            "WHERE run_id = ANY(%s::uuid[]) AND status = 'pending'",
            (ids,),
        )
    await conn.execute(
        "UPDATE agentstack_runs SET cancel = %s, updated_at = clock_timestamp() "
        "WHERE run_id = ANY(%s::uuid[]) AND status = 'running'",
        (action, ids),
    )
    await conn.execute(
        "SELECT pg_notify('agentstack_cancels', string_agg(id, ',')) FROM unnest(%s::text[]) AS id", (ids,)
    )


async def _settle_thread(conn: Any, thread_id: Any, status: ThreadStatusValue, error: Any) -> None:
    await conn.execute(
        """UPDATE agentstack_threads SET updated_at = now(), error = %(error)s,
    status = CASE WHEN EXISTS (SELECT 1 FROM agentstack_runs WHERE thread_id = %(thread)s
                               AND status IN ('pending', 'running')) THEN 'busy' ELSE %(status)s END
WHERE thread_id = %(thread)s""",
        {"thread": thread_id, "status": status, "error": Jsonb(error) if error is not None else None},
    )


def _lost(run: Run) -> LeaseLostError:
    return LeaseLostError(
        f"run {run.run_id} (attempt {run.attempt}) is no longer held by worker {run.worker}: its lease lapsed and "
        "another worker took it, or it was cancelled",
        fix="stop working on it; the run's current holder carries it on",
    )


def _uuid7() -> uuid.UUID:
    """A time-ordered UUID (version 7), as the LangGraph API gives runs: ids sort by creation."""
    millis = time.time_ns() // 1_000_000
    value = (millis & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big") & ((1 << 80) - 1)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return uuid.UUID(int=value)


def _run(row: Mapping[str, Any]) -> Run:
    return Run(**{k: (str(v) if k in ("run_id", "thread_id") else v) for k, v in row.items()})
