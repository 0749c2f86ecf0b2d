"""Reading checkpoints: the statements and the decoding of their rows.

The statements read the tables exactly as the stock saver lays them out (`_schema.LAYOUT`):
primitive channel values inline in `checkpoints.checkpoint`, everything else in
`checkpoint_blobs` keyed by the channel's version, a task's writes in `checkpoint_writes`.
One statement per read gathers a checkpoint with its blobs and pending writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import CheckpointTuple, PendingWrite, writes_sort_key
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.types import TASKS
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

__all__ = ["PENDING_SENDS_SQL", "SELECT_SQL", "decode_row", "migrate_pending_sends", "search_where"]

# A checkpoint row with its blobs (channel, type, blob) and pending writes
# (task_id, channel, type, blob, task_path, idx), each aggregated as bytea arrays.
SELECT_SQL = """
SELECT
    thread_id, checkpoint, checkpoint_ns, checkpoint_id, parent_checkpoint_id, metadata,
    (
        SELECT array_agg(array[bl.channel::bytea, bl.type::bytea, bl.blob])
        FROM jsonb_each_text(checkpoint -> 'channel_versions')
        JOIN checkpoint_blobs bl
            ON bl.thread_id = checkpoints.thread_id
            AND bl.checkpoint_ns = checkpoints.checkpoint_ns
            AND bl.channel = jsonb_each_text.key
            AND bl.version = jsonb_each_text.value
    ) AS channel_values,
    (
        SELECT array_agg(array[cw.task_id::bytea, cw.channel::bytea, cw.type::bytea, cw.blob,
                               convert_to(cw.task_path, 'UTF8'), cw.idx::text::bytea])
        FROM checkpoint_writes cw
        WHERE cw.thread_id = checkpoints.thread_id
            AND cw.checkpoint_ns = checkpoints.checkpoint_ns
            AND cw.checkpoint_id = checkpoints.checkpoint_id
    ) AS pending_writes
FROM checkpoints """

# Checkpoints before format 4 kept a superstep's `Send`s as writes to TASKS on their
# parent; readers move them into the child's channel values.
PENDING_SENDS_SQL = f"""
SELECT checkpoint_id, array_agg(array[type::bytea, blob] ORDER BY task_path, task_id, idx) AS sends
FROM checkpoint_writes
WHERE thread_id = %s AND checkpoint_id = ANY(%s) AND channel = '{TASKS}'
GROUP BY checkpoint_id
"""


def search_where(
    config: RunnableConfig | None, filter: dict[str, Any] | None, before: RunnableConfig | None
) -> tuple[str, list[Any]]:
    """`alist`'s WHERE clause and its parameters."""
    wheres: list[str] = []
    params: list[Any] = []
    if config:
        configurable = config["configurable"]
        wheres.append("thread_id = %s")
        params.append(configurable["thread_id"])
        if configurable.get("checkpoint_ns") is not None:
            wheres.append("checkpoint_ns = %s")
            params.append(configurable["checkpoint_ns"])
        if checkpoint_id := configurable.get("checkpoint_id"):
            wheres.append("checkpoint_id = %s")
            params.append(checkpoint_id)
    if filter:
        wheres.append("metadata @> %s")
        params.append(Jsonb(filter))
    if before is not None:
        wheres.append("checkpoint_id < %s")
        params.append(before["configurable"].get("checkpoint_id"))
    return ("WHERE " + " AND ".join(wheres) if wheres else ""), params


def needs_pending_sends(row: DictRow) -> bool:
    return bool(row["checkpoint"]["v"] < 4 and row["parent_checkpoint_id"])


def migrate_pending_sends(
    serde: SerializerProtocol, row: DictRow, sends: Sequence[tuple[bytes, bytes]], first_version: str
) -> None:
    """Give a pre-format-4 checkpoint row the TASKS value its parent's writes hold."""
    if not sends:
        return
    kind, blob = serde.dumps_typed([serde.loads_typed((t.decode(), b)) for t, b in sends])
    if row["channel_values"] is None:
        row["channel_values"] = []
    row["channel_values"].append((TASKS.encode(), kind.encode(), blob))
    versions = row["checkpoint"]["channel_versions"]
    versions[TASKS] = max(versions.values()) if versions else first_version


def decode_row(serde: SerializerProtocol, row: DictRow) -> CheckpointTuple:
    """A `CheckpointTuple` from a `SELECT_SQL` row."""
    thread_id, ns = row["thread_id"], row["checkpoint_ns"]
    checkpoint = row["checkpoint"]
    parent = row["parent_checkpoint_id"]
    return CheckpointTuple(
        {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": row["checkpoint_id"]}},
        {**checkpoint, "channel_values": {**(checkpoint.get("channel_values") or {}), **_blobs(serde, row)}},
        row["metadata"],
        {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": parent}} if parent else None,
        _writes(serde, row["pending_writes"]),
    )


def _blobs(serde: SerializerProtocol, row: DictRow) -> dict[str, Any]:
    values = row["channel_values"] or ()
    return {c.decode(): serde.loads_typed((t.decode(), b)) for c, t, b in values if t != b"empty"}


def _writes(serde: SerializerProtocol, rows: Sequence[Sequence[bytes]] | None) -> list[PendingWrite]:
    """Pending writes in `writes_sort_key` order: the order a superstep applies them in."""
    ordered = sorted(rows or (), key=lambda w: writes_sort_key(w[4].decode(), w[0].decode(), int(w[5])))
    return [(tid.decode(), ch.decode(), serde.loads_typed((t.decode(), b))) for tid, ch, t, b, _, _ in ordered]
