"""`PoolSaver.acopy_thread` and `adelete_for_runs`: LangGraph's saver contract for copying a thread and for
taking back what runs saved (the agent server's thread copy and `multitask_strategy="rollback"`).

A copy takes every row of the thread (all namespaces, the whole parent chain, pending writes, blobs) in one
statement per table, so the target reads exactly as the source did, DeltaChannel history included; a target
that already has checkpoints is refused rather than merged into.

Deleting runs removes the checkpoints whose metadata names one of the runs (every checkpoint records the
`run_id` of the run that saved it, subgraph namespaces included), the writes saved against them, the blobs
only they referenced, and the parent link of a later checkpoint that pointed at one of them; all in one
transaction. Threads that use a DeltaChannel are refused, as `aprune` refuses them: their values are rebuilt
from older rows.

A run that continued a thread (a resume, or a retry after a failed step) also wrote against the checkpoint
an earlier run left waiting: the resume value, and the writes of the task it finished. Left there, they would
make the thread's next run skip that task, as if the deleted run had done it. The row does not say which run
wrote it, but the checkpoint says what was waiting: a task with an interrupt or an error written against it
had no other write when its run stopped, and a waiting checkpoint had no resume value. So on the checkpoints
that are the thread's heads once the runs' are gone (in every namespace), the resume values and the other
writes of such tasks are deleted too, and the thread waits where it waited. (A run cancelled after finishing
such a task but before saving its next checkpoint left no checkpoint to find its thread by: its writes stay.)
"""

from __future__ import annotations

from collections.abc import Sequence

from langgraph.checkpoint.base import WRITES_IDX_MAP
from psycopg.rows import dict_row

from agentstack.checkpoint._prune import Pool, delta_threads
from agentstack.errors import CheckpointError, ConflictError, UserError

__all__ = ["copy_thread", "delete_runs"]

_COPY_SQL = (
    """INSERT INTO checkpoints
    (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata)
SELECT %(target)s, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata
FROM checkpoints WHERE thread_id = %(source)s""",
    """INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
SELECT %(target)s, checkpoint_ns, channel, version, type, blob FROM checkpoint_blobs WHERE thread_id = %(source)s""",
    """INSERT INTO checkpoint_writes
    (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob)
SELECT %(target)s, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob
FROM checkpoint_writes WHERE thread_id = %(source)s""",
)

_DELETE_CHECKPOINTS_SQL = """
DELETE FROM checkpoints WHERE metadata ->> 'run_id' = ANY(%s)
RETURNING thread_id, checkpoint_ns, checkpoint_id, checkpoint -> 'channel_versions' AS versions
"""

_DELETE_WRITES_SQL = """
DELETE FROM checkpoint_writes WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = ANY(%s)
"""

_ORPHANS_SQL = """
UPDATE checkpoints SET parent_checkpoint_id = NULL
WHERE thread_id = %s AND checkpoint_ns = %s AND parent_checkpoint_id = ANY(%s)
"""

# On each head checkpoint (no child in its namespace) of the threads: what continuing a waiting task wrote.
_DELETE_CONTINUATIONS_SQL = """
DELETE FROM checkpoint_writes w
USING checkpoints h
WHERE h.thread_id = ANY(%(threads)s)
  AND NOT EXISTS (
    SELECT 1 FROM checkpoints c
    WHERE c.thread_id = h.thread_id AND c.checkpoint_ns = h.checkpoint_ns AND c.parent_checkpoint_id = h.checkpoint_id
  )
  AND w.thread_id = h.thread_id AND w.checkpoint_ns = h.checkpoint_ns AND w.checkpoint_id = h.checkpoint_id
  AND (w.idx >= 0 OR w.idx = %(resume)s)
  AND EXISTS (
    SELECT 1 FROM checkpoint_writes waiting
    WHERE waiting.thread_id = w.thread_id AND waiting.checkpoint_ns = w.checkpoint_ns
      AND waiting.checkpoint_id = w.checkpoint_id AND waiting.idx = ANY(%(waiting)s)
      -- a task's own writes; a resume value may be the whole run's (written under the null task id)
      AND (waiting.task_id = w.task_id OR w.idx = %(resume)s)
  )
"""

