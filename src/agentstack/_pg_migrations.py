"""Append-only schema migrations for a subsystem's own Postgres tables (the agent server's, the key store's):
applied in order, once per database, in one transaction under a transaction-scoped advisory lock so that
processes starting together agree, and recorded in the subsystem's own version table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agentstack.errors import ConfigError

__all__ = ["apply_migrations"]


async def apply_migrations(conn: Any, *, table: str, lock: int, migrations: Sequence[str], what: str) -> None:
    """Apply the `migrations` (index = version, one statement each) that `conn`'s database lacks, recording
    them in `table`; refuse a database that a newer agentstack migrated further. `what` names the tables."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (v INTEGER PRIMARY KEY)")
        row = await (await conn.execute(f"SELECT max(v) AS v FROM {table}")).fetchone()
        value = row["v"] if isinstance(row, dict) else (row[0] if row else None)
        current = -1 if value is None else int(value)
        if current >= len(migrations):
            raise ConfigError(
                f"{what} are at migration {current}, newer than this agentstack knows ({len(migrations) - 1})",
                fix="upgrade agentstack to the version that migrated this database",
            )
        for version in range(current + 1, len(migrations)):
            await conn.execute(migrations[version])
            await conn.execute(f"INSERT INTO {table} (v) VALUES (%s)", (version,))
