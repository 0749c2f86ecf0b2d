"""agentstack: production agents on LangGraph.

Typed-state graphs that survive crashes (checkpoints on Postgres, which agentstack can
run for you), retrieval, and self-hosted models. This module re-exports the public API;
everything else lives in private modules and may change.

The names load on first use (PEP 562): `import agentstack.testing` or `agentstack --help`
must not pay for LangGraph, psycopg and the model fleet, which the public API pulls in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentstack._lazy import lazy_exports

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "Stack": "agentstack._stack",
    "LocalPostgres": "agentstack.checkpoint",
    "PoolSaver": "agentstack.checkpoint",
    "PruneResult": "agentstack.checkpoint",
    "StrictSerializer": "agentstack.checkpoint",
    "ThreadSummary": "agentstack.checkpoint",
    "delete_thread": "agentstack.checkpoint",
    "list_threads": "agentstack.checkpoint",
    "open_saver": "agentstack.checkpoint",
    "prune_thread": "agentstack.checkpoint",
    "Settings": "agentstack.config",
    "AgentStackError": "agentstack.errors",
    "BackendError": "agentstack.errors",
    "CheckpointError": "agentstack.errors",
    "ConfigError": "agentstack.errors",
    "GraphInputError": "agentstack.errors",
    "MissingDependencyError": "agentstack.errors",
    "PostgresServerError": "agentstack.errors",
    "RetrievalError": "agentstack.errors",
    "UnsafeCheckpointError": "agentstack.errors",
    "UserError": "agentstack.errors",
    "GpuInfo": "agentstack.serving",
    "gpu_inventory": "agentstack.serving",
}

__all__ = [
    "AgentStackError",
    "BackendError",
    "CheckpointError",
    "ConfigError",
    "GpuInfo",
    "GraphInputError",
    "LocalPostgres",
    "MissingDependencyError",
    "PoolSaver",
    "PostgresServerError",
    "PruneResult",
    "RetrievalError",
    "Settings",
    "Stack",
    "StrictSerializer",
    "ThreadSummary",
    "UnsafeCheckpointError",
    "UserError",
    "delete_thread",
    "gpu_inventory",
    "list_threads",
    "open_saver",
    "prune_thread",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)

if TYPE_CHECKING:
    from agentstack._stack import Stack
    from agentstack.checkpoint import (
        LocalPostgres,
        PoolSaver,
        PruneResult,
        StrictSerializer,
        ThreadSummary,
        delete_thread,
        list_threads,
        open_saver,
        prune_thread,
    )
    from agentstack.config import Settings
    from agentstack.errors import (
        AgentStackError,
        BackendError,
        CheckpointError,
        ConfigError,
        GraphInputError,
        MissingDependencyError,
        PostgresServerError,
        RetrievalError,
        UnsafeCheckpointError,
        UserError,
    )
    from agentstack.serving import GpuInfo, gpu_inventory
