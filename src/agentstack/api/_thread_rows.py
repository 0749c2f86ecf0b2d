"""The agent server's threads on Postgres: made, read, searched, counted, patched, deleted, and the ones the
CLI started adopted from their checkpoints. A part of `RunQueue` (its runs lock and settle these rows)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from psycopg.types.json import Jsonb

from agentstack.errors import ConfigError, ConflictError, NotFoundError

__all__ = ["Thread", "ThreadRows", "ThreadStatusValue", "as_uuid", "thread_key", "thread_of"]

ThreadStatusValue = Literal["idle", "busy", "interrupted", "error"]
_THREAD_SORTS = ("thread_id", "status", "created_at", "updated_at")


@dataclass(frozen=True)
class Thread:
    thread_id: str
    created_at: datetime
    updated_at: datetime
    metadata: dict[str, Any]
    status: ThreadStatusValue
    error: Any = None
    owner: str | None = None  # the key that made it (`agentstack.safety`); None: made while the server was open


class ThreadRows:
    pool: Any  # a psycopg async pool in autocommit mode, dict rows

    async def create_thread(
        self,
        thread_id: str | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        if_exists: Literal["raise", "do_nothing"] = "raise",
        owner: str | None = None,
    ) -> Thread:
        """A new thread, owned by the key `owner` (None: nobody's, seen by admin keys and an open server)."""
        thread_id = as_uuid(thread_id or str(uuid.uuid4()), "thread")
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    "INSERT INTO agentstack_threads (thread_id, metadata, owner) VALUES (%s, %s, %s) "
                    "ON CONFLICT (thread_id) DO NOTHING RETURNING *",
                    (thread_id, Jsonb(dict(metadata or {})), owner),
                )
            ).fetchone()
            if row is None:
                if if_exists == "raise":
                    raise ConflictError(
                        f"thread {thread_id} already exists", fix="use another thread id, or if_exists='do_nothing'"
                    )
                row = await (
                    await conn.execute("SELECT * FROM agentstack_threads WHERE thread_id = %s", (thread_id,))
                ).fetchone()
        return thread_of(row)

    async def get_thread(self, thread_id: str, *, visible_to: str | None = None) -> Thread:
        """The thread; with `visible_to`, a thread another key made is missing too (404: its existence is not
        told)."""
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    "SELECT * FROM agentstack_threads WHERE thread_id = %s AND (%s::text IS NULL OR owner = %s)",
                    (thread_key(thread_id), visible_to, visible_to),
                )
            ).fetchone()
        if row is None:
            raise NotFoundError(f"there is no thread {thread_id}", fix="create it first, or use if_not_exists='create'")
        return thread_of(row)

    async def search_threads(
        self,
        *,
        metadata: Mapping[str, Any] | None = None,
        status: str | None = None,
        ids: list[str] | None = None,
        limit: int = 10,
        offset: int = 0,
        sort_by: str = "updated_at",
        sort_order: str = "desc",
        owner: str | None = None,
    ) -> list[Thread]:
        """Threads whose metadata contains `metadata` (JSON containment), with `status`, among `ids`, made by
        the key `owner` (None: anyone's)."""
        if sort_by not in _THREAD_SORTS:
            raise ConfigError(f"threads cannot be sorted by {sort_by!r}", fix=f"one of {', '.join(_THREAD_SORTS)}")
        direction = "ASC" if str(sort_order).lower() == "asc" else "DESC"
        where, args = _thread_filter(metadata, status, ids, owner)
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    f"SELECT * FROM agentstack_threads WHERE {where} "
                    f"ORDER BY {sort_by} {direction}, thread_id {direction} LIMIT %s OFFSET %s",
                    (*args, limit, offset),
                )
            ).fetchall()
        return [thread_of(r) for r in rows]

    async def count_threads(
        self,
        *,
        metadata: Mapping[str, Any] | None = None,
        status: str | None = None,
        ids: list[str] | None = None,
        owner: str | None = None,
    ) -> int:
        """How many threads `search_threads` would find with no limit."""
        where, args = _thread_filter(metadata, status, ids, owner)
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(f"SELECT count(*) AS n FROM agentstack_threads WHERE {where}", args)
            ).fetchone()
        return int(row["n"]) if row is not None else 0

    async def adopt_threads(self, graph_ids: Sequence[str], thread_id: str | None = None) -> list[str]:
        """Register the threads whose checkpoints (in this database, written by the CLI, `Stack` or another
        LangGraph server) name one of `graph_ids` as their agentstack graph, so this server sees them: all such
        threads, or only `thread_id`. The adopted ids, to be given their status (`set_thread_status`).

        Reads the checkpoint table LangGraph's Postgres savers share (`checkpoints`, root namespace, the
        `agentstack_graph` metadata `Stack.graph` records); a database without it has nothing to adopt.
        """
        if not graph_ids:
            return []
        async with self.pool.connection() as conn:
            exists = await (await conn.execute("SELECT to_regclass('checkpoints') IS NOT NULL AS t")).fetchone()
            if exists is None or not exists["t"]:
                return []
            rows = await (
                await conn.execute(
                    """INSERT INTO agentstack_threads (thread_id, metadata, created_at, updated_at)
SELECT c.thread_id, jsonb_build_object('graph_id', min(c.metadata->>'agentstack_graph')),
       min((c.checkpoint->>'ts')::timestamptz), max((c.checkpoint->>'ts')::timestamptz)
FROM checkpoints c
WHERE c.checkpoint_ns = '' AND c.metadata->>'agentstack_graph' = ANY(%(graphs)s)
  AND (%(thread)s::text IS NULL OR c.thread_id = %(thread)s)
  AND NOT EXISTS (SELECT 1 FROM agentstack_threads t WHERE t.thread_id = c.thread_id)
GROUP BY c.thread_id
ON CONFLICT (thread_id) DO NOTHING
RETURNING thread_id""",
                    {"graphs": list(graph_ids), "thread": thread_id},
                )
            ).fetchall()
        return [str(r["thread_id"]) for r in rows]

    async def set_thread_status(self, thread_id: str, status: ThreadStatusValue) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE agentstack_threads SET status = %s WHERE thread_id = %s", (status, thread_key(thread_id))
            )

    async def patch_thread(self, thread_id: str, metadata: Mapping[str, Any]) -> Thread:
        """Merge `metadata` into the thread's (a shallow merge, as the LangGraph API's PATCH)."""
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    "UPDATE agentstack_threads SET metadata = metadata || %s, updated_at = now() "
                    "WHERE thread_id = %s RETURNING *",
                    (Jsonb(dict(metadata)), thread_key(thread_id)),
                )
            ).fetchone()
        if row is None:
            raise NotFoundError(f"there is no thread {thread_id}", fix="create it first")
        return thread_of(row)

    async def delete_thread(self, thread_id: str) -> None:
        """Delete the thread, its runs and their events; refused while a run of it is unfinished."""
        async with self.pool.connection() as conn, conn.transaction():
            locked = await (
                await conn.execute(
                    "SELECT 1 FROM agentstack_threads WHERE thread_id = %s FOR UPDATE", (thread_key(thread_id),)
                )
            ).fetchone()
            if locked is None:
                raise NotFoundError(f"there is no thread {thread_id}", fix="list the threads with /threads/search")
            await self._refuse_if_busy(conn, thread_id, "deleted")
            await conn.execute("DELETE FROM agentstack_threads WHERE thread_id = %s", (thread_id,))

    async def check_idle(self, thread_id: str, doing: str) -> None:
        """Refuse (409) to change a thread's state while one of its runs is unfinished."""
        async with self.pool.connection() as conn:
            await self._refuse_if_busy(conn, thread_id, doing)

    @staticmethod
    async def _refuse_if_busy(conn: Any, thread_id: str, doing: str) -> None:
        busy = await (
            await conn.execute(
                "SELECT 1 FROM agentstack_runs WHERE thread_id = %s AND status IN ('pending', 'running') LIMIT 1",
                (thread_key(thread_id),),
            )
        ).fetchone()
        if busy is not None:
            raise ConflictError(
                f"thread {thread_id} is busy with a run: it cannot be {doing} now",
                fix="wait for its runs to finish, or cancel them",
            )


