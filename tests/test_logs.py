"""Logs as JSON lines joined to their run (run, thread and trace ids) and never holding secrets or personal
data, whichever library wrote the message; the human format stays the message alone."""

from __future__ import annotations

import io
import json
import logging
import operator
import uuid
from collections.abc import Callable, Iterator
from typing import Annotated

import pytest
from langgraph.graph import START, StateGraph
from typing_extensions import TypedDict

from agentstack.observability._logs import configure_logging
from agentstack.observability._observe import Observability
from agentstack.observability._tracing import Tracing


class State(TypedDict):
    steps: Annotated[list[str], operator.add]


@pytest.fixture
def logged() -> Iterator[Callable[[str], io.StringIO]]:
    """`logged(format)`: logging configured as the CLI does, into a string; put back as it was after."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)

    def install(log_format: str) -> io.StringIO:
        stream = io.StringIO()
        handler = configure_logging(log_format)  # type: ignore[arg-type]
        handler.setStream(stream)  # type: ignore[attr-defined]
        return stream

    try:
        yield install
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


async def test_a_json_line_names_its_run_thread_and_trace_and_holds_no_secret(
    logged: Callable[[str], io.StringIO],
) -> None:
    stream = logged("json")
    secret = "ask_0123456789ab_" + "x" * 43

    def talk(state: State) -> dict[str, list[str]]:
        logging.getLogger("some.library").warning("retrying for ana@example.com with key %s", secret)
        return {"steps": ["done"]}

    graph = StateGraph(State)
    graph.add_node("talk", talk)
    graph.add_edge(START, "talk")
    run_id = str(uuid.uuid4())
    config = {"configurable": {"thread_id": "thread-7", "run_id": run_id}, "metadata": {}}
    observing = Observability(Tracing.create([]))
    config["callbacks"] = observing.run_callbacks(config, graph="g", run_id=run_id, thread_id="thread-7")
    await graph.compile().ainvoke({"steps": []}, config)
    logging.getLogger("agentstack.x").info("outside any run")
    observing.close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    inside = next(line for line in lines if line["logger"] == "some.library")  # other INFO lines may come first
    outside = next(line for line in lines if line["logger"] == "agentstack.x")
    assert inside["level"] == "warning" and inside["logger"] == "some.library"
    assert inside["message"] == "retrying for [EMAIL] with key [API_KEY]"
    assert inside["run_id"] == run_id and inside["thread_id"] == "thread-7"
    assert inside["trace_id"] == uuid.UUID(run_id).hex  # the run's trace
    assert secret not in stream.getvalue() and "ana@example.com" not in stream.getvalue()
    assert outside["message"] == "outside any run" and "run_id" not in outside
    assert outside["time"].endswith("Z")


def test_the_human_format_is_the_message_alone_from_warnings_up_and_redacted(
    logged: Callable[[str], io.StringIO],
) -> None:
    stream = logged("human")
    logging.getLogger("agentstack.y").info("not shown")
    logging.getLogger("agentstack.y").warning("card 4111 1111 1111 1111 declined")
    assert stream.getvalue() == "card [CREDIT_CARD] declined\n"
