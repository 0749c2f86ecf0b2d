"""`PoolSaver` and `open_saver`: LangGraph checkpoints on a psycopg pool, without a global lock.

langgraph-checkpoint-postgres's `AsyncPostgresSaver` wraps every operation in one
`asyncio.Lock`, even when it is given a pool (langgraph#7259). Fifty agent threads then
save one at a time, and each waits out the others' network round trips. `PoolSaver` is
the same saver (same tables, same migrations, same reads: checkpoints written by either
are read by the other) with the lock removed, so reads run concurrently on pooled
connections, and with writes group-committed (see `_group_commit`): concurrent threads'
checkpoints share one statement and one round trip instead of queueing behind each other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Hashable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    get_serializable_checkpoint_metadata,
)
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.types import _DeltaSnapshot
from psycopg import AsyncCursor
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from agentstack.checkpoint._group_commit import GroupCommitter
from agentstack.checkpoint._local_postgres import LocalPostgres
from agentstack.checkpoint._serde import StrictSerializer
from agentstack.config import Settings
from agentstack.errors import CheckpointError, UserError

__all__ = ["PoolSaver", "open_pool", "open_saver", "redact_url"]

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same in every process that runs setup().
_SETUP_LOCK_KEY = 0x61676E7473746B  # "agntstk"


def _needs_blob(value: Any) -> bool:
    """The stock rule: primitives stay inline in the checkpoint row, everything else is a blob."""
    return not (value is None or isinstance(value, (str, int, float, bool)))


CONNECTION_KWARGS: dict[str, Any] = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}


def redact_url(url: str) -> str:
    """`user@host:port/db` of a Postgres URL, never its password, for messages and logs."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable Postgres URL>"
    return f"{info.get('user', '')}@{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


