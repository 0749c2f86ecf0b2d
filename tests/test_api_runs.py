"""The agent server's runs queue on a real Postgres: claims, leases, per-thread order, multitask strategies,
cancels and stream events, with several workers claiming at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from psycopg.types.json import Jsonb

from agentstack.api._runs import Run, RunQueue
from agentstack.api._schema import MIGRATIONS
from agentstack.checkpoint import open_pool
from agentstack.errors import ConfigError, ConflictError, LeaseLostError, NotFoundError

LEASE = 30.0


@pytest.fixture
async def queue(agentstack_postgres: str) -> AsyncIterator[RunQueue]:
    async with open_pool(agentstack_postgres, max_size=8) as pool:
        runs = RunQueue(pool)
        await runs.setup()
        yield runs


async def thread(queue: RunQueue) -> str:
    return (await queue.create_thread()).thread_id


async def claimed(queue: RunQueue, worker: str = "w1", lease_s: float = LEASE) -> Run:
    run = await queue.claim(worker, lease_s=lease_s)
    assert run is not None
    return run


async def test_setup_is_safe_to_run_at_once_and_again(agentstack_postgres: str) -> None:
    async with open_pool(agentstack_postgres, max_size=4) as pool:
        await asyncio.gather(*(RunQueue(pool).setup() for _ in range(3)))
        await RunQueue(pool).setup()
        async with pool.connection() as conn:
            rows = await (await conn.execute("SELECT v FROM agentstack_api_migrations ORDER BY v")).fetchall()
    assert [r["v"] for r in rows] == list(range(len(MIGRATIONS)))


async def test_a_database_of_the_first_layout_keeps_its_threads_and_runs(agentstack_postgres: str) -> None:
    async with open_pool(agentstack_postgres, max_size=2) as pool:
        async with pool.connection() as conn:  # the layout of the first release: UUID thread ids
            await conn.execute("CREATE TABLE agentstack_api_migrations (v INTEGER PRIMARY KEY)")
            for version, statement in enumerate(MIGRATIONS[:4]):
                await conn.execute(statement)
                await conn.execute("INSERT INTO agentstack_api_migrations (v) VALUES (%s)", (version,))
            thread_id, run_id = str(uuid.uuid4()), str(uuid.uuid4())  # rows as that release wrote them
            await conn.execute(
                "INSERT INTO agentstack_threads (thread_id, metadata) VALUES (%s, %s)",
                (thread_id, Jsonb({"user": "ana"})),
            )
            await conn.execute(
                "INSERT INTO agentstack_runs (run_id, thread_id, assistant_id, multitask_strategy) "
                "VALUES (%s, %s, 'research', 'enqueue')",
                (run_id, thread_id),
            )
        queue = RunQueue(pool)
        await queue.setup()
        migrated = await queue.get_thread(thread_id)
        assert migrated.metadata == {"user": "ana"} and migrated.owner is None  # nobody's: admin keys see it
        assert [r.run_id for r in await queue.list_runs(thread_id)] == [run_id]


async def test_threads_are_created_once_and_named_in_errors(queue: RunQueue) -> None:
    made = await queue.create_thread(metadata={"user": "ana"})
    assert made.status == "idle" and made.metadata == {"user": "ana"}
    with pytest.raises(ConflictError, match=f"thread {made.thread_id} already exists"):
        await queue.create_thread(made.thread_id)
    assert (await queue.create_thread(made.thread_id, if_exists="do_nothing")).metadata == {"user": "ana"}
    with pytest.raises(ConfigError, match="thread id 'not-a-uuid' is not a UUID"):
        await queue.create_thread("not-a-uuid")  # new threads have UUIDs; one the CLI started is adopted as it is
    with pytest.raises(NotFoundError, match="there is no thread research-1"):
        await queue.get_thread("research-1")
    missing = str(uuid.uuid4())
    with pytest.raises(NotFoundError, match=f"there is no thread {missing}"):
        await queue.put_run(missing, "research")
    created = await queue.put_run(missing, "research", if_not_exists="create")
    assert (await queue.get_thread(missing)).status == "busy" and created.status == "pending"


async def test_runs_of_a_thread_run_one_at_a_time_oldest_first(queue: RunQueue) -> None:
    a, b = await thread(queue), await thread(queue)
    a1 = await queue.put_run(a, "research", kwargs={"input": {"question": "1"}})
    a2 = await queue.put_run(a, "research")
    b1 = await queue.put_run(b, "research")
    assert a1.run_id < a2.run_id  # uuid7: ids sort by creation
    first, second = await claimed(queue, "w1"), await claimed(queue, "w2")
    assert (first.run_id, second.run_id) == (a1.run_id, b1.run_id)  # not a2: a1 is unfinished
    assert first.kwargs == {"input": {"question": "1"}} and first.attempt == 1 and first.worker == "w1"
    assert await queue.claim("w3", lease_s=LEASE) is None
    await queue.finish(first, "success", thread_status="idle")
    assert (await queue.get_thread(a)).status == "busy"  # a2 still waits
    third = await claimed(queue, "w3")
    assert third.run_id == a2.run_id
    await queue.finish(third, "success", thread_status="interrupted")
    assert (await queue.get_thread(a)).status == "interrupted"
    assert (await queue.get_run(a, a1.run_id)).status == "success"


async def test_reject_refuses_a_second_run_while_one_is_unfinished(queue: RunQueue) -> None:
    t = await thread(queue)
    await queue.put_run(t, "research", multitask_strategy="reject")
    with pytest.raises(ConflictError, match=f"thread {t} is already running a task"):
        await queue.put_run(t, "research", multitask_strategy="reject")
    await queue.finish(await claimed(queue), "success", thread_status="idle")
    assert (await queue.put_run(t, "research", multitask_strategy="reject")).status == "pending"
    with pytest.raises(ConfigError, match="multitask_strategy 'later' is not one of"):
        await queue.put_run(t, "research", multitask_strategy="later")  # type: ignore[arg-type]


async def test_interrupt_stops_the_running_run_at_its_next_renewal_and_settles_pending_ones(queue: RunQueue) -> None:
    t = await thread(queue)
    running_run = await queue.put_run(t, "research")
    running = await claimed(queue)
    waiting = await queue.put_run(t, "research")
    assert await queue.renew(running, lease_s=LEASE) is None
    newest = await queue.put_run(t, "research", multitask_strategy="interrupt")
    assert (await queue.get_run(t, waiting.run_id)).status == "interrupted"  # never started
    assert await queue.renew(running, lease_s=LEASE) == "interrupt"  # the worker stops at the next superstep
    assert await queue.claim("w2", lease_s=LEASE) is None  # the interrupted run is still the thread's
    await queue.finish(running, "interrupted", thread_status="idle")
    assert (await queue.get_run(t, running_run.run_id)).status == "interrupted"
    assert (await claimed(queue, "w2")).run_id == newest.run_id


async def test_rollback_deletes_the_runs_it_cancels(queue: RunQueue) -> None:
    t = await thread(queue)
    first = await queue.put_run(t, "research")
    running = await claimed(queue)
    pending = await queue.put_run(t, "research")
    await queue.put_run(t, "research", multitask_strategy="rollback")
    with pytest.raises(NotFoundError):
        await queue.get_run(t, pending.run_id)
    assert await queue.renew(running, lease_s=LEASE) == "rollback"
    await queue.finish(running, "interrupted", thread_status="idle")
    with pytest.raises(NotFoundError):
        await queue.get_run(t, first.run_id)
    assert (await queue.get_thread(t)).status == "busy"  # the rollback's own run waits


async def test_a_lapsed_lease_is_taken_over_and_fences_the_old_worker(queue: RunQueue) -> None:
    t = await thread(queue)
    put = await queue.put_run(t, "research")
    old = await claimed(queue, "dead", lease_s=0.2)
    seq = await queue.append_event(old, "metadata", {"run_id": put.run_id})
    await asyncio.sleep(0.4)
    new = await claimed(queue, "alive")
    assert (new.run_id, new.attempt, new.worker) == (put.run_id, 2, "alive")
    for act in (
        queue.renew(old, lease_s=LEASE),
        queue.append_event(old, "values", {}),
        queue.finish(old, "success", thread_status="idle"),
    ):
        with pytest.raises(LeaseLostError, match=f"run {put.run_id} \\(attempt 1\\) is no longer held by worker dead"):
            await act
    assert await queue.append_event(new, "values", {"step": 1}) == seq + 1  # the stream goes on, no gap
    await queue.finish(new, "success", thread_status="idle")
    assert [(e.seq, e.event) for e in await queue.events_after(put.run_id)] == [(1, "metadata"), (2, "values")]
    assert [e.data for e in await queue.events_after(put.run_id, 1)] == [{"step": 1}]


async def test_a_released_run_is_claimed_again(queue: RunQueue) -> None:
    t = await thread(queue)
    put = await queue.put_run(t, "research")
    await queue.release(await claimed(queue, "draining"))
    assert (await queue.get_run(t, put.run_id)).status == "pending"
    again = await claimed(queue, "next")
    assert again.run_id == put.run_id and again.attempt == 2


async def test_cancel_settles_a_pending_run_and_names_a_missing_one(queue: RunQueue) -> None:
    t = await thread(queue)
    put = await queue.put_run(t, "research")
    await queue.cancel(t, put.run_id)
    assert (await queue.get_run(t, put.run_id)).status == "interrupted"
    await queue.cancel(t, put.run_id)  # already final: nothing to do
    missing = str(uuid.uuid4())
    with pytest.raises(NotFoundError, match=f"there is no run {missing}"):
        await queue.cancel(t, missing)
    with pytest.raises(ConfigError, match="cancel action 'stop' is not interrupt or rollback"):
        await queue.cancel(t, put.run_id, "stop")  # type: ignore[arg-type]


async def test_workers_claiming_at_once_take_each_run_once_and_one_per_thread(queue: RunQueue) -> None:
    threads = [await thread(queue) for _ in range(4)]
    puts = [await queue.put_run(t, "research") for _ in range(5) for t in threads]
    taken: list[str] = []
    busy: set[str] = set()

    async def worker(name: str) -> None:
        while (run := await queue.claim(name, lease_s=LEASE)) is not None or len(taken) < len(puts):
            if run is None:
                await asyncio.sleep(0.01)
                continue
            assert run.thread_id not in busy, "two runs of one thread ran at once"
            busy.add(run.thread_id)
            taken.append(run.run_id)
            await asyncio.sleep(0.005)
            busy.discard(run.thread_id)
            await queue.finish(run, "success", thread_status="idle")

    await asyncio.wait_for(asyncio.gather(*(worker(f"w{i}") for i in range(6))), timeout=60)
    assert sorted(taken) == sorted(p.run_id for p in puts)  # each once
    per_thread: dict[str, list[str]] = {}
    for run_id in taken:
        per_thread.setdefault(next(p.thread_id for p in puts if p.run_id == run_id), []).append(run_id)
    assert all(ids == sorted(ids) for ids in per_thread.values())  # oldest first within a thread
    statuses: Any = {(await queue.get_thread(t)).status for t in threads}
    assert statuses == {"idle"}


async def test_old_stream_events_of_ended_runs_are_deleted_and_running_ones_kept(queue: RunQueue) -> None:
    t1, t2 = await thread(queue), await thread(queue)
    await queue.put_run(t1, "research")
    ended = await queue.claim("w1", lease_s=LEASE)
    assert ended is not None
    await queue.append_event(ended, "values", {"n": 1})
    await queue.finish(ended, "success", thread_status="idle")
    await queue.put_run(t2, "research")
    running = await queue.claim("w1", lease_s=LEASE)
    assert running is not None
    await queue.append_event(running, "values", {"n": 2})
    assert await queue.delete_events(ended_before_s=3600) == 0  # ended moments ago: kept
    await asyncio.sleep(0.2)
    assert await queue.delete_events(ended_before_s=0.1) == 1
    assert await queue.events_after(ended.run_id) == []
    assert [e.data for e in await queue.events_after(running.run_id)] == [{"n": 2}]  # a running run's stay
    assert (await queue.get_run(t1, ended.run_id)).status == "success"  # the run itself stays
