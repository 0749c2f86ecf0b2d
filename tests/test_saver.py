"""PoolSaver beyond conformance: concurrency, group commit, setup races, strict loading."""

from __future__ import annotations

import asyncio
import dataclasses
import operator
import re
import subprocess
import sys
from typing import Annotated, Any, TypedDict

import psycopg
import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.graph import END, START, StateGraph

from agentstack.checkpoint import PoolSaver, StrictSerializer, open_pool, open_saver
from agentstack.errors import CheckpointError, UnsafeCheckpointError


@dataclasses.dataclass
class Finding:
    claim: str
    score: float


class State(TypedDict):
    step: int
    notes: Annotated[list[Any], operator.add]


def build(saver: Any, steps: int = 5, note: Any = None) -> Any:
    def work(state: State) -> dict[str, Any]:
        return {"step": state["step"] + 1, "notes": [note if note is not None else f"n{state['step']}"]}

    builder = StateGraph(State)
    builder.add_node("work", work)
    builder.add_edge(START, "work")
    builder.add_conditional_edges("work", lambda s: "work" if s["step"] < steps else END, ["work", END])
    return builder.compile(checkpointer=saver)


async def test_many_concurrent_threads_all_checkpoint_correctly(saver: PoolSaver) -> None:
    graph = build(saver)
    configs = [{"configurable": {"thread_id": f"t{i}"}} for i in range(40)]
    results = await asyncio.gather(*(graph.ainvoke({"step": 0, "notes": []}, c) for c in configs))
    assert all(r["step"] == 5 and len(r["notes"]) == 5 for r in results)
    for config in configs:
        history = [s async for s in graph.aget_state_history(config)]
        assert [s.metadata["step"] for s in history] == [5, 4, 3, 2, 1, 0, -1]


async def test_checkpoints_are_interchangeable_with_the_stock_saver(saver: PoolSaver, agentstack_postgres: str) -> None:
    config = {"configurable": {"thread_id": "shared"}}
    await build(saver, steps=3).ainvoke({"step": 0, "notes": []}, config)
    async with AsyncPostgresSaver.from_conn_string(agentstack_postgres) as stock:
        stock.serde = StrictSerializer()
        state = await build(stock, steps=6).aget_state(config)
        assert state.values == {"step": 3, "notes": ["n0", "n1", "n2"]}
        await build(stock, steps=6).ainvoke({"step": 3, "notes": []}, config)  # stock continues the thread
    state = await build(saver, steps=6).aget_state(config)
    assert state.values["step"] == 6 and len(state.values["notes"]) == 6


async def test_same_row_written_twice_keeps_the_later_value(saver: PoolSaver) -> None:
    config = {"configurable": {"thread_id": "w", "checkpoint_ns": "", "checkpoint_id": "c1"}}
    # Special channels upsert; two writes to the same row must not share a statement.
    await asyncio.gather(
        saver.aput_writes(config, [("__error__", "first")], task_id="t"),
        saver.aput_writes(config, [("__error__", "second")], task_id="t"),
    )
    async with saver.conn.connection() as conn:
        rows = await (await conn.execute("SELECT type, blob FROM checkpoint_writes WHERE thread_id = 'w'")).fetchall()
    assert len(rows) == 1
    assert saver.serde.loads_typed((rows[0]["type"], rows[0]["blob"])) == "second"


async def test_a_failed_batch_fails_its_callers_and_writes_nothing(saver: PoolSaver) -> None:
    async with saver.conn.connection() as conn:
        await conn.execute("ALTER TABLE checkpoint_writes ADD CONSTRAINT no_bad CHECK (channel <> 'bad')")
    config = {"configurable": {"thread_id": "f", "checkpoint_ns": "", "checkpoint_id": "c1"}}
    outcomes = await asyncio.gather(
        saver.aput_writes(config, [("good", 1)], task_id="t1"),
        saver.aput_writes(config, [("bad", 2)], task_id="t2"),
        return_exceptions=True,
    )
    # Failures reach callers as agentstack errors, with Postgres's own error as the cause.
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert failed and all(isinstance(o, CheckpointError) for o in failed), outcomes
    assert any(isinstance(o.__cause__, psycopg.errors.CheckViolation) for o in failed)
    assert "no_bad" in str(failed[0]) and "Postgres at" in str(failed[0])
    async with saver.conn.connection() as conn:
        count = await (await conn.execute("SELECT count(*) AS n FROM checkpoint_writes")).fetchone()
    # Whatever shared the failing statement failed with it; nothing half-applied.
    assert count is not None
    assert count["n"] == sum(1 for o in outcomes if o is None)


@pytest.mark.slow
async def test_a_commit_observer_that_fails_fails_no_write(saver: PoolSaver) -> None:
    """`report_commits` is for metrics: its fault is logged, the committed writes stand and their callers return."""
    seen: list[int] = []

    def observe(seconds: float, operations: int) -> None:
        seen.append(operations)
        raise RuntimeError("the metrics backend broke")

    saver.report_commits(observe)
    result = await build(saver, steps=2).ainvoke({"step": 0, "notes": []}, {"configurable": {"thread_id": "o"}})
    assert result["step"] == 2 and seen  # every commit was observed, and none failed for it
    state = await build(saver, steps=2).aget_state({"configurable": {"thread_id": "o"}})
    assert state.values["notes"] == ["n0", "n1"]


