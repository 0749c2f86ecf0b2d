"""When Postgres fails, callers of the saver, the group committer and retention get a `CheckpointError`.

Each test runs a PostgreSQL server of its own (in `tmp_path`) so that it can stop it. The
error names Postgres and the server's address without the password, says what to do, and
chains psycopg's error; cancellation still arrives as `asyncio.CancelledError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypedDict

import psycopg
import pytest
from langgraph.graph import END, START, StateGraph
from psycopg.conninfo import conninfo_to_dict

from agentstack.checkpoint import (
    LocalPostgres,
    PoolSaver,
    delete_thread,
    list_threads,
    open_pool,
    prune_thread,
)
from agentstack.checkpoint._boundary import redact_url
from agentstack.errors import CheckpointError

pytestmark = pytest.mark.slow


class State(TypedDict):
    step: int
    log: Annotated[list[str], operator.add]


def build(saver: PoolSaver, steps: int) -> Any:
    async def work(state: State) -> dict[str, Any]:
        await asyncio.sleep(0.005)  # a long run, not a CPU-bound one
        return {"step": state["step"] + 1, "log": [f"s{state['step']}"]}

    builder = StateGraph(State)
    builder.add_node("work", work)
    builder.add_edge(START, "work")
    builder.add_conditional_edges("work", lambda s: "work" if s["step"] < steps else END, ["work", END])
    return builder.compile(checkpointer=saver)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[LocalPostgres]:
    postgres = LocalPostgres(tmp_path, server_settings={"fsync": "off"})
    await postgres.astart()
    try:
        yield postgres
    finally:
        await asyncio.to_thread(postgres.destroy)


@pytest.fixture
async def saver(server: LocalPostgres) -> AsyncIterator[PoolSaver]:
    async with open_pool(server.url, max_size=2, min_size=2, acquire_timeout=1) as pool:
        pool_saver = PoolSaver(pool)
        await pool_saver.setup()
        yield pool_saver


def assert_names_postgres(error: CheckpointError, url: str, operation: str = "") -> None:
    assert f"Postgres at {redact_url(url)} failed while" in str(error), operation
    assert conninfo_to_dict(url)["password"] not in str(error), operation
    assert error.fix and isinstance(error.__cause__, psycopg.Error), operation


async def test_every_operation_on_a_stopped_server_is_a_checkpoint_error(
    saver: PoolSaver, server: LocalPostgres
) -> None:
    url = server.url
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    await build(saver, steps=2).ainvoke({"step": 0, "log": []}, config)
    head = await saver.aget_tuple(config)
    assert head is not None
    await server.astop()

    operations: dict[str, Callable[[], Awaitable[Any]]] = {
        "aget_tuple": lambda: saver.aget_tuple(config),
        "alist": lambda: anext(aiter(saver.alist(config))),
        "aput_writes": lambda: saver.aput_writes(head.config, [("log", ["x"])], task_id="task"),
        "ainvoke": lambda: build(saver, steps=3).ainvoke(None, config),
        "adelete_thread": lambda: saver.adelete_thread("t"),
        "aprune": lambda: saver.aprune(["t"]),
        "aget_delta_channel_history": lambda: saver.aget_delta_channel_history(config=config, channels=["log"]),
        "setup": saver.setup,
        "list_threads": lambda: list_threads(saver.conn),
        "delete_thread": lambda: delete_thread(saver.conn, "t"),
        "prune_thread": lambda: prune_thread(saver.conn, "t", keep_last=1),
    }
    for name, operation in operations.items():
        with pytest.raises(CheckpointError) as info:
            await operation()
        assert_names_postgres(info.value, url, name)


async def test_a_server_stopped_mid_run_fails_the_run_with_a_checkpoint_error(
    saver: PoolSaver, server: LocalPostgres
) -> None:
    url = server.url
    config = {"configurable": {"thread_id": "long"}, "recursion_limit": 100_000}
    steps = 0
    with pytest.raises(CheckpointError) as info:
        # durability="sync": each step waits for its checkpoint, so the failed save ends the
        # run at once (by default LangGraph saves in the background and reports at the end)
        async for _ in build(saver, steps=50_000).astream({"step": 0, "log": []}, config, durability="sync"):
            steps += 1
            if steps == 20:  # well into the run, between two of its saves
                await server.astop()
    assert 20 <= steps < 50_000
    assert_names_postgres(info.value, url)


async def test_a_killed_server_is_a_checkpoint_error_too(saver: PoolSaver, server: LocalPostgres) -> None:
    url = server.url
    postmaster = server.status().pid
    assert postmaster is not None
    kill_with_its_children(postmaster)  # as a crash of the machine would: no backend left to answer
    with pytest.raises(CheckpointError) as info:
        await saver.aget_tuple({"configurable": {"thread_id": "t"}})
    assert_names_postgres(info.value, url)


def kill_with_its_children(pid: int) -> None:
    children = [int(stat.parent.name) for stat in Path("/proc").glob("[0-9]*/stat") if _parent_of(stat) == pid]
    for victim in [pid, *children]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


def _parent_of(stat: Path) -> int | None:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


async def test_cancellation_is_not_turned_into_an_error(server: LocalPostgres) -> None:
    config = {"configurable": {"thread_id": "c", "checkpoint_ns": "", "checkpoint_id": "c1"}}
    # A long acquire timeout: the waiting callers must still be waiting when they are cancelled, however slow
    # the machine is; they are cancelled once the pool counts all three as waiting, not after a guessed sleep.
    async with open_pool(server.url, max_size=2, min_size=2, acquire_timeout=60) as pool:
        saver = PoolSaver(pool)
        await saver.setup()
        async with pool.connection(), pool.connection():  # every connection busy: callers wait
            waiting = [
                asyncio.create_task(saver.aget_tuple(config)),
                asyncio.create_task(saver.aput_writes(config, [("log", ["x"])], task_id="task")),
                asyncio.create_task(list_threads(pool)),
            ]
            deadline = asyncio.get_running_loop().time() + 30
            while pool.get_stats().get("requests_waiting", 0) < len(waiting):
                assert asyncio.get_running_loop().time() < deadline, pool.get_stats()
                await asyncio.sleep(0.01)
            assert not any(task.done() for task in waiting)
            for task in waiting:
                task.cancel()
            outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(o, asyncio.CancelledError) for o in outcomes), outcomes
        await saver.drain()
        assert await saver.aget_tuple(config) is None  # and the saver still works


def test_each_kind_of_failure_gets_its_fix_and_cancellation_passes() -> None:
    from agentstack.checkpoint._boundary import postgres_errors

    url = "postgresql://me:secret@db.example:5433/agents"
    cases = {
        psycopg.errors.SerializationFailure("could not serialize access"): "retrying is safe",
        psycopg.errors.UndefinedTable('relation "checkpoints" does not exist'): "saver.setup()",
        psycopg.OperationalError("connection refused"): "is running and reachable",
        psycopg.errors.CheckViolation("violates check constraint"): "server's log",
    }
    for cause, fix in cases.items():
        with pytest.raises(CheckpointError) as info, postgres_errors(url, doing="testing"):
            raise cause
        assert info.value.__cause__ is cause and fix in (info.value.fix or "")
        assert str(info.value).startswith(f"Postgres at me@db.example:5433/agents failed while testing: {cause}")
        assert "secret" not in str(info.value)
    with pytest.raises(asyncio.CancelledError), postgres_errors(url, doing="testing"):
        raise asyncio.CancelledError


@pytest.mark.parametrize("url", ["postgresql://u:s3cr%zzet@127.0.0.1:9/db", "postgresql://u:s3cr et@127.0.0.1:9/db"])
async def test_a_malformed_url_never_shows_its_password(url: str) -> None:
    """libpq quotes the part of a URL it cannot parse, which can be the password itself."""
    with pytest.raises(CheckpointError) as bad:
        async with open_pool(url, connect_timeout=2):
            pass
    assert "s3cr" not in str(bad.value) and "cannot be parsed" in str(bad.value)


async def test_a_refused_password_is_not_repeated(agentstack_postgres: str) -> None:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    wrong = make_conninfo(agentstack_postgres, password="wr0ng-pa55")
    assert conninfo_to_dict(wrong)["password"] == "wr0ng-pa55"
    with pytest.raises(CheckpointError, match="failed while connecting") as bad:
        async with open_pool(wrong, connect_timeout=2):
            pass
    assert "wr0ng-pa55" not in str(bad.value) and "password" in (bad.value.fix or "")
