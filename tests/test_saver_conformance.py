"""LangGraph's own saver conformance suite, run against PoolSaver and the stock saver alike."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from agentstack.checkpoint import PoolSaver, open_pool
from agentstack.testing import TestPostgres


@pytest.mark.parametrize("kind", ["pool", "stock"])
async def test_conformance(kind: str, agentstack_postgres_server: TestPostgres) -> None:
    url = agentstack_postgres_server.create_database()

    async def factory() -> AsyncIterator[BaseCheckpointSaver]:
        async with open_pool(url, max_size=4) as pool:
            saver: BaseCheckpointSaver = PoolSaver(pool) if kind == "pool" else AsyncPostgresSaver(pool)
            await saver.setup()
            for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes"):
                async with pool.connection() as conn:
                    await conn.execute(f"TRUNCATE {table}")
            yield saver
            if isinstance(saver, PoolSaver):
                await saver.drain()

    registered = checkpointer_test(name=f"{kind}-saver")(factory)
    try:
        report = await validate(registered)
    finally:
        agentstack_postgres_server.drop_database(url)
    failures = {name: result.failures for name, result in report.results.items() if result.failures}
    assert not failures, failures
    assert report.passed_all_base(), report
    # Ours also copies threads and deletes runs' checkpoints (the agent server's thread copy and rollback),
    # and passes the suite's tests of both.
    detected = {name for name, result in report.results.items() if result.detected}
    base = {"put", "put_writes", "get_tuple", "list", "delete_thread", "prune"}
    assert detected == (base | {"copy_thread", "delete_for_runs"} if kind == "pool" else base), detected
    passed = sum(result.tests_passed for result in report.results.values())
    assert passed >= 50, f"only {passed} conformance tests ran"