# The blobs of (channel, version) pairs the deleted checkpoints used that no remaining checkpoint uses.
_DELETE_BLOBS_SQL = """
DELETE FROM checkpoint_blobs b
USING unnest(%(channels)s::text[], %(versions)s::text[]) AS freed(channel, version)
WHERE b.thread_id = %(t)s AND b.checkpoint_ns = %(ns)s AND b.channel = freed.channel AND b.version = freed.version
  AND NOT EXISTS (
    SELECT 1 FROM checkpoints c
    WHERE c.thread_id = %(t)s AND c.checkpoint_ns = %(ns)s
      AND c.checkpoint -> 'channel_versions' ->> freed.channel = freed.version
  )
"""


async def copy_thread(pool: Pool, source: str, target: str) -> None:
    """Copy every row of thread `source` to the new thread `target` (see the module docstring)."""
    source, target = str(source), str(target)
    if source == target:
        raise UserError(f"cannot copy thread {source!r} onto itself", fix="give the copy another thread id")
    async with pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT 1 FROM checkpoints WHERE thread_id = %s LIMIT 1", (target,))
        if await cur.fetchone() is not None:
            raise ConflictError(
                f"thread {target!r} already has checkpoints: a copy would mix two histories",
                fix="copy into a new thread id, or delete that thread first",
            )
        for sql in _COPY_SQL:
            await cur.execute(sql, {"source": source, "target": target})


async def delete_runs(pool: Pool, run_ids: Sequence[str]) -> None:
    """Delete what `run_ids` saved (see the module docstring)."""
    if isinstance(run_ids, str):
        raise UserError(
            "adelete_for_runs() takes a sequence of run ids, got one string",
            fix=f"pass a list: adelete_for_runs([{run_ids!r}])",
        )
    ids = [str(r) for r in run_ids]
    if not ids:
        return
    async with pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT DISTINCT thread_id FROM checkpoints WHERE metadata ->> 'run_id' = ANY(%s)", (ids,), prepare=False
        )
        threads = [r["thread_id"] for r in await cur.fetchall()]
        if delta := await delta_threads(cur, threads):
            raise CheckpointError(
                f"the runs' checkpoints cannot be deleted from threads that use a DeltaChannel: {', '.join(delta)}; "
                "their values are rebuilt from the rows this would delete",
                fix="delete those threads whole (adelete_thread), or keep the runs",
            )
        await cur.execute(_DELETE_CHECKPOINTS_SQL, (ids,), prepare=False)
        deleted: dict[tuple[str, str], list[tuple[str, dict[str, str]]]] = {}
        for row in await cur.fetchall():
            deleted.setdefault((row["thread_id"], row["checkpoint_ns"]), []).append(
                (row["checkpoint_id"], row["versions"] or {})
            )
        for (thread_id, ns), checkpoints in deleted.items():
            checkpoint_ids = [c for c, _ in checkpoints]
            await cur.execute(_DELETE_WRITES_SQL, (thread_id, ns, checkpoint_ids), prepare=False)
            await cur.execute(_ORPHANS_SQL, (thread_id, ns, checkpoint_ids), prepare=False)
            freed = sorted({(channel, str(v)) for _, versions in checkpoints for channel, v in versions.items()})
            if freed:
                channels, versions = [c for c, _ in freed], [v for _, v in freed]
                await cur.execute(
                    _DELETE_BLOBS_SQL,
                    {"t": thread_id, "ns": ns, "channels": channels, "versions": versions},
                    prepare=False,
                )
        if deleted:
            await cur.execute(
                _DELETE_CONTINUATIONS_SQL,
                {
                    "threads": sorted({thread_id for thread_id, _ in deleted}),
                    "resume": WRITES_IDX_MAP["__resume__"],  # the special writes' fixed indexes (base.py)
                    "waiting": [WRITES_IDX_MAP["__interrupt__"], WRITES_IDX_MAP["__error__"]],
                },
                prepare=False,
            )
