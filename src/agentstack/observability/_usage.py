"""Usage and cost in Postgres: one row per run and model (tokens in and out, model calls' cost by the price
table), written when the run ends, by the agent server's workers and by `agentstack run`; `agentstack usage`
sums them by model, graph or caller.

Rows, not only counters: Prometheus forgets by retention and resets when a process restarts, while a bill
needs the month, per caller, from every process on the database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agentstack._pg_migrations import apply_migrations
from agentstack.safety._limits import cost_usd

__all__ = ["UsageRow", "UsageStore"]

Grouping = Literal["model", "graph", "caller", "thread"]
_SETUP_LOCK = 0x61676E7475736167  # "agntusag": serialises the usage migrations across processes
MIGRATIONS: Sequence[str] = (
    """CREATE TABLE agentstack_usage (
    id BIGSERIAL PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL DEFAULT now(),
    run_id TEXT NOT NULL,
    thread_id TEXT,
    graph TEXT NOT NULL,
    caller TEXT,
    model TEXT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cost_usd DOUBLE PRECISION
)""",
    "CREATE INDEX agentstack_usage_at ON agentstack_usage (at)",
    "CREATE INDEX agentstack_usage_run ON agentstack_usage (run_id)",
)


@dataclass(frozen=True)
class UsageRow:
    """What one group (a model, a graph, a caller or a thread) used over the period asked."""

    key: str
    runs: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None  # None: no priced model among its rows


class UsageStore:
    """Usage rows on a psycopg async pool (autocommit, dict rows)."""

    def __init__(self, pool: Any, prices: Mapping[str, Mapping[str, float]] | None = None) -> None:
        self.pool = pool
        self.prices = dict(prices or {})

    async def setup(self) -> None:
        async with self.pool.connection() as conn:
            await apply_migrations(
                conn, table="agentstack_usage_migrations", lock=_SETUP_LOCK, migrations=MIGRATIONS, what="usage"
            )

    async def record(
        self,
        *,
        run_id: str,
        thread_id: str | None,
        graph: str,
        caller: str | None,
        by_model: Mapping[str, Sequence[int]],
    ) -> None:
        """A run's usage, a row per model it called (nothing when it called none)."""
        rows = [
            (run_id, thread_id, graph, caller, model, int(i), int(o), cost_usd(self.prices, model, int(i), int(o)))
            for model, (i, o) in by_model.items()
        ]
        if not rows:
            return
        async with self.pool.connection() as conn, conn.cursor() as cursor:
            await cursor.executemany(
                "INSERT INTO agentstack_usage (run_id, thread_id, graph, caller, model, input_tokens, "
                "output_tokens, cost_usd) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                rows,
            )

    async def report(self, by: Grouping, *, since_s: float | None = None) -> list[UsageRow]:
        """Usage summed by `by`, most expensive (then most tokens) first."""
        column = {"model": "model", "graph": "graph", "caller": "caller", "thread": "thread_id"}[by]
        where = "WHERE at > now() - make_interval(secs => %s)" if since_s is not None else ""
        async with self.pool.connection() as conn:
            found = await conn.execute(
                f"""SELECT coalesce({column}, '-') AS key, count(DISTINCT run_id) AS runs,
    sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, sum(cost_usd) AS cost_usd
FROM agentstack_usage {where} GROUP BY 1
ORDER BY sum(cost_usd) DESC NULLS LAST, sum(input_tokens + output_tokens) DESC""",
                (since_s,) if since_s is not None else (),
            )
            rows = await found.fetchall()
        return [
            UsageRow(
                str(r["key"]),
                int(r["runs"]),
                int(r["input_tokens"]),
                int(r["output_tokens"]),
                float(r["cost_usd"]) if r["cost_usd"] is not None else None,
            )
            for r in rows
        ]
