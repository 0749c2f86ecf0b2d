"""The checkpoint tables we share with langgraph-checkpoint-postgres: migrations, layout, setup.

Stock `AsyncPostgresSaver` and `PoolSaver` read and continue each other's threads, so
both must mean the same thing by every table and column. The migrations below are a copy
of the stock saver's list (same order, so both record the same versions in
`checkpoint_migrations`), and `LAYOUT` is what they produce: the layout every statement
in this package is written for. tests/test_checkpoint_layout.py compares `LAYOUT` with
what the stock saver's own `setup()` creates and names the upstream version and the
column when they part, which is the moment to update the copy here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import psycopg

from agentstack.errors import CheckpointError

__all__ = ["LAYOUT", "MIGRATIONS", "Column", "Table", "apply_migrations", "layout_differences", "read_layout"]

# The stock saver's migrations, index = version. Append-only: never edit or renumber.
MIGRATIONS: tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS checkpoint_migrations (v INTEGER PRIMARY KEY);",
    """CREATE TABLE IF NOT EXISTS checkpoints (
    thread_id TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL DEFAULT '',
    checkpoint_id TEXT NOT NULL,
    parent_checkpoint_id TEXT,
    type TEXT,
    checkpoint JSONB NOT NULL,
    metadata JSONB NOT NULL DEFAULT '{}',
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id)
);""",
    """CREATE TABLE IF NOT EXISTS checkpoint_blobs (
    thread_id TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL DEFAULT '',
    channel TEXT NOT NULL,
    version TEXT NOT NULL,
    type TEXT NOT NULL,
    blob BYTEA,
    PRIMARY KEY (thread_id, checkpoint_ns, channel, version)
);""",
    """CREATE TABLE IF NOT EXISTS checkpoint_writes (
    thread_id TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL DEFAULT '',
    checkpoint_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    channel TEXT NOT NULL,
    type TEXT,
    blob BYTEA NOT NULL,
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
);""",
    "ALTER TABLE checkpoint_blobs ALTER COLUMN blob DROP not null;",
    "SELECT 1;",  # upstream's placeholder for a migration it removed: keeps the numbering
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS checkpoints_thread_id_idx ON checkpoints(thread_id);",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS checkpoint_blobs_thread_id_idx ON checkpoint_blobs(thread_id);",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS checkpoint_writes_thread_id_idx ON checkpoint_writes(thread_id);",
    "ALTER TABLE checkpoint_writes ADD COLUMN IF NOT EXISTS task_path TEXT NOT NULL DEFAULT '';",
)


@dataclass(frozen=True)
class Column:
    type: str
    nullable: bool = False
    default: str | None = None  # as Postgres prints it (information_schema.columns.column_default)

    def describe(self) -> str:
        default = f" DEFAULT {self.default}" if self.default is not None else ""
        return f"{self.type} {'NULL' if self.nullable else 'NOT NULL'}{default}"


@dataclass(frozen=True)
class Table:
    columns: Mapping[str, Column]
    primary_key: tuple[str, ...]
    indexes: Mapping[str, tuple[str, ...]]  # secondary indexes the statements' plans rely on


_TEXT = Column("text")
_EMPTY_TEXT = Column("text", default="''::text")

#: What `MIGRATIONS` create, and what every statement in this package assumes.
LAYOUT: Mapping[str, Table] = {
    "checkpoint_migrations": Table({"v": Column("integer")}, ("v",), {}),
    "checkpoints": Table(
        {
            "thread_id": _TEXT,
            "checkpoint_ns": _EMPTY_TEXT,
            "checkpoint_id": _TEXT,
            "parent_checkpoint_id": Column("text", nullable=True),
            "type": Column("text", nullable=True),
            "checkpoint": Column("jsonb"),
            "metadata": Column("jsonb", default="'{}'::jsonb"),
        },
        ("thread_id", "checkpoint_ns", "checkpoint_id"),
        {"checkpoints_thread_id_idx": ("thread_id",)},
    ),
    "checkpoint_blobs": Table(
        {
            "thread_id": _TEXT,
            "checkpoint_ns": _EMPTY_TEXT,
            "channel": _TEXT,
            "version": _TEXT,
            "type": _TEXT,
            "blob": Column("bytea", nullable=True),
        },
        ("thread_id", "checkpoint_ns", "channel", "version"),
        {"checkpoint_blobs_thread_id_idx": ("thread_id",)},
    ),
    "checkpoint_writes": Table(
        {
            "thread_id": _TEXT,
            "checkpoint_ns": _EMPTY_TEXT,
            "checkpoint_id": _TEXT,
            "task_id": _TEXT,
            "idx": Column("integer"),
            "channel": _TEXT,
            "type": Column("text", nullable=True),
            "blob": Column("bytea"),
            "task_path": _EMPTY_TEXT,
        },
        ("thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx"),
        {"checkpoint_writes_thread_id_idx": ("thread_id",)},
    ),
}

# Any constant works; it only has to be the same in every process that runs setup().
_SETUP_LOCK_KEY = 0x61676E7473746B  # "agntstk"
# Migrations take seconds; a lock held longer belongs to a process that is stuck or gone through a pooler.
_SETUP_LOCK_TIMEOUT_S = 120.0

_COLUMNS_SQL = """
SELECT table_name, column_name, data_type, is_nullable = 'YES' AS nullable, column_default
FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = ANY(%s)"""
# Primary keys and secondary indexes, with their columns in index order.
_INDEXES_SQL = """
SELECT t.relname AS table_name, i.relname AS index_name, x.indisprimary AS is_primary,
       array_agg(a.attname::text ORDER BY k.ord) AS columns
