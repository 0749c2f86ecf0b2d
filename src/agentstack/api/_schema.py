"""The agent server's tables in Postgres (threads, runs, their events, assistants), created and migrated in
order, once per database, under a transaction-scoped advisory lock so that servers starting together agree."""

from __future__ import annotations

from typing import Any

from agentstack._pg_migrations import apply_migrations

__all__ = ["MIGRATIONS", "migrate"]

_SETUP_LOCK = 0x61676E7472756E73  # "agntruns": serialises migrate() across processes

# Append-only: index = version (one statement each; all run in one transaction). Never edit or renumber.
MIGRATIONS: tuple[str, ...] = (
    """CREATE TABLE agentstack_threads (
    thread_id UUID PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    metadata JSONB NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'idle' CHECK (status IN ('idle', 'busy', 'interrupted', 'error')),
    error JSONB
)""",
    """CREATE TABLE agentstack_runs (
    run_id UUID PRIMARY KEY,
    thread_id UUID NOT NULL REFERENCES agentstack_threads (thread_id) ON DELETE CASCADE,
    assistant_id TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'success', 'error', 'timeout', 'interrupted')),
    metadata JSONB NOT NULL DEFAULT '{}',
    kwargs JSONB NOT NULL DEFAULT '{}',
    multitask_strategy TEXT NOT NULL CHECK (multitask_strategy IN ('reject', 'enqueue', 'interrupt', 'rollback')),
    attempt INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    lease_until TIMESTAMPTZ,
    cancel TEXT CHECK (cancel IN ('interrupt', 'rollback')),
    error JSONB
)""",
    """CREATE INDEX agentstack_runs_unfinished ON agentstack_runs (thread_id, created_at)
    WHERE status IN ('pending', 'running')""",
    """CREATE TABLE agentstack_run_events (
    run_id UUID NOT NULL REFERENCES agentstack_runs (run_id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    event TEXT NOT NULL,
    data JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, seq)
)""",
    # Threads the CLI started (`research-...`) are adopted under their own ids: thread ids become text.
    "ALTER TABLE agentstack_runs DROP CONSTRAINT agentstack_runs_thread_id_fkey",
    "ALTER TABLE agentstack_threads ALTER COLUMN thread_id TYPE TEXT",
    "ALTER TABLE agentstack_runs ALTER COLUMN thread_id TYPE TEXT",
    """ALTER TABLE agentstack_runs ADD CONSTRAINT agentstack_runs_thread_id_fkey
    FOREIGN KEY (thread_id) REFERENCES agentstack_threads (thread_id) ON DELETE CASCADE""",
    # Assistants (`_assistants.AssistantStore`): the current version, and every version.
    """CREATE TABLE agentstack_assistants (
    assistant_id UUID PRIMARY KEY,
    graph_id TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT,
    config JSONB NOT NULL DEFAULT '{}',
    context JSONB NOT NULL DEFAULT '{}',
    metadata JSONB NOT NULL DEFAULT '{}',
    version INTEGER NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
)""",
    """CREATE TABLE agentstack_assistant_versions (
    assistant_id UUID NOT NULL REFERENCES agentstack_assistants (assistant_id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    graph_id TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT,
    config JSONB NOT NULL,
    context JSONB NOT NULL,
    metadata JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (assistant_id, version)
)""",
    # Tenancy (`agentstack.safety`): the key that made a thread; NULL for threads made while the server was
    # open, or adopted from the CLI (only admin keys see those).
    "ALTER TABLE agentstack_threads ADD COLUMN owner TEXT",
    "CREATE INDEX agentstack_threads_owner ON agentstack_threads (owner, updated_at)",
)


async def migrate(conn: Any) -> None:
    """Apply the migrations `conn`'s database lacks; refuse a database a newer agentstack migrated."""
    await apply_migrations(
        conn, table="agentstack_api_migrations", lock=_SETUP_LOCK, migrations=MIGRATIONS,
        what="the agent server's tables",
    )  # fmt: skip
