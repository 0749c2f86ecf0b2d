"""`thread_status` reads from the newest checkpoint what `aget_state` reads with the compiled graph.

If a langgraph release moves how a checkpoint says which nodes are due (the `branch:to:NODE` channels,
`versions_seen`, the `__pregel_tasks` of a `Send`, the `__interrupt__` / `__error__` writes), these fail
naming the installed version: `agentstack resume` and `threads show` read the same layout.
"""

from __future__ import annotations

import operator
from importlib.metadata import version
from typing import Annotated, Any, TypedDict

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, Send, interrupt

from agentstack.checkpoint._thread_status import ThreadStatus, thread_status

UPSTREAM = f"langgraph {version('langgraph')}"


class State(TypedDict):
    seen: Annotated[list[str], operator.add]


def build(fail_in: str | None = None) -> StateGraph[State]:
    """a -> b -> (Send to c, twice) -> ask (an interrupt) -> end; `fail_in` raises in that node."""

    def node(name: str) -> Any:
        def run(state: State) -> dict[str, list[str]]:
            if name == fail_in:
                raise RuntimeError(f"{name} broke")
            return {"seen": [name]}

        return run

    def ask(state: State) -> dict[str, list[str]]:
        return {"seen": [str(interrupt("go on?"))]}

    graph = StateGraph(State)
    for name in ("a", "b", "c"):
        graph.add_node(name, node(name))
    graph.add_node("ask", ask)
    graph.add_edge(START, "a")
    graph.add_edge("a", "b")
    graph.add_conditional_edges("b", lambda _s: [Send("c", {"seen": []}), Send("c", {"seen": []})], ["c"])
    graph.add_edge("c", "ask")
    graph.add_edge("ask", END)
    return graph


async def _status_and_truth(compiled: Any, saver: Any, config: dict[str, Any]) -> tuple[ThreadStatus, Any]:
    saved = await saver.aget_tuple(config)
    assert saved is not None
    return thread_status(saved), await compiled.aget_state(config)


@pytest.mark.parametrize("fail_in", ["a", "b", "c"])
async def test_a_run_that_raised_is_failed_before_the_nodes_aget_state_names(fail_in: str) -> None:
    saver = InMemorySaver()
    compiled = build(fail_in).compile(checkpointer=saver)
    config: dict[str, Any] = {"configurable": {"thread_id": "t"}}
    with pytest.raises(RuntimeError):
        await compiled.ainvoke({"seen": []}, config)
    status, truth = await _status_and_truth(compiled, saver, config)
    assert status.next == tuple(sorted(truth.next)), UPSTREAM  # ("c", "c") for the Send fan-out
    assert status.state == "failed" and status.unfinished, UPSTREAM
    assert status.error == f"RuntimeError('{fail_in} broke')"


async def test_a_run_that_stopped_with_nothing_written_is_stopped() -> None:
    """What a SIGKILL leaves: the newest checkpoint with its next nodes due and no write of theirs."""
    saver = InMemorySaver()
    compiled = build().compile(checkpointer=saver, interrupt_before=["b"])
    config: dict[str, Any] = {"configurable": {"thread_id": "t"}}
    await compiled.ainvoke({"seen": []}, config)
    status, truth = await _status_and_truth(compiled, saver, config)
    assert (status.state, status.next, truth.next) == ("stopped", ("b",), ("b",)), UPSTREAM
    assert "stopped mid-way before b after step 1" in status.describe()


async def test_waiting_then_finished() -> None:
    saver = InMemorySaver()
    compiled = build().compile(checkpointer=saver)
    config: dict[str, Any] = {"configurable": {"thread_id": "t"}}
    await compiled.ainvoke({"seen": []}, config)
    status, truth = await _status_and_truth(compiled, saver, config)
    assert status.state == "waiting" and status.next == truth.next == ("ask",), UPSTREAM
    assert status.interrupts == tuple(i.id for i in truth.interrupts), UPSTREAM
    await compiled.ainvoke(Command(resume="yes"), config)
    status, truth = await _status_and_truth(compiled, saver, config)
    assert (status.state, status.next, truth.next) == ("finished", (), ()), UPSTREAM
    assert not status.unfinished and status.describe() == f"finished at step {status.step}"


async def test_the_same_on_postgres(saver: Any) -> None:
    """The strict loader reads back what a failed run wrote (its error) and a fan-out's `Send`s."""
    compiled = build("c").compile(checkpointer=saver)
    config: dict[str, Any] = {"configurable": {"thread_id": "t"}}
    with pytest.raises(RuntimeError):
        await compiled.ainvoke({"seen": []}, config)
    status, truth = await _status_and_truth(compiled, saver, config)
    assert (status.state, status.next) == ("failed", tuple(truth.next)) == ("failed", ("c", "c")), UPSTREAM
