"""`PoolSaver.aprune`: LangGraph's prune contract, with the stock Postgres saver's semantics.

`"delete"` removes every checkpoint, write and blob of the threads in one transaction.
`"keep_latest"` keeps the latest checkpoint of each namespace (plus its parent when it
predates checkpoint format 4 and holds that checkpoint's pending sends), with its pending
writes and the blobs it references; a kept checkpoint whose parent is deleted gets no
parent; a subgraph call's namespace goes with the root checkpoint the call started from
(a `checkpointer=True` subgraph's namespace, with no task id, keeps its latest). Each
thread is pruned in its own REPEATABLE READ transaction, so a run appending meanwhile loses
nothing. Threads using a `DeltaChannel` are refused: their latest value is rebuilt from
older checkpoints.

The statements are ours (written for `_schema.LAYOUT`), the behaviour the stock saver's.
They look rows up by key (`LATERAL ... LIMIT 1`, `= ANY`) rather than join two sets of a
thread's rows, and run unprepared so Postgres plans each with its arrays in view: the
threads worth pruning are the huge ones, where a generic plan goes quadratic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from langgraph.checkpoint.serde.types import TASKS
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from agentstack.errors import CheckpointError, UserError

__all__ = ["DELTA_THREADS_SQL", "delta_threads", "prune_threads"]

STRATEGIES = ("keep_latest", "delete")

# A DeltaChannel leaves update counters in checkpoint metadata, or a snapshot: an inline
# `true` marker with a blob behind it, which a plain `True` value never has. LangGraph.js
# inlines no values, but marks the threads its DeltaChannel graphs start with
# `delta_writes_versioned`.
DELTA_THREADS_SQL = """
SELECT thread_id FROM checkpoints
WHERE thread_id = ANY(%s) AND (metadata ? 'counters_since_delta_snapshot' OR metadata ? 'delta_writes_versioned')
UNION
SELECT c.thread_id
FROM checkpoints c
CROSS JOIN LATERAL jsonb_each(c.checkpoint -> 'channel_values') AS v
CROSS JOIN LATERAL (
    SELECT 1 FROM checkpoint_blobs b
    WHERE b.thread_id = c.thread_id AND b.checkpoint_ns = c.checkpoint_ns
    AND b.channel = v.key AND b.version = c.checkpoint -> 'channel_versions' ->> v.key
    LIMIT 1
) AS snapshot
WHERE c.thread_id = ANY(%s) AND v.value = 'true'::jsonb
"""

_DELETE_THREADS_SQL = (
    "DELETE FROM checkpoints WHERE thread_id = ANY(%s)",
    "DELETE FROM checkpoint_blobs WHERE thread_id = ANY(%s)",
    "DELETE FROM checkpoint_writes WHERE thread_id = ANY(%s)",
)

# Per namespace: the latest checkpoint, the parent it reads its pending sends from when it
# predates v4, and the root graph's checkpoint its subgraph call started from, with
# whether that one is saved.
_HEADS_SQL = f"""
SELECT
    h.checkpoint_ns,
    h.checkpoint_id AS head,
    CASE WHEN (c.checkpoint ->> 'v')::int < 4 AND EXISTS (
        SELECT 1 FROM checkpoint_writes w
        WHERE w.thread_id = %(t)s AND w.checkpoint_ns = h.checkpoint_ns
        AND w.checkpoint_id = c.parent_checkpoint_id AND w.channel = '{TASKS}'
    ) THEN c.parent_checkpoint_id END AS sends_parent,
    c.metadata -> 'parents' ->> '' AS root,
    EXISTS (
        SELECT 1 FROM checkpoints r
        WHERE r.thread_id = %(t)s AND r.checkpoint_ns = '' AND r.checkpoint_id = c.metadata -> 'parents' ->> ''
    ) AS root_saved
