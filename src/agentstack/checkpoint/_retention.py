"""Retention: list threads, prune a thread's history, delete a thread.

Pruning keeps what resume and time travel need: in every checkpoint namespace of the
thread the newest checkpoint always stays (resume reads it), every kept checkpoint keeps
its pending writes and every blob it references, and a kept checkpoint whose parent was
pruned gets no parent (rather than a link to nothing). Only checkpoints that were seen
when the prune began are ever deleted, so a run saving into the thread meanwhile loses
nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import DictRow
from psycopg_pool import AsyncConnectionPool

from agentstack.checkpoint._boundary import postgres_errors
from agentstack.checkpoint._prune import DELTA_THREADS_SQL
from agentstack.errors import CheckpointError, ConfigError

__all__ = ["PruneResult", "ThreadSummary", "delete_thread", "list_threads", "parse_duration", "prune_thread"]

Pool = AsyncConnectionPool[psycopg.AsyncConnection[DictRow]]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True)
class ThreadSummary:
    thread_id: str
    checkpoints: int
    namespaces: int
    last_saved: datetime | None


@dataclass(frozen=True)
class PruneResult:
    thread_id: str
    checkpoints_deleted: int
    writes_deleted: int
    blobs_deleted: int
    checkpoints_kept: int


def parse_duration(text: str) -> timedelta:
    """`30s`, `15m`, `12h`, `7d`, `2w` (or combinations like `1d12h`) as a timedelta."""
    parts = re.findall(r"(\d+)\s*([smhdw])", text.strip().lower())
    if not parts or "".join(f"{n}{u}" for n, u in parts) != re.sub(r"\s+", "", text.strip().lower()):
        raise ConfigError(
            f"cannot read {text!r} as a duration", fix="write it as a number and a unit: 30m, 12h, 7d, 2w or 1d12h"
        )
    return timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in parts))


def _timestamp(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


async def list_threads(pool: Pool, *, limit: int = 100) -> list[ThreadSummary]:
    """Threads with their checkpoint counts, most recently saved first."""
    with postgres_errors(pool.conninfo, doing="listing threads"):
        rows = await _thread_rows(pool, limit)
    return [ThreadSummary(r["thread_id"], r["checkpoints"], r["namespaces"], _timestamp(r["last_saved"])) for r in rows]


async def _thread_rows(pool: Pool, limit: int) -> list[DictRow]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            """
            SELECT thread_id, count(*) AS checkpoints, count(DISTINCT checkpoint_ns) AS namespaces,
                   max(checkpoint ->> 'ts') AS last_saved
            FROM checkpoints GROUP BY thread_id ORDER BY max(checkpoint ->> 'ts') DESC NULLS LAST LIMIT %s
            """,
            (limit,),
        )
        return await cur.fetchall()


async def delete_thread(pool: Pool, thread_id: str) -> int:
    """Delete a thread's checkpoints, writes and blobs atomically; returns checkpoints deleted."""
    with postgres_errors(pool.conninfo, doing=f"deleting thread {thread_id!r}"):
        return await _delete_thread(pool, thread_id)


async def _delete_thread(pool: Pool, thread_id: str) -> int:
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute("DELETE FROM checkpoints WHERE thread_id = %s", (thread_id,))
        deleted = cur.rowcount
        await conn.execute("DELETE FROM checkpoint_writes WHERE thread_id = %s", (thread_id,))
        await conn.execute("DELETE FROM checkpoint_blobs WHERE thread_id = %s", (thread_id,))
    return deleted


def _choose_deletions(
    rows: Sequence[DictRow], keep_last: int | None, older_than: timedelta | None, now: datetime
) -> dict[str, list[str]]:
    """Per namespace, the checkpoint ids to delete. Rows come newest first within a namespace."""
    cutoff = now - older_than if older_than is not None else None
    doomed: dict[str, list[str]] = {}
    rank: dict[str, int] = {}
    for row in rows:
        ns = row["checkpoint_ns"]
        position = rank.get(ns, 0)
        rank[ns] = position + 1
        if position == 0:
            continue  # the newest checkpoint of a namespace is what resume reads: never pruned
        too_many = keep_last is not None and position >= keep_last
        saved = _timestamp(row["ts"])
        too_old = cutoff is not None and saved is not None and saved < cutoff
        if too_many or too_old:
            doomed.setdefault(ns, []).append(row["checkpoint_id"])
    # A checkpoint from before format 4 reads its pending Sends from its parent's writes (the stock saver's
    # migration on read): a kept one keeps its parent, or resuming it would lose them.
    # (Only the checkpoints the rules keep: a parent kept for its writes does not keep its own parent.)
    readers = [r for r in rows if r["checkpoint_id"] not in doomed.get(r["checkpoint_ns"], ()) and (r["v"] or 0) < 4]
    for row in readers:
        ns, parent = row["checkpoint_ns"], row["parent_checkpoint_id"]
        if parent and parent in doomed.get(ns, ()):
            doomed[ns].remove(parent)
    return {ns: ids for ns, ids in doomed.items() if ids}


