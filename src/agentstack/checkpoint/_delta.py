"""`PoolSaver.aget_delta_channel_history`: a DeltaChannel's writes since its last stored value.

A `DeltaChannel` stores a value only every so often (a snapshot blob, or a plain value on
a thread migrated from another channel type); in between, LangGraph rebuilds it by
replaying the channel's writes along the parent chain. The base class walks that chain
with one `aget_tuple` per ancestor, loading every blob and write of each: up to a hundred
round trips per load at the default snapshot frequency. Here it is two statements:

1. a recursive walk up the parent chain from the target's parent that stops, channel by
   channel, at the first ancestor holding a value (a blob that is not `empty`, or a
   non-null inline value, the two places `aput` puts a value), and ends when every channel
   has its seed or the chain its root. Ancestors must have smaller ids than their child,
   as the stock saver assumes (uuid6 ids are time-ordered), which also ends any cycle;
2. the chain's writes to those channels, and the seed blobs.

The result is the stock saver's, entry for entry (tests/test_delta_channels.py compares).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import DeltaChannelHistory, PendingWrite, writes_sort_key
from langgraph.checkpoint.serde.base import SerializerProtocol
from psycopg.rows import DictRow

__all__ = ["delta_channel_history"]

_STORED_BLOB = """EXISTS (
    SELECT 1 FROM checkpoint_blobs b
    WHERE b.thread_id = p.thread_id AND b.checkpoint_ns = p.checkpoint_ns AND b.channel = ch
    AND b.version = p.checkpoint -> 'channel_versions' ->> ch AND b.type <> 'empty')"""
_STORED_INLINE = "jsonb_typeof(p.checkpoint -> 'channel_values' -> ch) <> 'null'"  # absent: NULL, not true
_FOUND = f"""
    CROSS JOIN LATERAL (SELECT
        ARRAY(SELECT ch FROM unnest(w.walking) AS ch WHERE {_STORED_BLOB}) AS in_blob,
        ARRAY(SELECT ch FROM unnest(w.walking) AS ch WHERE NOT {_STORED_BLOB} AND {_STORED_INLINE}) AS inline
    ) AS f"""
_STORED_COLUMNS = """CASE WHEN cardinality(f.in_blob) + cardinality(f.inline) > 0
        THEN p.checkpoint -> 'channel_versions' END AS versions,
    CASE WHEN cardinality(f.inline) > 0 THEN p.checkpoint -> 'channel_values' END AS inline_values"""

# One row per ancestor visited, nearest first: `walking` are the channels whose walk
# reaches it, `in_blob`/`inline` those that find their seed there.
_WALK_SQL = f"""
WITH RECURSIVE target AS (
    SELECT checkpoint_id, parent_checkpoint_id FROM checkpoints
    WHERE thread_id = %(t)s AND checkpoint_ns = %(ns)s AND (%(id)s::text IS NULL OR checkpoint_id = %(id)s)
    ORDER BY checkpoint_id DESC LIMIT 1
), chain AS (
    SELECT p.checkpoint_id, p.parent_checkpoint_id, 0 AS depth, w.walking, f.in_blob, f.inline, {_STORED_COLUMNS}
    FROM target
    JOIN checkpoints p ON p.thread_id = %(t)s AND p.checkpoint_ns = %(ns)s
        AND p.checkpoint_id = target.parent_checkpoint_id AND p.checkpoint_id < target.checkpoint_id
    CROSS JOIN LATERAL (SELECT %(channels)s::text[] AS walking) AS w
    {_FOUND}
  UNION ALL
    SELECT p.checkpoint_id, p.parent_checkpoint_id, chain.depth + 1, w.walking, f.in_blob, f.inline, {_STORED_COLUMNS}
    FROM chain
    CROSS JOIN LATERAL (SELECT ARRAY(
        SELECT ch FROM unnest(chain.walking) AS ch WHERE ch <> ALL(chain.in_blob) AND ch <> ALL(chain.inline)
    ) AS walking) AS w
    JOIN checkpoints p ON p.thread_id = %(t)s AND p.checkpoint_ns = %(ns)s
        AND p.checkpoint_id = chain.parent_checkpoint_id AND p.checkpoint_id < chain.checkpoint_id
    {_FOUND}
    WHERE cardinality(w.walking) > 0
)
SELECT checkpoint_id, walking, in_blob, inline, versions, inline_values FROM chain ORDER BY depth
"""

_VALUES_SQL = """
SELECT 'w' AS kind, checkpoint_id, channel, type, blob, task_id, task_path, idx, NULL AS version
FROM checkpoint_writes
WHERE thread_id = %(t)s AND checkpoint_ns = %(ns)s AND checkpoint_id = ANY(%(ids)s) AND channel = ANY(%(channels)s)
UNION ALL
SELECT 'b', NULL, b.channel, b.type, b.blob, NULL, NULL, NULL, b.version
FROM checkpoint_blobs b JOIN unnest(%(seed_channels)s::text[], %(seed_versions)s::text[]) AS s(channel, version)
    ON b.channel = s.channel AND b.version = s.version
