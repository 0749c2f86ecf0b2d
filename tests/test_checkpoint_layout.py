"""The tables PoolSaver shares with the stock Postgres saver keep the layout our SQL is written for.

`agentstack.checkpoint._schema.LAYOUT` is what every statement of ours assumes. If an
upstream release changes the tables (a column, a default, a key, a migration), the first
test fails naming the installed langgraph-checkpoint-postgres and the column: update
`_schema` (migrations and layout) and the statements, then the pins in pyproject.toml.
"""

from __future__ import annotations

import psycopg
import pytest
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from agentstack.checkpoint import PoolSaver, open_saver
from agentstack.checkpoint._schema import LAYOUT, MIGRATIONS, layout_differences, read_layout, upstream_version
from agentstack.errors import CheckpointError


async def _layout_and_version(url: str) -> tuple[dict, int]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        found = await read_layout(conn)
        row = await (await conn.execute("SELECT max(v) FROM checkpoint_migrations")).fetchone()
    assert row is not None
    return found, row[0]


def _explain(problems: list[str], who: str) -> str:
    return (
        f"the checkpoint tables {who} creates differ from agentstack's LAYOUT "
        f"(langgraph-checkpoint-postgres {upstream_version()}): " + "; ".join(problems)
    )


async def test_the_stock_saver_creates_the_layout_our_sql_is_written_for(agentstack_postgres: str) -> None:
    async with AsyncPostgresSaver.from_conn_string(agentstack_postgres) as stock:
        await stock.setup()
    found, last_migration = await _layout_and_version(agentstack_postgres)
    assert not (problems := layout_differences(found)), _explain(problems, "the stock saver's setup()")
    assert last_migration == len(MIGRATIONS) - 1, (
        f"langgraph-checkpoint-postgres {upstream_version()} applies migrations up to {last_migration}; "
        f"agentstack's _schema.MIGRATIONS end at {len(MIGRATIONS) - 1}"
    )


async def test_our_setup_creates_the_same_layout(saver: PoolSaver, agentstack_postgres: str) -> None:
    found, last_migration = await _layout_and_version(agentstack_postgres)
    assert not (problems := layout_differences(found)), _explain(problems, "PoolSaver.setup()")
    assert last_migration == len(MIGRATIONS) - 1


async def test_a_changed_column_is_named_with_its_table(saver: PoolSaver, agentstack_postgres: str) -> None:
    async with await psycopg.AsyncConnection.connect(agentstack_postgres, autocommit=True) as conn:
        await conn.execute("ALTER TABLE checkpoint_writes ALTER COLUMN task_path DROP DEFAULT")
        await conn.execute("ALTER TABLE checkpoint_blobs ADD COLUMN compression TEXT")
        await conn.execute("DROP INDEX checkpoints_thread_id_idx")
        problems = layout_differences(await read_layout(conn))
    assert problems == [
        "checkpoints index checkpoints_thread_id_idx: expected ('thread_id',), found None",
        "checkpoint_blobs.compression: expected no such column, found text NULL",
        "checkpoint_writes.task_path: expected text NOT NULL DEFAULT ''::text, found text NOT NULL",
    ]


async def test_setup_refuses_tables_a_newer_release_changed(agentstack_postgres: str) -> None:
    async with open_saver(agentstack_postgres, pool_size=2):
        pass
    newer = len(MIGRATIONS)
    async with await psycopg.AsyncConnection.connect(agentstack_postgres, autocommit=True) as conn:
        await conn.execute("INSERT INTO checkpoint_migrations (v) VALUES (%s)", (newer,))
    # A newer migration that left our columns alone (an index, say) is fine...
    async with open_saver(agentstack_postgres, pool_size=2) as saver:
        await saver.aget_tuple({"configurable": {"thread_id": "t"}})
    async with await psycopg.AsyncConnection.connect(agentstack_postgres, autocommit=True) as conn:
        await conn.execute("ALTER TABLE checkpoints ADD COLUMN run_id TEXT NOT NULL")
    # ...one that changed them is named before anything is written.
    with pytest.raises(CheckpointError, match=rf"migration {newer}, newer than.*checkpoints\.run_id") as info:
        async with open_saver(agentstack_postgres, pool_size=2):
            pass
    assert upstream_version() in str(info.value)


def test_the_layout_covers_every_shared_table() -> None:
    assert set(LAYOUT) == {"checkpoint_migrations", "checkpoints", "checkpoint_blobs", "checkpoint_writes"}