def test_setup_from_many_processes_at_once(agentstack_postgres: str) -> None:
    code = (
        "import asyncio, sys\n"
        "from agentstack.checkpoint import open_saver\n"
        "async def main():\n"
        "    async with open_saver(sys.argv[1], pool_size=1):\n"
        "        pass\n"
        "asyncio.run(main())\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, agentstack_postgres], stderr=subprocess.PIPE) for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    with psycopg.connect(agentstack_postgres) as conn:
        versions = [r[0] for r in conn.execute("SELECT v FROM checkpoint_migrations ORDER BY v")]
    assert versions == list(range(len(AsyncPostgresSaver.MIGRATIONS)))


async def test_unknown_types_are_refused_with_a_clear_error(saver: PoolSaver) -> None:
    config = {"configurable": {"thread_id": "unsafe"}}
    await build(saver, steps=1, note=Finding("x", 0.5)).ainvoke({"step": 0, "notes": []}, config)
    name = f"{Finding.__module__}.Finding"
    with pytest.raises(UnsafeCheckpointError, match=f"{name}, which is not on the deserialization") as info:
        await saver.aget_tuple(config)
    assert f"allowed_types=[{name}]" in str(info.value)


async def test_allowed_types_and_messages_load(agentstack_postgres: str) -> None:
    async with open_saver(agentstack_postgres, allowed_types=[Finding]) as saver:
        config = {"configurable": {"thread_id": "ok"}}
        await build(saver, steps=1, note=Finding("x", 0.5)).ainvoke({"step": 0, "notes": []}, config)
        state = await build(saver, steps=1).aget_state(config)
        assert state.values["notes"] == [Finding("x", 0.5)]
        config = {"configurable": {"thread_id": "messages"}}
        await build(saver, steps=1, note=AIMessage("hi")).ainvoke({"step": 0, "notes": [HumanMessage("q")]}, config)
        notes = (await build(saver, steps=1).aget_state(config)).values["notes"]
        assert [type(n).__name__ for n in notes] == ["HumanMessage", "AIMessage"]


def test_pickle_is_never_loaded() -> None:
    import pickle

    with pytest.raises(UnsafeCheckpointError, match="pickled"):
        StrictSerializer().loads_typed(("pickle", pickle.dumps({"a": 1})))


def test_nested_unsafe_type_inside_a_safe_one_is_refused() -> None:
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    payload = JsonPlusSerializer().dumps_typed({"outer": [AIMessage("ok"), Finding("x", 1.0)]})
    with pytest.raises(UnsafeCheckpointError, match="Finding"):
        StrictSerializer().loads_typed(payload)
    assert StrictSerializer([Finding]).loads_typed(payload)["outer"][1] == Finding("x", 1.0)


async def test_unreachable_postgres_names_the_fix() -> None:
    with pytest.raises(CheckpointError, match=re.escape("Postgres at u@127.0.0.1:1/d failed while connecting")) as info:
        async with open_pool("postgresql://u:secret@127.0.0.1:1/d"):
            pass
    assert "secret" not in str(info.value)
    assert "AGENTSTACK_POSTGRES_URL" in str(info.value)


@pytest.mark.slow
async def test_open_saver_without_url_starts_the_embedded_server(settings: Any) -> None:
    from agentstack.checkpoint import LocalPostgres

    try:
        async with open_saver(settings=settings) as saver:
            result = await build(saver, steps=2).ainvoke({"step": 0, "notes": []}, {"configurable": {"thread_id": "e"}})
            assert result["step"] == 2
        assert LocalPostgres.from_settings(settings).status().running
    finally:
        LocalPostgres.from_settings(settings).destroy()


async def test_open_saver_with_a_url_reads_no_settings(
    agentstack_postgres: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentstack.checkpoint._saver import DEFAULT_POOL_SIZE
    from agentstack.config import Settings
    from agentstack.errors import ConfigError

    monkeypatch.setenv("AGENTSTACK_CHECKPOINT_POOL_SIZE", "many")
    monkeypatch.setenv("AGENTSTACK_POSTGRES_URL", "postgresql://nobody@127.0.0.1:1/nothing")
    with pytest.raises(ConfigError, match="checkpoint_pool_size"):
        Settings.load()  # what reading the environment would have met
    async with open_saver(agentstack_postgres) as saver:
        assert saver.conn.max_size == DEFAULT_POOL_SIZE
        await build(saver, steps=1).ainvoke({"step": 0, "notes": []}, {"configurable": {"thread_id": "u"}})
    async with open_saver(agentstack_postgres, pool_size=3) as saver:
        assert saver.conn.max_size == 3
    with pytest.raises(ConfigError, match="checkpoint_pool_size"):
        async with open_saver():  # no URL: Settings decide, and say what is wrong
            pass


async def test_sync_methods_run_from_another_thread_and_explain_on_the_loop(saver: PoolSaver) -> None:
    from agentstack.errors import UserError

    config = {"configurable": {"thread_id": "sync"}}
    result = await asyncio.to_thread(build(saver, steps=3).invoke, {"step": 0, "notes": []}, config)
    assert result["step"] == 3
    latest = await saver.aget_tuple(config)
    assert await asyncio.to_thread(saver.get_tuple, config) == latest
    assert await asyncio.to_thread(lambda: list(saver.list(config))) == [t async for t in saver.alist(config)]
    with pytest.raises(UserError, match=r"await saver\.aget_tuple"):
        saver.get_tuple(config)
    with pytest.raises(UserError, match=r"await saver\.aput_writes"):
        saver.put_writes(latest.config, [("notes", ["x"])], task_id="t")
    await asyncio.to_thread(saver.delete_thread, "sync")
    assert await saver.aget_tuple(config) is None
