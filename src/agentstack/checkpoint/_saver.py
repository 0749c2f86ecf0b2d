"""`PoolSaver` and `open_saver`: LangGraph checkpoints on a psycopg pool, without a global lock.

langgraph-checkpoint-postgres's `AsyncPostgresSaver` wraps every operation in one
`asyncio.Lock`, even when it is given a pool (langgraph#7259). Fifty agent threads then
save one at a time, and each waits out the others' network round trips. `PoolSaver` keeps
the stock saver's tables and on-disk format (checkpoints written by either are read and
continued by the other) but takes a pooled connection per operation, so reads run
concurrently, and group-commits writes (see `_group_commit`): concurrent threads'
checkpoints share one statement and one round trip instead of queueing behind each other.

It is built on LangGraph's public interfaces only: `BaseCheckpointSaver` (the contract
LangGraph calls and its conformance suite checks), `SerializerProtocol`, and the table
layout in `_schema` (a copy of the stock saver's migrations, checked against the stock
saver by tests/test_checkpoint_layout.py). No private name of LangGraph is used, so an
upstream release that moves its internals cannot silently change how we store state.
"""

from __future__ import annotations

import asyncio
import copy
import math
import random
import time
from collections.abc import (
    AsyncIterator,
    Callable,
    Collection,
    Coroutine,
    Hashable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import AbstractContextManager, asynccontextmanager
from typing import Any, TypeVar

import ormsgpack
import psycopg
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
    get_serializable_checkpoint_metadata,
)
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.jsonplus import EXT_DELTA_SNAPSHOT, JsonPlusSerializer
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from agentstack.checkpoint._boundary import postgres_errors, redact_url
from agentstack.checkpoint._delta import delta_channel_history
from agentstack.checkpoint._group_commit import BlobRow, GroupCommitter, WriteRow
from agentstack.checkpoint._local_postgres import LocalPostgres
from agentstack.checkpoint._prune import prune_threads
from agentstack.checkpoint._reads import (
    PENDING_SENDS_SQL,
    SELECT_SQL,
    decode_row,
    migrate_pending_sends,
    needs_pending_sends,
    search_where,
)
from agentstack.checkpoint._schema import apply_migrations
from agentstack.checkpoint._serde import StrictSerializer
from agentstack.checkpoint._thread_edits import copy_thread, delete_runs
from agentstack.config import Settings
from agentstack.errors import CheckpointError, UserError

__all__ = ["DEFAULT_POOL_SIZE", "PoolSaver", "open_pool", "open_saver", "redact_url"]

#: Connections in `open_saver`'s pool when no size is given: how many threads save at once.
#: The same default as `Settings.checkpoint_pool_size`.
DEFAULT_POOL_SIZE = 20
_CONNECT_FIX = (
    "check the URL (host, port, user, password, database) and that the server runs; with no "
    "AGENTSTACK_POSTGRES_URL, agentstack starts its embedded server instead"
)

CONNECTION_KWARGS: dict[str, Any] = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}

Pool = AsyncConnectionPool[psycopg.AsyncConnection[DictRow]]
T = TypeVar("T")


def delta_snapshot_type() -> type:
    """The class of a `DeltaChannel` snapshot, found through the public wire format.

    The stock saver stores a snapshot as a blob plus an inline `true` marker, and prune and
    delta history rely on that marker. LangGraph names the class privately, but the public
    serializer decodes the public extension code `EXT_DELTA_SNAPSHOT` into it: that is the
    definition of a snapshot on disk, so it is how we recognise one.
    """
    payload = ormsgpack.packb(ormsgpack.Ext(EXT_DELTA_SNAPSHOT, ormsgpack.packb(None)))
    return type(JsonPlusSerializer(allowed_msgpack_modules=None).loads_typed(("msgpack", payload)))


def _is_inline(value: Any) -> bool:
    """The stock rule: primitives stay inline in the checkpoint row, everything else is a blob."""
    return value is None or isinstance(value, str | int | float | bool)


