"""`PoolSaver.acopy_thread` and `adelete_for_runs` on a real Postgres: a copy reads as its source, and deleting
a run's checkpoints leaves the thread, row for row, as it was before the run."""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

import pytest
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from agentstack.checkpoint import PoolSaver
from agentstack.errors import ConflictError, UserError

TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")


class State(TypedDict):
    notes: Annotated[list[str], operator.add]
    last: str


def build(saver: PoolSaver) -> Any:
    """outer -> inner (a subgraph of two steps: its own namespace) -> end."""
    inner = StateGraph(State)
    inner.add_node("one", lambda s: {"notes": ["one"], "last": "one"})
    inner.add_node("two", lambda s: {"notes": ["two"], "last": "two"})
    inner.add_edge(START, "one")
    inner.add_edge("one", "two")
    inner.add_edge("two", END)
    graph = StateGraph(State)
    graph.add_node("outer", lambda s: {"notes": [f"outer after {len(s['notes'])}"], "last": "outer"})
    graph.add_node("inner", inner.compile())
    graph.add_edge(START, "outer")
    graph.add_edge("outer", "inner")
    graph.add_edge("inner", END)
    return graph.compile(checkpointer=saver)


def run(thread: str, run_id: str) -> dict[str, Any]:
    """A config as the agent server's worker makes it: every checkpoint records the run that saved it."""
    return {"configurable": {"thread_id": thread}, "metadata": {"run_id": run_id}}


async def rows(saver: PoolSaver, thread: str) -> dict[str, list[tuple[Any, ...]]]:
    async with saver.conn.connection() as conn:
        return {
            table: [
                tuple(r.values())
                for r in await (
                    await conn.execute(f"SELECT * FROM {table} WHERE thread_id = %s ORDER BY 1, 2, 3, 4", (thread,))
                ).fetchall()
            ]
            for table in TABLES
        }


async def test_deleting_a_run_leaves_the_thread_row_for_row_as_before_it(saver: PoolSaver) -> None:
    graph = build(saver)
    await graph.ainvoke({"notes": []}, run("t", "run-1"))
    before, values = await rows(saver, "t"), (await graph.aget_state(run("t", "x"))).values
    await graph.ainvoke({"notes": ["again"]}, run("t", "run-2"))
    assert (await graph.aget_state(run("t", "x"))).values["notes"][-1] == "two"
    assert len((await rows(saver, "t"))["checkpoints"]) > len(before["checkpoints"])

    await saver.adelete_for_runs(["run-2"])
    assert await rows(saver, "t") == before  # checkpoints, blobs and writes: exactly what run-1 left
    assert (await graph.aget_state(run("t", "x"))).values == values
    await graph.ainvoke({"notes": ["later"]}, run("t", "run-3"))  # the thread goes on from there
    after = (await graph.aget_state(run("t", "x"))).values["notes"]
    assert after[: len(values["notes"]) + 1] == [*values["notes"], "later"]

    await saver.adelete_for_runs([])  # nothing to do
    with pytest.raises(UserError, match="takes a sequence of run ids"):
        await saver.adelete_for_runs("run-3")


async def test_deleting_a_run_that_resumed_a_waiting_thread_leaves_it_waiting_row_for_row(saver: PoolSaver) -> None:
    """The resume wrote against the first run's checkpoint (its value, the finished task's writes): they go too,
    in the root namespace and in a subgraph's, so the next resume runs the waiting steps again."""
    inner = StateGraph(State)
    inner.add_node("ask", lambda s: {"notes": [f"inner heard {interrupt('inner?')}"]})
    inner.add_edge(START, "ask")
    graph = StateGraph(State)
    graph.add_node("ask", lambda s: {"notes": [f"heard {interrupt('outer?')}"]})
    graph.add_node("inner", inner.compile())
    graph.add_edge(START, "ask")
    graph.add_edge("ask", "inner")
    compiled = graph.compile(checkpointer=saver)
    await compiled.ainvoke({"notes": []}, run("w", "run-1"))
    before = await rows(saver, "w")
    await compiled.ainvoke(Command(resume="yes"), run("w", "run-2"))  # on to the subgraph's question
    await compiled.ainvoke(Command(resume="sure"), run("w", "run-3"))
    assert (await compiled.aget_state(run("w", "x"))).values["notes"][-1] == "inner heard sure"
    await saver.adelete_for_runs(["run-3"])
    state = await compiled.aget_state(run("w", "x"), subgraphs=True)
    assert state.values["notes"] == ["heard yes"] and state.tasks[0].state.next == ("ask",)  # the subgraph waits
    await saver.adelete_for_runs(["run-2"])
    assert await rows(saver, "w") == before
    out = await compiled.ainvoke(Command(resume="no"), run("w", "run-4"))
    assert out["notes"] == ["heard no"]


async def test_a_copy_reads_as_its_source_then_goes_its_own_way(saver: PoolSaver) -> None:
    graph = build(saver)
    await graph.ainvoke({"notes": []}, run("source", "run-1"))
    await saver.acopy_thread("source", "copy")
    source, copy = await rows(saver, "source"), await rows(saver, "copy")
    assert {t: [r[1:] for r in v] for t, v in copy.items()} == {t: [r[1:] for r in v] for t, v in source.items()}
    history = [s.config["configurable"]["checkpoint_id"] async for s in graph.aget_state_history(run("copy", "x"))]
    assert history == [
        s.config["configurable"]["checkpoint_id"] async for s in graph.aget_state_history(run("source", "x"))
    ]

    await graph.ainvoke({"notes": ["only the copy"]}, run("copy", "run-2"))
    assert "only the copy" not in (await graph.aget_state(run("source", "x"))).values["notes"]
    with pytest.raises(ConflictError, match="thread 'copy' already has checkpoints"):
        await saver.acopy_thread("source", "copy")
    with pytest.raises(UserError, match="onto itself"):
        await saver.acopy_thread("source", "source")
