"""agentstack: production agents on LangGraph.

Typed-state graphs that survive crashes (checkpoints on Postgres, which agentstack can
run for you), retrieval, and self-hosted models. This module re-exports the public API;
everything else lives in private modules and may change.
"""

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

__version__ = "0.1.0"

__all__ = [
    "AgentStackError",
    "BackendError",
    "CheckpointError",
    "ConfigError",
    "GraphInputError",
    "GpuInfo",
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