def _thread_filter(
    metadata: Mapping[str, Any] | None, status: str | None, ids: list[str] | None, owner: str | None
) -> tuple[str, tuple[Any, ...]]:
    """The WHERE clause (and its arguments) that thread search and count share."""
    keys = [thread_key(i) for i in ids] if ids is not None else None
    where = (
        "metadata @> %s AND (%s::text IS NULL OR status = %s) AND (%s::text[] IS NULL OR thread_id = ANY(%s)) "
        "AND (%s::text IS NULL OR owner = %s)"
    )
    return where, (Jsonb(dict(metadata or {})), status, status, keys, keys, owner, owner)


def thread_key(value: str) -> str:
    """A thread id as stored: a UUID in its canonical form (as the API creates them), any other id as it is
    (a thread the CLI started, `research-...`, adopted from its checkpoints)."""
    value = str(value)
    if not value or len(value) > 255:
        raise ConfigError(f"thread id {value!r} is empty or too long", fix="use the thread's id, e.g. a UUID")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return value


def as_uuid(value: str, kind: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ConfigError(f"{kind} id {value!r} is not a UUID", fix=f"use a UUID, e.g. {uuid.uuid4()}") from None


def thread_of(row: Mapping[str, Any]) -> Thread:
    return Thread(
        thread_id=str(row["thread_id"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        metadata=dict(row["metadata"]),
        status=row["status"],
        error=row["error"],
        owner=row.get("owner"),
    )
