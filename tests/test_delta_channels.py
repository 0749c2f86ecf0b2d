"""DeltaChannel threads: PoolSaver stores snapshots as the stock saver does and rebuilds the same history.

A `DeltaChannel` keeps a value only every `snapshot_frequency` updates (a snapshot blob plus
an inline `true` marker); in between LangGraph replays the channel's writes from
`aget_delta_channel_history`. PoolSaver recognises a snapshot without LangGraph's private
class (`delta_snapshot_type`), and answers the history with its own SQL.
"""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

import psycopg
import pytest
from langgraph.channels import DeltaChannel
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.graph import END, START, StateGraph

from agentstack.checkpoint import PoolSaver, prune_thread
from agentstack.checkpoint._saver import delta_snapshot_type
from agentstack.errors import CheckpointError

STEPS = 8


def extend(state: list[str], writes: list[list[str]]) -> list[str]:
    return state + [item for write in writes for item in write]


class State(TypedDict):
    step: int
    items: Annotated[list[str], DeltaChannel(extend, snapshot_frequency=3)]
    label: str | None


def build(saver: BaseCheckpointSaver) -> Any:
    def work(state: State) -> dict[str, Any]:
        step = state["step"]
        return {"step": step + 1, "items": [f"i{step}"], "label": None if step % 2 else f"even {step}"}

    builder = StateGraph(State)
    builder.add_node("work", work)
    builder.add_edge(START, "work")
    builder.add_conditional_edges("work", lambda s: "work" if s["step"] < STEPS else END, ["work", END])
    return builder.compile(checkpointer=saver)


async def _run(saver: BaseCheckpointSaver, thread_id: str) -> list[dict[str, Any]]:
    config = {"configurable": {"thread_id": thread_id}}
    result = await build(saver).ainvoke({"step": 0, "items": [], "label": None}, config)
    assert result["items"] == [f"i{i}" for i in range(STEPS)]
    return [t.config async for t in saver.alist(config)]


def _storage(url: str, thread_id: str) -> list[tuple[str, str]]:
    """How each checkpoint (oldest first) stores `items`: absent, inline value, marker, blob."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            """SELECT c.checkpoint -> 'channel_values' -> 'items' AS inline,
                      b.type AS blob_type
               FROM checkpoints c LEFT JOIN checkpoint_blobs b
                 ON b.thread_id = c.thread_id AND b.checkpoint_ns = c.checkpoint_ns AND b.channel = 'items'
                AND b.version = c.checkpoint -> 'channel_versions' ->> 'items'
               WHERE c.thread_id = %s ORDER BY c.checkpoint_id""",
            (thread_id,),
        ).fetchall()
    return [(repr(inline), blob_type or "-") for inline, blob_type in rows]


async def test_snapshots_are_stored_and_read_back_as_the_stock_saver_does(
    saver: PoolSaver, agentstack_postgres: str
) -> None:
    await _run(saver, "pool")
    async with AsyncPostgresSaver.from_conn_string(agentstack_postgres) as stock:
        await _run(stock, "stock")
        layout = _storage(agentstack_postgres, "pool")
        assert layout == _storage(agentstack_postgres, "stock")
        assert ("True", "msgpack") in layout, "a snapshot: inline marker and its blob"
        assert ("None", "-") in layout, "a step between snapshots stores no value"
        for thread in ("pool", "stock"):  # either saver rebuilds either thread's state
            config = {"configurable": {"thread_id": thread}}
            ours, theirs = await build(saver).aget_state(config), await build(stock).aget_state(config)
            assert ours.values == theirs.values and ours.values["items"] == [f"i{i}" for i in range(STEPS)]


async def test_delta_history_matches_the_stock_saver_at_every_checkpoint(
    saver: PoolSaver, agentstack_postgres: str
) -> None:
    configs = await _run(saver, "pool")
    channels = ["items", "step", "label", "never_written"]
    async with AsyncPostgresSaver.from_conn_string(agentstack_postgres) as stock:
        configs += await _run(stock, "stock")
        configs += [
            {"configurable": {"thread_id": "pool", "checkpoint_ns": ""}},  # the latest
            {"configurable": {"thread_id": "pool", "checkpoint_ns": "", "checkpoint_id": "no-such-checkpoint"}},
            {"configurable": {"thread_id": "no-such-thread", "checkpoint_ns": ""}},
        ]
        seeded, longest_replay = 0, 0
        for config in configs:
            ours = await saver.aget_delta_channel_history(config=config, channels=channels)
            assert ours == await stock.aget_delta_channel_history(config=config, channels=channels), config
            # and what the base class's walk (one aget_tuple per ancestor) finds. Not for
            # `label`: on an inline None the stock saver walks on and the base class stops.
            walked = await BaseCheckpointSaver.aget_delta_channel_history(saver, config=config, channels=channels)
            assert {k: v for k, v in ours.items() if k != "label"} == {k: v for k, v in walked.items() if k != "label"}
            seeded += "seed" in ours["items"]
            longest_replay = max(longest_replay, len(ours["items"]["writes"]))
        assert seeded > 0 and longest_replay > 1, "snapshots seed the history, and writes replay between them"
    assert await saver.aget_delta_channel_history(config=configs[0], channels=[]) == {}


async def test_delta_threads_are_refused_by_keep_latest(saver: PoolSaver, agentstack_postgres: str) -> None:
    await _run(saver, "delta")
    with pytest.raises(CheckpointError, match="DeltaChannel: delta"):
        await saver.aprune(["delta"], strategy="keep_latest")
    with pytest.raises(CheckpointError, match="DeltaChannel"):
        await prune_thread(saver.conn, "delta", keep_last=1)
    async with AsyncPostgresSaver.from_conn_string(agentstack_postgres) as stock:
        with pytest.raises(NotImplementedError, match="DeltaChannel"):  # the stock saver sees it too
            await stock.aprune(["delta"], strategy="keep_latest")
    await saver.aprune(["delta"], strategy="delete")
    assert [t async for t in saver.alist({"configurable": {"thread_id": "delta"}})] == []


def test_the_snapshot_class_found_through_the_wire_format_is_langgraphs() -> None:
    # A tripwire: reads LangGraph's private name to check the public route to it.
    from langgraph.checkpoint.serde.types import _DeltaSnapshot

    assert delta_snapshot_type() is _DeltaSnapshot
