"""Pruning keeps resume and time travel of what it keeps; delete removes everything."""

from __future__ import annotations

import operator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypedDict

import pytest
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from agentstack.checkpoint import PoolSaver, delete_thread, list_threads, prune_thread
from agentstack.checkpoint._retention import parse_duration
from agentstack.errors import ConfigError


class State(TypedDict):
    step: int
    log: Annotated[list[str], operator.add]
    approved: str


def build(saver: Any, steps: int, ask_at: int | None = None) -> Any:
    def work(state: State) -> dict[str, Any]:
        update: dict[str, Any] = {"step": state["step"] + 1, "log": [f"s{state['step']}"]}
        if state["step"] == ask_at:
            update["approved"] = interrupt({"question": "continue?"})
        return update

    builder = StateGraph(State)
    builder.add_node("work", work)
    builder.add_edge(START, "work")
    builder.add_conditional_edges("work", lambda s: "work" if s["step"] < steps else END, ["work", END])
    return builder.compile(checkpointer=saver)


async def _counts(saver: PoolSaver, thread_id: str) -> dict[str, int]:
    counts = {}
    async with saver.conn.connection() as conn:
        for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes"):
            cur = await conn.execute(f"SELECT count(*) AS n FROM {table} WHERE thread_id = %s", (thread_id,))
            row = await cur.fetchone()
            counts[table] = row["n"] if row else 0
    return counts


async def test_keep_last_keeps_resume_and_time_travel(saver: PoolSaver) -> None:
    config = {"configurable": {"thread_id": "long"}}
    graph = build(saver, steps=10)
    await graph.ainvoke({"step": 0, "log": [], "approved": ""}, config)
    before = await _counts(saver, "long")
    result = await prune_thread(saver.conn, "long", keep_last=3)
    after = await _counts(saver, "long")
    assert result.checkpoints_deleted == before["checkpoints"] - 3 and after["checkpoints"] == 3
    assert 0 < after["checkpoint_blobs"] < before["checkpoint_blobs"]
    assert result.blobs_deleted == before["checkpoint_blobs"] - after["checkpoint_blobs"]

    history = [s async for s in graph.aget_state_history(config)]
    assert [s.metadata["step"] for s in history] == [10, 9, 8]
    assert history[-1].parent_config is None  # its parent was pruned: no dangling link
    for snapshot in history:  # every kept checkpoint still loads whole (its blobs were kept)
        assert len(snapshot.values["log"]) == snapshot.values["step"]

    # Time travel: fork from the oldest kept checkpoint and run on.
    forked = await build(saver, steps=12).ainvoke(None, history[-1].config)
    assert forked["step"] == 12 and len(forked["log"]) == 12
    # Resume the head with a longer run.
    resumed = await build(saver, steps=14).ainvoke({"step": 12}, config)
    assert resumed["step"] == 14


async def test_older_than_keeps_the_newest_and_pending_interrupt(saver: PoolSaver) -> None:
    config = {"configurable": {"thread_id": "waiting"}}
    graph = build(saver, steps=6, ask_at=4)
    await graph.ainvoke({"step": 0, "log": [], "approved": ""}, config)
    assert (await graph.aget_state(config)).interrupts  # paused, waiting for a human
    result = await prune_thread(
        saver.conn, "waiting", older_than=timedelta(minutes=30), now=datetime.now(UTC) + timedelta(hours=1)
    )
    assert result.checkpoints_kept == 1
    state = await graph.aget_state(config)
    assert state.interrupts and state.interrupts[0].value == {"question": "continue?"}
    final = await graph.ainvoke(Command(resume="yes"), config)
    assert final["approved"] == "yes" and final["step"] == 6


async def test_recent_checkpoints_survive_an_age_rule(saver: PoolSaver) -> None:
    config = {"configurable": {"thread_id": "fresh"}}
    await build(saver, steps=3).ainvoke({"step": 0, "log": [], "approved": ""}, config)
    result = await prune_thread(saver.conn, "fresh", older_than=timedelta(days=7))
    assert result.checkpoints_deleted == 0


async def test_delete_thread_and_list(saver: PoolSaver) -> None:
    for thread in ("a", "b"):
        await build(saver, steps=2).ainvoke(
            {"step": 0, "log": [], "approved": ""}, {"configurable": {"thread_id": thread}}
        )
    assert {t.thread_id for t in await list_threads(saver.conn)} == {"a", "b"}
    assert await delete_thread(saver.conn, "a") == 4
    assert await _counts(saver, "a") == {"checkpoints": 0, "checkpoint_blobs": 0, "checkpoint_writes": 0}
    assert [t.thread_id for t in await list_threads(saver.conn)] == ["b"]


async def test_bad_rules_are_explained(saver: PoolSaver) -> None:
    with pytest.raises(ConfigError, match="needs a rule"):
        await prune_thread(saver.conn, "x")
    with pytest.raises(ConfigError, match="at least 1"):
        await prune_thread(saver.conn, "x", keep_last=0)


def test_parse_duration() -> None:
    assert parse_duration("90m") == timedelta(minutes=90)
    assert parse_duration("1d12h") == timedelta(days=1, hours=12)
    assert parse_duration("2w") == timedelta(weeks=2)
    for bad in ("", "7", "3x", "d7", "1d 2"):
        with pytest.raises(ConfigError, match="as a duration"):
            parse_duration(bad)


async def test_an_old_format_checkpoint_kept_keeps_the_parent_its_sends_live_in(saver: PoolSaver) -> None:
    """Before format 4 a checkpoint's pending Sends were its parent's writes: pruning that parent lost them."""
    from langgraph.checkpoint.base import empty_checkpoint
    from langgraph.checkpoint.serde.types import TASKS
    from langgraph.types import Send

    config = {"configurable": {"thread_id": "old", "checkpoint_ns": ""}}
    for step in range(3):  # three old checkpoints, each with a Send in its writes
        checkpoint = {**empty_checkpoint(), "v": 3, "channel_versions": {"a": f"{step + 1:032}.1"}}
        config = await saver.aput(config, checkpoint, {"step": step}, {})
        await saver.aput_writes(config, [(TASKS, Send("node", {"step": step}))], "t1")
    head = await saver.aget_tuple({"configurable": {"thread_id": "old", "checkpoint_ns": ""}})
    assert head is not None and head.checkpoint["channel_values"][TASKS] == [Send("node", {"step": 1})]

    result = await prune_thread(saver.conn, "old", keep_last=1)
    assert (result.checkpoints_deleted, result.checkpoints_kept) == (1, 2)  # the head and the parent it reads
    after = await saver.aget_tuple({"configurable": {"thread_id": "old", "checkpoint_ns": ""}})
    assert after is not None and after.checkpoint == head.checkpoint and after.parent_config == head.parent_config
