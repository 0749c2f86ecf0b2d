"""Durable state: the embedded Postgres, savers and retention."""

from agentstack.checkpoint._local_postgres import LocalPostgres, PostgresStatus, find_postgres_binaries

__all__ = ["LocalPostgres", "PostgresStatus", "find_postgres_binaries"]