FROM pg_index x
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_class i ON i.oid = x.indexrelid
CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
WHERE t.relnamespace = current_schema()::regnamespace AND t.relname = ANY(%s)
GROUP BY t.relname, i.relname, x.indisprimary"""


def upstream_version() -> str:
    """The installed langgraph-checkpoint-postgres, which these tables are shared with."""
    try:
        return version("langgraph-checkpoint-postgres")
    except PackageNotFoundError:
        return "(not installed)"


async def read_layout(conn: psycopg.AsyncConnection[Any]) -> dict[str, Table]:
    """The checkpoint tables as the database has them, in `LAYOUT`'s terms."""
    names = list(LAYOUT)
    columns: dict[str, dict[str, Column]] = {}
    for row in await (await conn.execute(_COLUMNS_SQL, (names,))).fetchall():
        table, name, type_, nullable, default = _values(row, 5)
        columns.setdefault(table, {})[name] = Column(type_, nullable, default)
    keys: dict[str, tuple[str, ...]] = {}
    indexes: dict[str, dict[str, tuple[str, ...]]] = {}
    for row in await (await conn.execute(_INDEXES_SQL, (names,))).fetchall():
        table, index, primary, index_columns = _values(row, 4)
        if primary:
            keys[table] = tuple(index_columns)
        else:
            indexes.setdefault(table, {})[index] = tuple(index_columns)
    return {t: Table(columns[t], keys.get(t, ()), indexes.get(t, {})) for t in names if t in columns}


def _values(row: Any, width: int) -> tuple[Any, ...]:
    """A row's values whatever the connection's row factory (tuple or dict)."""
    values = tuple(row.values()) if isinstance(row, Mapping) else tuple(row)
    assert len(values) == width
    return values


def layout_differences(found: Mapping[str, Table], expected: Mapping[str, Table] = LAYOUT) -> list[str]:
    """Each way `found` differs from `expected`, as `table.column: expected ..., found ...`."""
    problems: list[str] = []
    for name, want in expected.items():
        have = found.get(name)
        if have is None:
            problems.append(f"{name}: table missing")
            continue
        for column in sorted(want.columns.keys() | have.columns.keys()):
            a, b = want.columns.get(column), have.columns.get(column)
            if a != b:
                problems.append(
                    f"{name}.{column}: expected {a.describe() if a else 'no such column'}, "
                    f"found {b.describe() if b else 'no such column'}"
                )
        if want.primary_key != have.primary_key:
            problems.append(f"{name} primary key: expected {want.primary_key}, found {have.primary_key}")
        for index in sorted(want.indexes.keys() | have.indexes.keys()):
            if want.indexes.get(index) != have.indexes.get(index):
                problems.append(
                    f"{name} index {index}: expected {want.indexes.get(index)}, found {have.indexes.get(index)}"
                )
    return problems


async def apply_migrations(conn: psycopg.AsyncConnection[Any]) -> None:
    """Apply the migrations not yet recorded; safe when several processes call it at once.

    Applying is check-then-act: two processes starting together would both try to apply
    migration 0. A session advisory lock makes it atomic across processes. `conn` must be
    in autocommit mode (CREATE INDEX CONCURRENTLY cannot run in a transaction).
    """
    # Poll with short transactions rather than block in pg_advisory_lock(): a blocked
    # call is an open transaction, and the migrations' CREATE INDEX CONCURRENTLY in
    # the lock holder waits for every open transaction to end: a deadlock.
    deadline = asyncio.get_running_loop().time() + _SETUP_LOCK_TIMEOUT_S
    while not await _try_lock(conn):
        if asyncio.get_running_loop().time() > deadline:
            raise CheckpointError(
                f"another process has held the checkpoint tables' setup lock (advisory lock {_SETUP_LOCK_KEY}) "
                f"for over {_SETUP_LOCK_TIMEOUT_S:.0f} s",
                fix="wait for that process's setup to finish, or find it in pg_locks (locktype 'advisory'); "
                "through PgBouncer in transaction mode, run setup() on a direct connection",
            )
        await asyncio.sleep(0.05)
    try:
        await conn.execute(MIGRATIONS[0])
        row = await (await conn.execute("SELECT max(v) FROM checkpoint_migrations")).fetchone()
        current = _values(row, 1)[0] if row is not None else None
        current = -1 if current is None else int(current)
        if current >= len(MIGRATIONS):
            await _check_newer_layout(conn, current)
        for v in range(current + 1, len(MIGRATIONS)):
            await conn.execute(MIGRATIONS[v])
            await conn.execute("INSERT INTO checkpoint_migrations (v) VALUES (%s)", (v,))
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (_SETUP_LOCK_KEY,))


async def _try_lock(conn: psycopg.AsyncConnection[Any]) -> bool:
    row = await (await conn.execute("SELECT pg_try_advisory_lock(%s)", (_SETUP_LOCK_KEY,))).fetchone()
    return bool(row is not None and _values(row, 1)[0])


async def _check_newer_layout(conn: psycopg.AsyncConnection[Any], current: int) -> None:
    """A newer stock saver migrated these tables: go on only if our statements still fit them."""
    problems = layout_differences(await read_layout(conn))
    if problems:
        raise CheckpointError(
            f"the checkpoint tables are at migration {current}, newer than the {len(MIGRATIONS) - 1} this "
            f"agentstack knows, and no longer have the layout it writes: {'; '.join(problems)}",
            fix=f"upgrade agentstack, or use a database migrated by langgraph-checkpoint-postgres "
            f"{upstream_version()} (the version agentstack pins)",
        )