FROM (
    SELECT DISTINCT ON (checkpoint_ns) checkpoint_ns, checkpoint_id
    FROM checkpoints WHERE thread_id = %(t)s
    ORDER BY checkpoint_ns DESC, checkpoint_id DESC
) AS h
CROSS JOIN LATERAL (
    SELECT checkpoint, parent_checkpoint_id, metadata FROM checkpoints
    WHERE thread_id = %(t)s AND checkpoint_ns = h.checkpoint_ns AND checkpoint_id = h.checkpoint_id
) AS c
"""

_UNKEPT_SQL = """
SELECT checkpoint_id FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id <> ALL(%s)
"""

# A run saves a superstep's writes in the background, where they can commit before their
# checkpoint does, so they go by the checkpoints deleted.
_WRITES_SQL = "DELETE FROM checkpoint_writes WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = ANY(%s)"

_CHECKPOINTS_SQL = """
WITH deleted AS (
    DELETE FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id <> ALL(%s)
    RETURNING checkpoint -> 'channel_versions' AS versions
)
SELECT DISTINCT v.key AS channel, v.value AS version
FROM deleted CROSS JOIN LATERAL jsonb_each_text(deleted.versions) AS v
"""

_PARENTS_SQL = """
UPDATE checkpoints SET parent_checkpoint_id = NULL
WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = ANY(%s) AND parent_checkpoint_id <> ALL(%s)
"""

_REFERENCED_BLOBS_SQL = """
SELECT DISTINCT v.key AS channel, v.value AS version
FROM checkpoints c CROSS JOIN LATERAL jsonb_each_text(c.checkpoint -> 'channel_versions') AS v
WHERE c.thread_id = %s AND c.checkpoint_ns = %s
"""

_BLOBS_SQL = """
DELETE FROM checkpoint_blobs WHERE thread_id = %s AND checkpoint_ns = %s AND channel = %s AND version = ANY(%s)
"""

_SUBGRAPH_CALLS_SQL = (
    "DELETE FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = ANY(%s)",
    "DELETE FROM checkpoint_writes WHERE thread_id = %s AND checkpoint_ns = ANY(%s)",
    "DELETE FROM checkpoint_blobs WHERE thread_id = %s AND checkpoint_ns = ANY(%s)",
)

Pool = AsyncConnectionPool[psycopg.AsyncConnection[DictRow]]


async def delta_threads(cur: psycopg.AsyncCursor[DictRow], thread_ids: Sequence[str]) -> list[str]:
    """Which of `thread_ids` use a DeltaChannel."""
    await cur.execute(DELTA_THREADS_SQL, (list(thread_ids), list(thread_ids)), prepare=False)
    return sorted(r["thread_id"] for r in await cur.fetchall())


async def prune_threads(pool: Pool, thread_ids: Sequence[str], strategy: str) -> None:
    """Prune `thread_ids` by `strategy` (see the module docstring)."""
    if isinstance(thread_ids, str):
        raise UserError(
            "aprune() takes a sequence of thread ids, got one string", fix=f"pass a list: aprune([{thread_ids!r}])"
        )
    if strategy not in STRATEGIES:
        raise UserError(f"unknown prune strategy {strategy!r}", fix=f"use one of {', '.join(STRATEGIES)}")
    ids = [str(t) for t in thread_ids]
    if not ids:
        return
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        if strategy == "delete":
            async with conn.transaction():
                for sql in _DELETE_THREADS_SQL:
                    await cur.execute(sql, (ids,), prepare=False)
            return
        _refuse_delta(await delta_threads(cur, ids))
        for thread_id in ids:
            async with conn.transaction():
                await cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                await _keep_latest(cur, thread_id)


def _refuse_delta(threads: Sequence[str]) -> None:
    if threads:
        raise CheckpointError(
            f"keep_latest cannot prune threads that use a DeltaChannel: {', '.join(threads)}; their values "
            "are rebuilt from the older checkpoints it would delete",
            fix="leave these threads out of the prune, or delete them whole (strategy='delete')",
        )


async def _rows(cur: psycopg.AsyncCursor[DictRow], sql: str, params: Any) -> list[DictRow]:
    await cur.execute(sql, params, prepare=False)
    return await cur.fetchall()


async def _keep_latest(cur: psycopg.AsyncCursor[DictRow], thread_id: str) -> None:
    """One thread's keep_latest, inside its transaction: every statement reads one snapshot."""
    heads = await _rows(cur, _HEADS_SQL, {"t": thread_id})
    # Catches a thread that started using a DeltaChannel after the batch check.
    _refuse_delta(await delta_threads(cur, [thread_id]))
    kept = {h["checkpoint_ns"]: [i for i in (h["head"], h["sends_parent"]) if i] for h in heads}
    # A subgraph call's namespace has its task id after a ":", unlike a `checkpointer=True`
    # subgraph's, whose state outlives each call. A call goes with the root checkpoint it
    # started from, but only once that one is saved: runs save in the background, so a
    # call can commit first.
    calls = [
        h["checkpoint_ns"]
        for h in heads
        if ":" in h["checkpoint_ns"] and h["root_saved"] and h["root"] not in kept.get("", ())
    ]
    for sql in _SUBGRAPH_CALLS_SQL if calls else ():
        await cur.execute(sql, (thread_id, calls), prepare=False)
    for ns, ids in kept.items():
        if ns in calls:
            continue
        if unkept := await _rows(cur, _UNKEPT_SQL, (thread_id, ns, ids)):
            await cur.execute(_WRITES_SQL, (thread_id, ns, [r["checkpoint_id"] for r in unkept]), prepare=False)
        freed = await _rows(cur, _CHECKPOINTS_SQL, (thread_id, ns, ids))
        await cur.execute(_PARENTS_SQL, (thread_id, ns, ids, ids), prepare=False)
        if freed:
            referenced = await _rows(cur, _REFERENCED_BLOBS_SQL, (thread_id, ns))
            for channel, versions in _garbage_blobs(freed, referenced).items():
                await cur.execute(_BLOBS_SQL, (thread_id, ns, channel, versions), prepare=False)


def _garbage_blobs(freed: Sequence[DictRow], referenced: Sequence[DictRow]) -> dict[str, list[str]]:
    """Blobs a deleted checkpoint used and no kept one does, by channel."""
    kept = {(r["channel"], r["version"]) for r in referenced}
    garbage: dict[str, list[str]] = {}
    for r in freed:
        if (r["channel"], r["version"]) not in kept:
            garbage.setdefault(r["channel"], []).append(r["version"])
    return garbage
