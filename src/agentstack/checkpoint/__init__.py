"""Durable state: the embedded Postgres, savers on a pool, strict deserialization, retention."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentstack._lazy import lazy_exports

# name -> the module that defines it; loaded on first use (see agentstack._lazy)
_EXPORTS: dict[str, str] = {
    "DEFAULT_ALLOWED_TYPES": "agentstack.checkpoint._serde",
    "LocalPostgres": "agentstack.checkpoint._local_postgres",
    "PoolSaver": "agentstack.checkpoint._saver",
    "PruneResult": "agentstack.checkpoint._retention",
    "StrictSerializer": "agentstack.checkpoint._serde",
    "ThreadSummary": "agentstack.checkpoint._retention",
    "delete_thread": "agentstack.checkpoint._retention",
    "list_threads": "agentstack.checkpoint._retention",
    "open_pool": "agentstack.checkpoint._saver",
    "open_saver": "agentstack.checkpoint._saver",
    "prune_thread": "agentstack.checkpoint._retention",
}

__all__ = [
    "DEFAULT_ALLOWED_TYPES",
    "LocalPostgres",
    "PoolSaver",
    "PruneResult",
    "StrictSerializer",
    "ThreadSummary",
    "delete_thread",
    "list_threads",
    "open_pool",
    "open_saver",
    "prune_thread",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)

if TYPE_CHECKING:
    from agentstack.checkpoint._local_postgres import LocalPostgres
    from agentstack.checkpoint._retention import PruneResult, ThreadSummary, delete_thread, list_threads, prune_thread
    from agentstack.checkpoint._saver import PoolSaver, open_pool, open_saver
    from agentstack.checkpoint._serde import DEFAULT_ALLOWED_TYPES, StrictSerializer