WHERE b.thread_id = %(t)s AND b.checkpoint_ns = %(ns)s
"""


async def delta_channel_history(
    cur: psycopg.AsyncCursor[DictRow], serde: SerializerProtocol, config: RunnableConfig, channels: Sequence[str]
) -> Mapping[str, DeltaChannelHistory]:
    """Per channel, its writes since its nearest stored value (oldest first), and that value as `seed`."""
    if not channels:
        return {}
    configurable = config["configurable"]
    key = {"t": configurable["thread_id"], "ns": configurable.get("checkpoint_ns", "")}
    await cur.execute(_WALK_SQL, {**key, "id": configurable.get("checkpoint_id") or None, "channels": list(channels)})
    walk = await cur.fetchall()
    chains: dict[str, list[str]] = {ch: [] for ch in channels}  # nearest ancestor first
    blob_seeds: dict[str, str] = {}  # channel -> version of its seed blob
    inline_seeds: dict[str, Any] = {}
    for row in walk:
        for ch in row["walking"]:
            chains[ch].append(row["checkpoint_id"])
        for ch in row["in_blob"]:
            blob_seeds[ch] = row["versions"][ch]
        for ch in row["inline"]:
            inline_seeds[ch] = row["inline_values"][ch]
    writes: dict[tuple[str, str], list[DictRow]] = {}
    seeds: dict[str, Any] = dict(inline_seeds)
    if walk:
        await cur.execute(
            _VALUES_SQL,
            {
                **key,
                "ids": [row["checkpoint_id"] for row in walk],
                "channels": list(channels),
                "seed_channels": list(blob_seeds),
                "seed_versions": list(blob_seeds.values()),
            },
        )
        for row in await cur.fetchall():
            if row["kind"] == "w":
                writes.setdefault((row["channel"], row["checkpoint_id"]), []).append(row)
            elif blob_seeds.get(row["channel"]) == row["version"]:
                seeds[row["channel"]] = serde.loads_typed((row["type"], row["blob"]))
    return {ch: _history(serde, ch, chains[ch], writes, seeds) for ch in channels}


def _history(
    serde: SerializerProtocol,
    channel: str,
    chain: list[str],
    writes: Mapping[tuple[str, str], list[DictRow]],
    seeds: Mapping[str, Any],
) -> DeltaChannelHistory:
    replay: list[PendingWrite] = []
    for checkpoint_id in reversed(chain):  # oldest first, each checkpoint's writes in superstep order
        rows = sorted(
            writes.get((channel, checkpoint_id), ()),
            key=lambda r: writes_sort_key(r["task_path"] or "", r["task_id"], r["idx"]),
        )
        replay.extend((r["task_id"], channel, serde.loads_typed((r["type"], r["blob"]))) for r in rows)
    entry: DeltaChannelHistory = {"writes": replay}
    if channel in seeds:
        entry["seed"] = seeds[channel]
    return entry