class PoolSaver(AsyncPostgresSaver):
    """`AsyncPostgresSaver` that takes one pooled connection per operation instead of a global lock."""

    conn: AsyncConnectionPool[psycopg.AsyncConnection[DictRow]]

    def __init__(
        self,
        pool: AsyncConnectionPool[psycopg.AsyncConnection[DictRow]],
        *,
        serde: SerializerProtocol | None = None,
    ) -> None:
        if not isinstance(pool, AsyncConnectionPool):
            raise UserError(
                f"PoolSaver needs a psycopg_pool.AsyncConnectionPool, got {type(pool).__name__}",
                fix="use open_saver(url), or AsyncPostgresSaver for a single connection",
            )
        super().__init__(pool, serde=serde if serde is not None else StrictSerializer())
        self._committer = GroupCommitter(pool)

    async def drain(self) -> None:
        """Wait for every queued checkpoint write to commit; call before closing the pool."""
        await self._committer.drain()

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Save a checkpoint and its new blobs atomically, group-committed with other threads'."""
        configurable = config["configurable"]
        thread_id = configurable["thread_id"]
        checkpoint_ns = configurable["checkpoint_ns"]
        inline = dict(checkpoint["channel_values"])
        blob_values = {k: inline.pop(k) for k in checkpoint["channel_values"] if _needs_blob(inline[k])}
        for key, value in blob_values.items():
            if isinstance(value, _DeltaSnapshot):
                inline[key] = True  # the stock saver's marker: a snapshot lives in a blob
        copy = {**checkpoint, "channel_values": inline}
        # Serialized inline, not in a worker thread: ormsgpack does ~1 GB/s, so a thread hop
        # costs more than it saves for any state an agent realistically checkpoints.
        blobs = self._dump_blobs(
            thread_id, checkpoint_ns, blob_values, {k: v for k, v in new_versions.items() if k in blob_values}
        )
        checkpoint_id = checkpoint["id"]
        await self._committer.submit(
            keys={("checkpoint", thread_id, checkpoint_ns, checkpoint_id)},
            blobs=blobs,
            checkpoint=(
                thread_id,
                checkpoint_ns,
                checkpoint_id,
                configurable.get("checkpoint_id"),
                Jsonb(copy),
                Jsonb(get_serializable_checkpoint_metadata(config, metadata)),
            ),
        )
        return {
            "configurable": {"thread_id": thread_id, "checkpoint_ns": checkpoint_ns, "checkpoint_id": checkpoint_id}
        }

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Save a task's writes, group-committed, with the stock saver's conflict rules."""
        configurable = config["configurable"]
        rows = self._dump_writes(
            configurable["thread_id"],
            configurable["checkpoint_ns"],
            configurable["checkpoint_id"],
            task_id,
            task_path,
            writes,
        )
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

    @asynccontextmanager
    async def _cursor(self, *, pipeline: bool = False) -> AsyncIterator[AsyncCursor[DictRow]]:
        async with self.conn.connection() as conn:
            if pipeline:
                # As the stock saver does: the statements of one operation in one round trip
                # (used by the inherited methods this class does not override, e.g. delete).
                async with conn.pipeline(), conn.cursor(binary=True, row_factory=dict_row) as cur:
                    yield cur
            else:
                async with conn.cursor(binary=True, row_factory=dict_row) as cur:
                    yield cur

    async def setup(self) -> None:
        """Create or migrate the tables; safe when several processes call it at once.

        The stock `setup()` reads the migration version and then applies what is missing,
        so two processes starting together both try to apply migration 0. A session
        advisory lock makes the check-then-apply atomic across processes.
        """
        async with self.conn.connection() as conn:
            # Poll with short transactions rather than block in pg_advisory_lock(): a blocked
            # call is an open transaction, and the migrations' CREATE INDEX CONCURRENTLY in
            # the lock holder waits for every open transaction to end: a deadlock.
            while not await _try_lock(conn, _SETUP_LOCK_KEY):  # noqa: ASYNC110 - the holder is another process
                await asyncio.sleep(0.05)
            try:
                saver = AsyncPostgresSaver(conn, serde=self.serde)
                await saver.setup()
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (_SETUP_LOCK_KEY,))


async def _try_lock(conn: psycopg.AsyncConnection[DictRow], key: int) -> bool:
    row = await (await conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (key,))).fetchone()
    return bool(row and row["ok"])


@asynccontextmanager
async def open_pool(
    url: str, *, max_size: int = 20, min_size: int = 2, connect_timeout: float = 15.0
) -> AsyncIterator[AsyncConnectionPool[psycopg.AsyncConnection[DictRow]]]:
    """A pool with the connection settings the savers need, that fails fast with the real reason."""
    where = redact_url(url)
    try:
        probe = await psycopg.AsyncConnection.connect(url, connect_timeout=int(connect_timeout))
    except psycopg.Error as exc:
        raise CheckpointError(
            f"cannot connect to Postgres at {where}: {str(exc).strip()}",
            fix="check AGENTSTACK_POSTGRES_URL (host, port, password, database), or unset it to use the "
            "embedded server",
        ) from exc
    await probe.close()
    pool: AsyncConnectionPool[psycopg.AsyncConnection[DictRow]] = AsyncConnectionPool(
        url,
        min_size=min(min_size, max_size),
        max_size=max_size,
        kwargs=CONNECTION_KWARGS,
        open=False,
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

    With no `url` and no `settings.postgres_url`, the embedded Postgres under
    `settings.home` is started (or reused) first. `allowed_types` are the extra classes
    (your pydantic/dataclass state) that may be loaded back from a checkpoint.
    """
    settings = settings if settings is not None else Settings.load()
    if url is None:
        url = settings.postgres_url or await LocalPostgres.from_settings(settings).astart()
    size = pool_size if pool_size is not None else settings.checkpoint_pool_size
    async with open_pool(url, max_size=size) as pool:
        saver = PoolSaver(pool, serde=StrictSerializer(allowed_types))
        if setup:
            await saver.setup()
        try:
            yield saver
        finally:
            await saver.drain()
