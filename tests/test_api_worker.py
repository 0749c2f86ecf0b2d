"""Workers running queued runs on real graphs and a real Postgres (checkpoints and the runs queue): events,
statuses, human-in-the-loop through a resume run, errors, cancels, and a dead worker's run continued by
another from its last checkpoint without running a finished step again."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import operator
from collections.abc import AsyncIterator
from typing import Annotated, Any, TypedDict

import pytest
from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt

from agentstack.api._notify import QueueNotifications
from agentstack.api._runs import RunQueue
from agentstack.api._served import ServedGraph, ServedGraphs
from agentstack.api._worker import RunWorker
from agentstack.checkpoint import PoolSaver


class State(TypedDict):
    steps: Annotated[list[str], operator.add]


@pytest.fixture
async def queue(saver: PoolSaver) -> AsyncIterator[RunQueue]:
    runs = RunQueue(saver.conn)
    await runs.setup()
    yield runs


def served(graph: Any) -> ServedGraphs:
    return ServedGraphs([ServedGraph("steps", graph)])


def two_steps(saver: PoolSaver, *, second: Any = None, calls: list[str] | None = None) -> Any:
    """first -> second -> end; `second` replaces the second node (to wait, ask a human, or raise)."""
    seen = calls if calls is not None else []

    def first(state: State) -> dict[str, list[str]]:
        seen.append("first")
        return {"steps": ["first"]}

    async def plain(state: State) -> dict[str, list[str]]:
        seen.append("second")
        return {"steps": ["second"]}

    graph = StateGraph(State)
    graph.add_node("first", first)
    graph.add_node("second", second or plain)
    graph.add_edge(START, "first")
    graph.add_edge("first", "second")
    graph.add_edge("second", END)
    return graph.compile(checkpointer=saver)


async def test_a_run_streams_its_values_and_ends_a_success_on_an_idle_thread(queue: RunQueue, saver: PoolSaver) -> None:
    worker = RunWorker(queue, served(two_steps(saver)), name="w1")
    thread = (await queue.create_thread()).thread_id
    put = await queue.put_run(thread, "steps", kwargs={"input": {"steps": []}, "stream_mode": ["values", "updates"]})
    assert (await worker.run_once()) is not None
    assert (await queue.get_run(thread, put.run_id)).status == "success"
    assert (await queue.get_thread(thread)).status == "idle"
    events = [(e.event, e.data) for e in await queue.events_after(put.run_id)]
    assert events[0] == ("metadata", {"run_id": put.run_id, "attempt": 1})
    assert ("updates", {"first": {"steps": ["first"]}}) in events
    assert events[-1] == ("values", {"steps": ["first", "second"]})
    assert await worker.run_once() is None


async def test_an_interrupt_leaves_the_thread_interrupted_and_a_resume_run_finishes_it(
    queue: RunQueue, saver: PoolSaver
) -> None:
    def ask(state: State) -> dict[str, list[str]]:
        return {"steps": [f"human said {interrupt('go on?')}"]}

    worker = RunWorker(queue, served(two_steps(saver, second=ask)), name="w1")
    thread = (await queue.create_thread()).thread_id
    first = await queue.put_run(thread, "steps", kwargs={"input": {"steps": []}})
    await worker.run_once()
    assert (await queue.get_run(thread, first.run_id)).status == "success"  # as the LangGraph API: run done,
    assert (await queue.get_thread(thread)).status == "interrupted"  # thread waiting
    waiting = [e.data for e in await queue.events_after(first.run_id) if e.event == "values"][-1]
    assert waiting["__interrupt__"][0]["value"] == "go on?"
    resume = await queue.put_run(thread, "steps", kwargs={"command": {"resume": "yes"}})
    await worker.run_once()
    assert (await queue.get_thread(thread)).status == "idle"
    final = [e.data for e in await queue.events_after(resume.run_id) if e.event == "values"][-1]
    assert final == {"steps": ["first", "human said yes"]}


async def test_a_graph_that_raises_is_an_error_run_with_an_error_event(queue: RunQueue, saver: PoolSaver) -> None:
    def broken(state: State) -> dict[str, list[str]]:
        raise RuntimeError("the tool is down")

    worker = RunWorker(queue, served(two_steps(saver, second=broken)), name="w1")
    thread = (await queue.create_thread()).thread_id
    put = await queue.put_run(thread, "steps", kwargs={"input": {"steps": []}})
    await worker.run_once()
    run = await queue.get_run(thread, put.run_id)
    assert run.status == "error" and run.error == {"error": "RuntimeError", "message": "the tool is down"}
    assert (await queue.get_thread(thread)).status == "error"
    assert (await queue.events_after(put.run_id))[-1].event == "error"
    unknown = await queue.put_run(thread, "nope", kwargs={"input": {}})
    await worker.run_once()
    assert "no graph is served as assistant 'nope'" in (await queue.get_run(thread, unknown.run_id)).error["message"]


async def test_a_cancel_stops_a_running_run_at_its_next_renewal(queue: RunQueue, saver: PoolSaver) -> None:
    started = asyncio.Event()

    async def slow(state: State) -> dict[str, list[str]]:
        started.set()
        await asyncio.sleep(60)
        return {"steps": ["never"]}

    worker = RunWorker(queue, served(two_steps(saver, second=slow)), name="w1", lease_s=0.3)
    thread = (await queue.create_thread()).thread_id
    put = await queue.put_run(thread, "steps", kwargs={"input": {"steps": []}})
    running = asyncio.create_task(worker.run_once())
    await asyncio.wait_for(started.wait(), 10)
    await queue.cancel(thread, put.run_id, "interrupt")
    await asyncio.wait_for(running, 10)
    assert (await queue.get_run(thread, put.run_id)).status == "interrupted"
    assert (await queue.get_thread(thread)).status == "interrupted"  # "second" is still due: resumable


async def test_a_dead_workers_run_is_continued_from_its_last_checkpoint_by_another(
    queue: RunQueue, saver: PoolSaver
) -> None:
    calls: list[str] = []
    hang = asyncio.Event()

    async def second(state: State) -> dict[str, list[str]]:
        calls.append("second")
        if not hang.is_set():
            hang.set()
            await asyncio.sleep(3600)  # the first worker dies here
        return {"steps": ["second"]}

    graph = two_steps(saver, second=second, calls=calls)
    thread = (await queue.create_thread()).thread_id
    put = await queue.put_run(thread, "steps", kwargs={"input": {"steps": []}})
    dying = RunWorker(queue, served(graph), name="dying", lease_s=0.5)
    task = asyncio.create_task(dying.run_once())
    await asyncio.wait_for(hang.wait(), 10)
    task.cancel()  # what a SIGKILL leaves: the run still claimed, its lease no longer renewed
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await queue.get_run(thread, put.run_id)).status == "running"
    survivor = RunWorker(queue, served(graph), name="survivor", lease_s=5)
    assert await survivor.run_once() is None  # the lease has not lapsed yet
    await asyncio.sleep(0.6)
    taken = await survivor.run_once()
    assert taken is not None and taken.attempt == 2
    assert calls == ["first", "second", "second"]  # "first" finished and was saved: it did not run again
    assert (await queue.get_run(thread, put.run_id)).status == "success"
    final = [e.data for e in await queue.events_after(put.run_id) if e.event == "values"][-1]
    assert final == {"steps": ["first", "second"]}
    attempts = [e.data["attempt"] for e in await queue.events_after(put.run_id) if e.event == "metadata"]
    assert attempts == [1, 2]  # one stream: the second attempt's events follow the first's


async def test_a_stopping_worker_gives_its_run_back_to_the_queue(queue: RunQueue, saver: PoolSaver) -> None:
    started = asyncio.Event()

    async def slow(state: State) -> dict[str, list[str]]:
        started.set()
        await asyncio.sleep(60)
        return {"steps": ["never"]}

    worker = RunWorker(queue, served(two_steps(saver, second=slow)), name="draining", lease_s=30)
    thread = (await queue.create_thread()).thread_id
    put = await queue.put_run(thread, "steps", kwargs={"input": {"steps": []}})
    serving = asyncio.create_task(worker.serve(idle_s=0.05))
    await asyncio.wait_for(started.wait(), 10)
    serving.cancel()  # what the server's shutdown does
    with pytest.raises(asyncio.CancelledError):
        await serving
    assert (await queue.get_run(thread, put.run_id)).status == "pending"  # not held for 30 s by a lease
    again = await queue.claim("next", lease_s=30)
    assert again is not None and again.run_id == put.run_id and again.attempt == 2


async def test_notifications_wake_an_idle_worker_and_deliver_a_cancel_at_once(
    queue: RunQueue, saver: PoolSaver
) -> None:
    async def stuck(state: State) -> dict[str, list[str]]:
        await asyncio.sleep(3600)
        return {"steps": ["never"]}

    async with QueueNotifications.listening(queue.pool) as notes:
        await asyncio.wait_for(notes.connected.wait(), 10)
        # it would look for work once an hour, and see a cancel at a renewal every 20 minutes
        worker = RunWorker(queue, served(two_steps(saver, second=stuck)), name="w1", lease_s=3600, notes=notes)
        serving = asyncio.create_task(worker.serve(idle_s=3600))
        try:
            await asyncio.sleep(0.5)  # it has looked, found nothing, and waits
            thread = (await queue.create_thread()).thread_id
            run = await queue.put_run(thread, "steps", kwargs={"input": {"steps": []}})
            async with asyncio.timeout(60):
                while (await queue.get_run(thread, run.run_id)).status != "running":  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                await queue.cancel(thread, run.run_id, "interrupt")
                while (await queue.get_run(thread, run.run_id)).status != "interrupted":  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        finally:
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving


async def test_a_wake_up_lives_only_while_someone_waits_on_it() -> None:
    notes = QueueNotifications("postgresql://unused")  # not listening: the bookkeeping alone
    waiting = notes.run_ended("r1")
    assert notes.run_ended("r1") is waiting  # one event per run, shared by its waiters
    notes.cancel_asked("r2")  # a renewal that looked and left
    gc.collect()
    assert dict(notes._ended) == {"r1": waiting} and not notes._cancels  # a long-lived server keeps nothing more