async def prune_thread(
    pool: Pool,
    thread_id: str,
    *,
    keep_last: int | None = None,
    older_than: timedelta | None = None,
    now: datetime | None = None,
) -> PruneResult:
    """Delete a thread's older checkpoints: beyond the newest `keep_last`, and/or saved before `older_than` ago.

    With both, a checkpoint goes if either rule says so. The newest checkpoint of each
    namespace always stays.
    """
    if keep_last is None and older_than is None:
        raise ConfigError("prune needs a rule", fix="pass keep_last=N and/or older_than=timedelta(...)")
    if keep_last is not None and keep_last < 1:
        raise ConfigError(f"keep_last must be at least 1, got {keep_last}", fix="use delete_thread to remove a thread")
    with postgres_errors(pool.conninfo, doing=f"pruning thread {thread_id!r}"):
        return await _prune(pool, thread_id, keep_last, older_than, now or datetime.now(UTC))


async def _prune(
    pool: Pool, thread_id: str, keep_last: int | None, older_than: timedelta | None, now: datetime
) -> PruneResult:
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(DELTA_THREADS_SQL, ([thread_id], [thread_id]))
        if await cur.fetchone():
            raise CheckpointError(
                f"thread {thread_id!r} uses a DeltaChannel, whose values are rebuilt from the whole history",
                fix="keep its history, or delete the whole thread",
            )
        cur = await conn.execute(
            """SELECT checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint ->> 'ts' AS ts,
                      (checkpoint ->> 'v')::int AS v
               FROM checkpoints WHERE thread_id = %s ORDER BY checkpoint_ns, checkpoint_id DESC""",
            (thread_id,),
        )
        rows = await cur.fetchall()
        doomed = _choose_deletions(rows, keep_last, older_than, now)
        counts = [0, 0, 0]
        for ns, ids in doomed.items():
            for i, n in enumerate(await _delete_checkpoints(conn, thread_id, ns, ids)):
                counts[i] += n
    return PruneResult(thread_id, counts[0], counts[1], counts[2], len(rows) - counts[0])


async def _delete_checkpoints(
    conn: psycopg.AsyncConnection[Any], thread_id: str, ns: str, ids: list[str]
) -> tuple[int, int, int]:
    key = (thread_id, ns, ids)
    writes = await conn.execute(
        "DELETE FROM checkpoint_writes WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = ANY(%s)", key
    )
    cur = await conn.execute(
        """DELETE FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = ANY(%s)
           RETURNING checkpoint -> 'channel_versions' AS versions""",
        key,
    )
    freed = {(ch, str(v)) for row in await cur.fetchall() for ch, v in (row["versions"] or {}).items()}
    await conn.execute(
        """UPDATE checkpoints SET parent_checkpoint_id = NULL
           WHERE thread_id = %s AND checkpoint_ns = %s AND parent_checkpoint_id = ANY(%s)""",
        key,
    )
    cur = await conn.execute(
        """SELECT DISTINCT v.key AS channel, v.value AS version FROM checkpoints c
           CROSS JOIN LATERAL jsonb_each_text(c.checkpoint -> 'channel_versions') AS v
           WHERE c.thread_id = %s AND c.checkpoint_ns = %s""",
        (thread_id, ns),
    )
    referenced = {(r["channel"], r["version"]) for r in await cur.fetchall()}
    garbage = sorted(freed - referenced)
    blobs = 0
    if garbage:
        cur = await conn.execute(
            """DELETE FROM checkpoint_blobs b USING unnest(%s::text[], %s::text[]) AS g(channel, version)
               WHERE b.thread_id = %s AND b.checkpoint_ns = %s AND b.channel = g.channel AND b.version = g.version""",
            ([g[0] for g in garbage], [g[1] for g in garbage], thread_id, ns),
        )
        blobs = cur.rowcount
    return len(ids), writes.rowcount, blobs
