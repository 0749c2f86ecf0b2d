"""Experiments and cached judgements in Postgres, next to the checkpoints (the one shared state).

An experiment is written in one transaction, its row and every item's, once all items are scored: a run that
fails half way leaves nothing half written (its judgements are cached as they are made, so a rerun pays only
for what was not judged yet). A judgement is cached under a key made of the metric and its version, the judge
(model, embedder, support scorer), the example and what the graph answered: change any and it is judged anew.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any

from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from agentstack.errors import UserError
from agentstack.eval._dataset import Example
from agentstack.eval._metric import Metric
from agentstack.eval._results import ExperimentResult, ItemResult
from agentstack.eval._types import Context, Outcome, Sample, Score

__all__ = ["ExperimentStore", "judgement_key"]

_TABLES = (
    """CREATE TABLE IF NOT EXISTS agentstack_eval_experiments (
    name TEXT PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    dataset TEXT NOT NULL,
    dataset_hash TEXT NOT NULL,
    graph TEXT NOT NULL,
    metrics JSONB NOT NULL,
    config JSONB NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS agentstack_eval_items (
    experiment TEXT NOT NULL REFERENCES agentstack_eval_experiments (name) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    example JSONB NOT NULL,
    outcome JSONB NOT NULL,
    scores JSONB NOT NULL,
    PRIMARY KEY (experiment, position)
)""",
    """CREATE TABLE IF NOT EXISTS agentstack_eval_judgements (
    key TEXT PRIMARY KEY,
    metric TEXT NOT NULL,
    score JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
)""",
)


def judgement_key(metric: Metric, judge_name: str, sample: Sample) -> str:
    outcome = sample.outcome
    answered = json.dumps(
        [outcome.answer, [(c.id, c.chunk_id, c.text) for c in outcome.contexts], list(outcome.cited)],
        ensure_ascii=False,
    )
    parts = (metric.key, judge_name, sample.example.fingerprint(), answered)
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class ExperimentStore:
    """Experiments on a psycopg async pool (`Stack.saver.conn`, or `open_pool(url)`)."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def setup(self) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            for statement in _TABLES:
                await conn.execute(statement)

    async def exists(self, name: str) -> bool:
        return bool(await _rows(self.pool, "SELECT 1 FROM agentstack_eval_experiments WHERE name = %s", (name,)))

    async def save(self, result: ExperimentResult) -> None:
        """Store the experiment and its items at once; a name already stored is refused."""
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(
                "INSERT INTO agentstack_eval_experiments (name, dataset, dataset_hash, graph, metrics, config) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING RETURNING created_at",
                (
                    result.name,
                    result.dataset,
                    result.dataset_hash,
                    result.graph,
                    Jsonb(list(result.metrics)),
                    Jsonb(dict(result.config)),
                ),
            )
            if await cur.fetchone() is None:
                raise _taken(result.name)
            await cur.executemany(
                "INSERT INTO agentstack_eval_items (experiment, position, example, outcome, scores) "
                "VALUES (%s, %s, %s, %s, %s)",
                [
                    (
                        result.name,
                        n,
                        Jsonb(item.example.model_dump(mode="json")),
                        Jsonb(asdict(item.outcome)),
                        Jsonb({k: asdict(s) for k, s in item.scores.items()}),
                    )
                    for n, item in enumerate(result.items)
                ],
            )

    async def load(self, name: str) -> ExperimentResult:
        found = await _rows(
            self.pool,
            "SELECT name, created_at, dataset, dataset_hash, graph, metrics, config "
            "FROM agentstack_eval_experiments WHERE name = %s",
            (name,),
        )
        if not found:
            raise UserError(f"there is no experiment named {name!r}", fix="see `agentstack eval list`")
        rows = await _rows(
            self.pool,
            "SELECT example, outcome, scores FROM agentstack_eval_items WHERE experiment = %s ORDER BY position",
            (name,),
        )
        items = [_item(*row) for row in rows]
        name_, created, dataset, dataset_hash, graph, metrics, config = found[0]
        return ExperimentResult(name_, dataset, dataset_hash, graph, config, items, created, tuple(metrics))

    async def names(self, limit: int = 100) -> list[tuple[str, Any, str, str, int]]:
        """(name, created at, dataset, graph, items) of the newest experiments."""
        return await _rows(
            self.pool,
            "SELECT e.name, e.created_at, e.dataset, e.graph, count(i.position) "
            "FROM agentstack_eval_experiments e LEFT JOIN agentstack_eval_items i ON i.experiment = e.name "
            "GROUP BY e.name ORDER BY e.created_at DESC, e.name LIMIT %s",
            (limit,),
        )

    async def delete(self, name: str) -> bool:
        async with self.pool.connection() as conn:
            cursor = await conn.execute("DELETE FROM agentstack_eval_experiments WHERE name = %s", (name,))
            return cursor.rowcount > 0

    async def cached(self, key: str) -> Score | None:
        rows = await _rows(self.pool, "SELECT score FROM agentstack_eval_judgements WHERE key = %s", (key,))
        return Score(**rows[0][0]) if rows else None

    async def remember(self, key: str, metric: str, score: Score) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO agentstack_eval_judgements (key, metric, score) VALUES (%s, %s, %s) "
                "ON CONFLICT (key) DO NOTHING",
                (key, metric, Jsonb(asdict(score))),
            )


async def _rows(pool: Any, query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


def _taken(name: str) -> UserError:
    return UserError(
        f"an experiment named {name!r} is already stored",
        fix="give this run another --name, or delete that one: agentstack eval delete " + name,
    )


def _item(example: dict[str, Any], outcome: dict[str, Any], scores: dict[str, Any]) -> ItemResult:
    contexts = tuple(Context(**c) for c in outcome.pop("contexts", []))
    cited, removed = tuple(outcome.pop("cited", ())), tuple(outcome.pop("removed_citations", ()))
    return ItemResult(
        Example.model_validate(example),
        Outcome(contexts=contexts, cited=cited, removed_citations=removed, **outcome),
        {name: Score(**score) for name, score in scores.items()},
    )