class PoolSaver(BaseCheckpointSaver[str]):
    """A LangGraph checkpoint saver that takes one pooled connection per operation instead of a global lock."""

    conn: Pool
    serde: SerializerProtocol

    def __init__(self, pool: Pool, *, serde: SerializerProtocol | None = None) -> None:
        if not isinstance(pool, AsyncConnectionPool):
            raise UserError(
                f"PoolSaver needs a psycopg_pool.AsyncConnectionPool, got {type(pool).__name__}",
                fix="use open_saver(url), or AsyncPostgresSaver for a single connection",
            )
        super().__init__(serde=serde if serde is not None else StrictSerializer())
        self.conn = pool
        self.loop = asyncio.get_running_loop()  # where the sync methods run their async twins
        self._committer = GroupCommitter(pool)
        self._on_put: Callable[[RunnableConfig, Mapping[str, Any], int, int], None] | None = None
        self._snapshot_type = delta_snapshot_type()

    def _errors(self, doing: str) -> AbstractContextManager[None]:
        return postgres_errors(self.conn.conninfo, doing=doing)

    async def setup(self) -> None:
        """Create or migrate the tables; safe when several processes call it at once."""
        with self._errors("creating or migrating the checkpoint tables"):
            async with self.conn.connection() as conn:
                await apply_migrations(conn)

    def report_puts(self, observe: Callable[[RunnableConfig, Mapping[str, Any], int, int], None] | None) -> None:
        """Tell `observe` each checkpoint saved: its config, its metadata as stored (a traced run's `trace_id`
        in it), and when saving it started and ended (epoch ns; the wait for its group commit included)."""
        self._on_put = observe

    def report_commits(self, observe: Callable[[float, int], None] | None) -> None:
        """Tell `observe` each group commit's seconds and operations (`Metrics.checkpoint_commit`); None: stop."""
        self._committer.on_commit = observe

    async def drain(self) -> None:
        """Wait for every queued checkpoint write to commit; call before closing the pool."""
        await self._committer.drain()

    def with_allowlist(self, extra_allowlist: Collection[tuple[str, ...]]) -> PoolSaver:
        """This saver with a compiled graph's own state classes allowed to load (LangGraph calls it)."""
        if not isinstance(self.serde, StrictSerializer):
            return super().with_allowlist(extra_allowlist)  # type: ignore[return-value]
        serde = self.serde.with_msgpack_allowlist(extra_allowlist)
        if serde is self.serde:
            return self
        clone = copy.copy(self)  # same pool and committer: drain() covers both
        clone.serde = serde
        return clone

    def get_next_version(self, current: str | int | None, channel: None = None) -> str:
        """The stock saver's version format, so either saver can continue the other's threads."""
        number = 0 if current is None else current if isinstance(current, int) else int(current.split(".")[0])
        return f"{number + 1:032}.{random.random():016}"

    # -- reads ---------------------------------------------------------------------------
    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint `config` names, or the thread's latest in its namespace."""
        configurable = config["configurable"]
        thread_id, ns = configurable["thread_id"], configurable.get("checkpoint_ns", "")
        if checkpoint_id := configurable.get("checkpoint_id"):
            where = "WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = %s"
            args: tuple[Any, ...] = (thread_id, ns, checkpoint_id)
        else:
            where = "WHERE thread_id = %s AND checkpoint_ns = %s ORDER BY checkpoint_id DESC LIMIT 1"
            args = (thread_id, ns)
        with self._errors("loading a checkpoint"):
            async with self.conn.connection() as conn, conn.cursor(binary=True, row_factory=dict_row) as cur:
                await cur.execute(SELECT_SQL + where, args)
                row = await cur.fetchone()
                if row is None:
                    return None
                if needs_pending_sends(row):
                    await self._add_pending_sends(cur, [row])
        return decode_row(self.serde, row)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Checkpoints matching `config`, the metadata `filter` and `before`, newest first."""
        where, params = search_where(config, filter, before)
        query = SELECT_SQL + where + " ORDER BY checkpoint_id DESC"
        if limit is not None:
            query += " LIMIT %s"
            params.append(int(limit))
        with self._errors("listing checkpoints"):
            async with self.conn.connection() as conn, conn.cursor(binary=True, row_factory=dict_row) as cur:
                await cur.execute(query, params)
                rows = await cur.fetchall()
                if old := [row for row in rows if needs_pending_sends(row)]:
                    await self._add_pending_sends(cur, old)
        for row in rows:
            yield decode_row(self.serde, row)

    async def _add_pending_sends(self, cur: psycopg.AsyncCursor[DictRow], rows: list[DictRow]) -> None:
        """Move the `Send`s of pre-format-4 checkpoints from their parents' writes into their values.

        Per thread: a listing across threads (no thread in the config, or a metadata filter) holds several.
        """
        by_thread: dict[str, dict[str, list[DictRow]]] = {}
        for row in rows:
            by_thread.setdefault(row["thread_id"], {}).setdefault(row["parent_checkpoint_id"], []).append(row)
        for thread_id, by_parent in by_thread.items():
            await cur.execute(PENDING_SENDS_SQL, (thread_id, list(by_parent)))
            for sends in await cur.fetchall():
                for row in by_parent[sends["checkpoint_id"]]:
                    migrate_pending_sends(self.serde, row, sends["sends"], self.get_next_version(None))

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        """Each DeltaChannel's writes since its last stored value, in two statements (see `_delta`)."""
        with self._errors("reading DeltaChannel history"):
            async with self.conn.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                return await delta_channel_history(cur, self.serde, config, channels)

    # -- writes --------------------------------------------------------------------------
    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Save a checkpoint and its new blobs atomically, group-committed with other threads'."""
        configurable = config["configurable"]
        thread_id, ns, checkpoint_id = configurable["thread_id"], configurable["checkpoint_ns"], checkpoint["id"]
        inline: dict[str, Any] = {}
        blob_values: dict[str, Any] = {}
        for key, value in checkpoint["channel_values"].items():
            if isinstance(value, self._snapshot_type):
                blob_values[key] = value
                inline[key] = True  # the stock saver's marker: a snapshot lives in a blob
            elif _is_inline(value):
                inline[key] = value
            else:
                blob_values[key] = value
        # Serialized inline, not in a worker thread: ormsgpack does ~1 GB/s, so a thread hop
        # costs more than it saves for any state an agent realistically checkpoints.
        blobs: list[BlobRow] = [
            (thread_id, ns, key, str(version), *self.serde.dumps_typed(blob_values[key]))
            for key, version in new_versions.items()
            if key in blob_values
        ]
        saved = get_serializable_checkpoint_metadata(config, metadata)
        started = time.time_ns()
        await self._committer.submit(
            keys={("checkpoint", thread_id, ns, checkpoint_id)},
            blobs=blobs,
            checkpoint=(
                thread_id,
                ns,
                checkpoint_id,
                configurable.get("checkpoint_id"),
                Jsonb({**checkpoint, "channel_values": inline}),
                Jsonb(saved),
            ),
        )
        if self._on_put is not None:
            self._on_put(
                {"configurable": {**configurable, "checkpoint_id": checkpoint_id}}, saved, started, time.time_ns()
            )
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id}}

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Save a task's writes, group-committed, with the stock saver's conflict rules."""
        configurable = config["configurable"]
        key = (configurable["thread_id"], configurable["checkpoint_ns"], configurable["checkpoint_id"], task_id)
        rows: list[WriteRow] = [
            (*key, task_path, WRITES_IDX_MAP.get(channel, idx), channel, *self.serde.dumps_typed(value))
            for idx, (channel, value) in enumerate(writes)
        ]
        # Writes to special channels (errors, interrupts...) replace an earlier one; others never do.
        upsert = all(w[0] in WRITES_IDX_MAP for w in writes)
        if upsert:
            # Row by row, a later write to the same special channel replaced the earlier one;
            # one statement may not touch a row twice, so keep the last of each index.
            rows = list({row[5]: row for row in rows}.values())
        keys: set[Hashable] = {("write", *row[:4], row[5]) for row in rows}  # the table's primary key
        if upsert:
            await self._committer.submit(keys=keys, upserted_writes=rows)
        else:
            await self._committer.submit(keys=keys, inserted_writes=rows)

    async def adelete_thread(self, thread_id: str) -> None:
        """Delete a thread's checkpoints, blobs and writes, in every namespace, atomically."""
        with self._errors(f"deleting thread {thread_id!r}"):
            async with self.conn.connection() as conn, conn.transaction():
                for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes"):
                    await conn.execute(f"DELETE FROM {table} WHERE thread_id = %s", (str(thread_id),))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy a thread's every checkpoint, write and blob to a new thread id, atomically."""
        await self._committer.drain()  # what the source's runs queued is in the copy
        with self._errors(f"copying thread {source_thread_id!r}"):
            await copy_thread(self.conn, source_thread_id, target_thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints the runs saved, with their writes and the blobs only they used, atomically."""
        await self._committer.drain()  # nothing the runs queued commits after the delete
        with self._errors("deleting runs' checkpoints"):
            await delete_runs(self.conn, run_ids)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Prune threads as the stock saver does: `keep_latest` or `delete` (see `_prune`)."""
        with self._errors("pruning threads"):
            await prune_threads(self.conn, thread_ids, strategy)

    # -- sync faces: the async methods, run on the saver's loop from another thread ---------
    def _sync(self, coroutine: Coroutine[Any, Any, T], async_name: str) -> T:
        try:
            on_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            coroutine.close()
            raise UserError(
                "PoolSaver's sync methods block, so they cannot run on the event loop the saver lives on",
                fix=f"await saver.{async_name}(...) (or await graph.ainvoke(...)); sync calls work only from "
                "another thread",
            )
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._sync(self.aget_tuple(config), "aget_tuple")

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        async def collect() -> list[CheckpointTuple]:
            return [t async for t in self.alist(config, filter=filter, before=before, limit=limit)]

        yield from self._sync(collect(), "alist")

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self._sync(self.aput(config, checkpoint, metadata, new_versions), "aput")

    def put_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        self._sync(self.aput_writes(config, writes, task_id, task_path), "aput_writes")

    def delete_thread(self, thread_id: str) -> None:
        self._sync(self.adelete_thread(thread_id), "adelete_thread")

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._sync(self.aprune(thread_ids, strategy=strategy), "aprune")

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self._sync(self.acopy_thread(source_thread_id, target_thread_id), "acopy_thread")

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._sync(self.adelete_for_runs(run_ids), "adelete_for_runs")

    def get_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        return self._sync(
            self.aget_delta_channel_history(config=config, channels=channels), "aget_delta_channel_history"
        )


@asynccontextmanager
async def open_pool(
    url: str,
    *,
    max_size: int = DEFAULT_POOL_SIZE,
    min_size: int = 2,
    connect_timeout: float = 15.0,
    acquire_timeout: float = 30.0,
) -> AsyncIterator[Pool]:
    """A pool with the connection settings the savers need, that fails fast with the real reason.

    `acquire_timeout` is how long an operation waits for a connection (all busy, or the server
    gone and the pool reconnecting) before it fails with a `CheckpointError`.
    """
    where = redact_url(url)
    # libpq counts whole seconds, and 0 means "wait forever": never round a short timeout down to that.
    with postgres_errors(url, doing="connecting", fix=_CONNECT_FIX):
        probe = await psycopg.AsyncConnection.connect(url, connect_timeout=max(1, math.ceil(connect_timeout)))
    await probe.close()
    pool: Pool = AsyncConnectionPool(
        url,
        min_size=min(min_size, max_size),
        max_size=max_size,
        kwargs=CONNECTION_KWARGS,
        open=False,
        timeout=acquire_timeout,
        name="agentstack-checkpoints",
    )
    try:
        await pool.open(wait=True, timeout=connect_timeout)
    except PoolTimeout as exc:
        await pool.close()
        raise CheckpointError(
            f"Postgres at {where} accepted a test connection but the pool could not open within {connect_timeout}s",
            fix="check the server's max_connections and load",
        ) from exc
    try:
        yield pool
    finally:
        await pool.close()


@asynccontextmanager
async def open_saver(
    url: str | None = None,
    *,
    settings: Settings | None = None,
    allowed_types: Iterable[type | tuple[str, str]] = (),
    pool_size: int | None = None,
    setup: bool = True,
) -> AsyncIterator[PoolSaver]:
    """Open a `PoolSaver` on its own pool, closed on exit.

    Given a `url`, nothing else is read: the pool has `pool_size` connections
    (`DEFAULT_POOL_SIZE` unless given). With no `url`, `settings` (or `Settings.load()`)
    decide: `settings.postgres_url`, else the embedded Postgres under `settings.home`,
    started (or reused) first, and `settings.checkpoint_pool_size` connections.
    `allowed_types` are the extra classes (your pydantic/dataclass state) that may be
    loaded back from a checkpoint.
    """
    if url is None:
        url, size = await _url_from_settings(settings)
    else:
        size = DEFAULT_POOL_SIZE
    async with open_pool(url, max_size=pool_size if pool_size is not None else size) as pool:
        saver = PoolSaver(pool, serde=StrictSerializer(allowed_types))
        if setup:
            await saver.setup()
        try:
            yield saver
        finally:
            await saver.drain()


async def _url_from_settings(settings: Settings | None) -> tuple[str, int]:
    """Where `Settings` say checkpoints live, and the pool size they ask for."""
    settings = settings if settings is not None else Settings.load()
    url = settings.postgres_url or await LocalPostgres.from_settings(settings).astart()
    return url, settings.checkpoint_pool_size
