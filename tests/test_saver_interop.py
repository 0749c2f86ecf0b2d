"""Stock `AsyncPostgresSaver` and `PoolSaver` read and continue each other's threads.

The graph pauses with everything a checkpoint can hold at once: a subgraph's own namespace,
an interrupt inside it, a sibling task's pending writes (which must not run again on
resume), `Send`s, and message objects. Whichever saver wrote it, the other reads every
checkpoint of every namespace identically and finishes the run.
"""

from __future__ import annotations

import operator
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.messages import AIMessage, AnyMessage
from langgraph.checkpoint.base import BaseCheckpointSaver, CheckpointTuple
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Command, Send, interrupt

from agentstack.checkpoint import PoolSaver, open_saver


class Inner(TypedDict):
    topic: str
    answer: str


class Outer(TypedDict):
    topic: str
    log: Annotated[list[str], operator.add]
    messages: Annotated[list[AnyMessage], add_messages]
    answer: str


def build(saver: BaseCheckpointSaver, runs: list[str]) -> Any:
    """`fan` sends to `note` (x2) and calls `review` (a subgraph that asks a human) in one superstep."""

    def ask(state: Inner) -> dict[str, Any]:
        runs.append("ask")
        return {"answer": interrupt({"question": f"approve {state['topic']}?"})}

    inner = StateGraph(Inner)
    inner.add_node("ask", ask)
    inner.add_edge(START, "ask")
    review = inner.compile()

    def note(arg: dict[str, str]) -> dict[str, Any]:
        runs.append(f"note {arg['text']}")
        return {"log": [arg["text"]], "messages": [AIMessage(f"noted {arg['text']}", id=arg["text"])]}

    outer = StateGraph(Outer)
    outer.add_node("fan", lambda state: {"log": ["fan"]})
    outer.add_node("note", note)
    outer.add_node("review", review)
    outer.add_edge(START, "fan")
    outer.add_conditional_edges("fan", lambda s: [Send("note", {"text": t}) for t in ("x", "y")] + ["review"])
    outer.add_edge("note", END)
    outer.add_edge("review", END)
    return outer.compile(checkpointer=saver)


@asynccontextmanager
async def stock_saver(url: str) -> AsyncIterator[AsyncPostgresSaver]:
    async with AsyncPostgresSaver.from_conn_string(url) as saver:
        yield saver


@asynccontextmanager
async def pool_saver(url: str) -> AsyncIterator[PoolSaver]:
    async with open_saver(url, pool_size=4) as saver:
        yield saver


async def every_checkpoint(saver: BaseCheckpointSaver, thread_id: str) -> list[CheckpointTuple]:
    """Every checkpoint of the thread, all namespaces, newest first."""
    return [t async for t in saver.alist({"configurable": {"thread_id": thread_id}})]


Opener = Callable[[str], Any]


@pytest.mark.parametrize(
    ("first", "second"),
    [(pool_saver, stock_saver), (stock_saver, pool_saver)],
    ids=["pool-then-stock", "stock-then-pool"],
)
async def test_each_reads_and_continues_the_others_paused_thread(
    first: Opener, second: Opener, agentstack_postgres: str
) -> None:
    config = {"configurable": {"thread_id": "handover"}}
    runs: list[str] = []
    async with pool_saver(agentstack_postgres):
        pass  # tables exist whichever saver goes first
    async with first(agentstack_postgres) as writer:
        await build(writer, runs).ainvoke({"topic": "refund", "log": [], "messages": [], "answer": ""}, config)
        written = await every_checkpoint(writer, "handover")
        paused = await build(writer, runs).aget_state(config, subgraphs=True)
    assert sorted(runs) == ["ask", "note x", "note y"]
    namespaces = {t.config["configurable"]["checkpoint_ns"] for t in written}
    assert len(namespaces) == 2 and "" in namespaces, namespaces
    assert any(ns.startswith("review:") for ns in namespaces), "the subgraph saves under its own namespace"
    assert any(t.pending_writes for t in written), "the paused step holds the sibling tasks' writes"

    async with second(agentstack_postgres) as reader:
        assert await every_checkpoint(reader, "handover") == written
        state = await build(reader, runs).aget_state(config, subgraphs=True)
        assert state.values == paused.values
        assert [i.value for i in state.interrupts] == [{"question": "approve refund?"}]
        (review,) = [t for t in state.tasks if t.name == "review"]
        assert review.state is not None and review.state.values == {"topic": "refund", "answer": ""}

        result = await build(reader, runs).ainvoke(Command(resume="yes"), config)
    assert result["answer"] == "yes"
    assert sorted(result["log"]) == ["fan", "x", "y"]
    assert [m.content for m in result["messages"]] == ["noted x", "noted y"]
    assert sorted(runs) == ["ask", "ask", "note x", "note y"], "only the interrupted task runs again"

    async with first(agentstack_postgres) as writer:  # and the first reads what the second wrote
        second_wrote = await every_checkpoint(writer, "handover")
    async with second(agentstack_postgres) as reader:
        assert await every_checkpoint(reader, "handover") == second_wrote


async def test_sends_of_checkpoints_before_format_4_are_read_as_the_stock_saver_reads_them(
    saver: PoolSaver, agentstack_postgres: str
) -> None:
    from langgraph.checkpoint.base import empty_checkpoint
    from langgraph.checkpoint.serde.types import TASKS

    base = {"configurable": {"thread_id": "old", "checkpoint_ns": ""}}
    parent = {**empty_checkpoint(), "v": 3, "channel_versions": {"a": "00000000000000000000000000000001.1"}}
    parent_config = await saver.aput(base, parent, {"step": 0}, {})
    await saver.aput_writes(parent_config, [(TASKS, Send("node", {"n": 1})), (TASKS, Send("node", {"n": 2}))], "t1")
    child = {**empty_checkpoint(), "v": 3, "channel_versions": {"a": "00000000000000000000000000000002.5"}}
    child_config = await saver.aput(parent_config, child, {"step": 1}, {})

    ours = await saver.aget_tuple(child_config)
    assert ours is not None and ours.checkpoint["channel_values"][TASKS] == [
        Send("node", {"n": 1}),
        Send("node", {"n": 2}),
    ]
    assert ours.checkpoint["channel_versions"][TASKS] == "00000000000000000000000000000002.5"
    async with stock_saver(agentstack_postgres) as stock:
        assert await stock.aget_tuple(child_config) == ours
        assert await every_checkpoint(stock, "old") == await every_checkpoint(saver, "old")


async def test_a_listing_across_threads_reads_each_old_checkpoints_sends(saver: PoolSaver) -> None:
    from langgraph.checkpoint.base import empty_checkpoint
    from langgraph.checkpoint.serde.types import TASKS

    for thread in ("first", "second"):
        base = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
        parent = {**empty_checkpoint(), "v": 3, "channel_versions": {"a": "00000000000000000000000000000001.1"}}
        parent_config = await saver.aput(base, parent, {"step": 0}, {})
        await saver.aput_writes(parent_config, [(TASKS, Send("node", {"thread": thread}))], "t1")
        child = {**empty_checkpoint(), "v": 3, "channel_versions": {"a": "00000000000000000000000000000002.5"}}
        await saver.aput(parent_config, child, {"step": 1}, {})
    children = [t async for t in saver.alist(None, filter={"step": 1})]
    assert {t.config["configurable"]["thread_id"]: t.checkpoint["channel_values"][TASKS] for t in children} == {
        "first": [Send("node", {"thread": "first"})],
        "second": [Send("node", {"thread": "second"})],
    }
