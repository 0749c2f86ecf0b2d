"""Request rates per key, shared through Postgres: two agent servers on one database admit no more than the key's
limit between them, refuse the rest with 429, Retry-After and X-RateLimit-* headers, and admit again as the
minute passes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import httpx
import pytest

from agentstack.api._app import app_on
from agentstack.api._runs import RunQueue
from agentstack.api._served import ServedGraphs
from agentstack.checkpoint import PoolSaver, open_pool
from agentstack.safety import KeyStore
from agentstack.safety._limits import Limiter
from api_helpers import serving


async def test_the_gcra_admits_a_burst_of_the_limit_then_one_per_step(saver: PoolSaver) -> None:
    await KeyStore(saver.conn).setup()
    limiter = Limiter(saver.conn)
    decisions = [await limiter.admit("k", 120) for _ in range(121)]  # 120 a minute: one every 0.5 s
    assert [d.admitted for d in decisions] == [True] * 120 + [False]
    assert [d.remaining for d in decisions[:3]] == [119, 118, 117] and decisions[119].remaining == 0
    refused = decisions[-1]
    assert 0 < refused.retry_after_s <= 0.5 and dict(refused.headers())[b"retry-after"] == b"1"
    await asyncio.sleep(refused.retry_after_s + 0.05)
    assert (await limiter.admit("k", 120)).admitted  # a step later, one more
    assert (await limiter.admit("other", 120)).admitted  # each key its own


@pytest.fixture
async def two_servers(agentstack_postgres: str) -> AsyncIterator[tuple[list[str], str]]:
    async with AsyncExitStack() as stack:
        urls = []
        for _ in range(2):  # two servers, each its own pool: all they share is the database
            pool = await stack.enter_async_context(open_pool(agentstack_postgres, max_size=4))
            urls.append(await stack.enter_async_context(serving(app_on(RunQueue(pool), ServedGraphs([]), workers=0))))
        keys = KeyStore(pool)
        made = await keys.create("limited", rpm=10)
        yield urls, made.secret


async def test_two_servers_admit_no_more_than_the_limit_between_them(two_servers: tuple[list[str], str]) -> None:
    urls, secret = two_servers
    clients = [httpx.AsyncClient(base_url=u, headers={"x-api-key": secret}) for u in urls]
    try:
        answers = await asyncio.gather(*(clients[i % 2].post("/threads/search", json={}) for i in range(30)))
    finally:
        for client in clients:
            await client.aclose()
    admitted = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    assert len(admitted) == 10 and len(refused) == 20, [a.status_code for a in answers]
    assert {a.headers["x-ratelimit-limit"] for a in admitted} == {"10"}
    assert sorted(int(a.headers["x-ratelimit-remaining"]) for a in admitted) == list(range(10))
    for answer in refused:
        assert int(answer.headers["retry-after"]) >= 1 and answer.headers["x-ratelimit-remaining"] == "0"
        assert "over its limit of 10 requests a minute" in answer.json()["detail"]
