"""Durable state: the embedded Postgres, savers on a pool, strict deserialization, retention."""

from agentstack.checkpoint._local_postgres import LocalPostgres, PostgresStatus, find_postgres_binaries
from agentstack.checkpoint._retention import (
    PruneResult,
    ThreadSummary,
    delete_thread,
    list_threads,
    parse_duration,
    prune_thread,
)
from agentstack.checkpoint._saver import PoolSaver, open_pool, open_saver, redact_url
from agentstack.checkpoint._serde import DEFAULT_ALLOWED_TYPES, StrictSerializer

__all__ = [
    "DEFAULT_ALLOWED_TYPES",
    "LocalPostgres",
    "PoolSaver",
    "PostgresStatus",
    "PruneResult",
    "StrictSerializer",
    "ThreadSummary",
    "delete_thread",
    "find_postgres_binaries",
    "list_threads",
    "open_pool",
    "open_saver",
    "parse_duration",
    "prune_thread",
    "redact_url",
]
