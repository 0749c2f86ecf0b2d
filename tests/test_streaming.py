"""Streaming of real LangGraph graphs (InMemorySaver, scripted chat model) as events and as SSE over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import operator
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, TypedDict

import httpx
import pytest
import uvicorn
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.config import get_config, get_stream_writer
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.runtime import get_runtime
from langgraph.types import Command, interrupt
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.routing import Mount

from agentstack._net import free_port
from agentstack.api import sse_app, sse_events
from agentstack.graphs._streaming import StreamEvent, jsonable, stream_run
from agentstack.testing import ScriptedChatModel


class State(TypedDict, total=False):
    messages: Annotated[list, add_messages]
    steps: Annotated[list[str], operator.add]


def _tool_call_reply() -> AIMessage:
    call = {"name": "search", "args": {"q": "x"}, "id": "call_1", "type": "tool_call"}
    return AIMessage(content="", tool_calls=[call], id="scripted-tool")


def simple_graph(checkpointer: Any = None) -> Any:
    """plan (writes progress) -> talk (streams "hello streaming world") -> decide (a tool-call-only reply)."""
    model = ScriptedChatModel.from_script(["hello streaming world", _tool_call_reply()])

    async def plan(state: State) -> State:
        get_stream_writer()({"step": "planning"})
        return {"steps": ["planned"]}

    async def talk(state: State) -> State:
        return {"messages": [await model.ainvoke("hi")]}

    async def decide(state: State) -> State:
        await model.ainvoke("which tool?")
        return {"steps": ["decided"]}

    builder = StateGraph(State)
    builder.add_node("plan", plan)
    builder.add_node("talk", talk)
    builder.add_node("decide", decide)
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "talk")
    builder.add_edge("talk", "decide")
    return builder.compile(checkpointer=checkpointer if checkpointer is not None else InMemorySaver())


def simple_expected(thread_id: str) -> list[tuple[str, str | None, Any]]:
    return [
        ("start", None, {"thread_id": thread_id}),
        ("progress", None, {"step": "planning"}),
        ("update", "plan", {"steps": ["planned"]}),
        ("token", "talk", "hello "),
        ("token", "talk", "streaming "),
        ("token", "talk", "world"),
        ("update", "talk", {"messages": [{"type": "ai", "content": "hello streaming world"}]}),
        ("update", "decide", {"steps": ["decided"]}),
        ("end", None, {"thread_id": thread_id, "interrupted": False, "next": []}),
    ]


def ask_graph() -> Any:
    """One node asking a human; its answer goes into `steps`."""

    def ask(state: State) -> State:
        return {"steps": [f"answer:{interrupt({'question': 'approve?'})}"]}

    builder = StateGraph(State)
    builder.add_node("ask", ask)
    builder.add_edge(START, "ask")
    return builder.compile(checkpointer=InMemorySaver())


def two_asks_graph() -> Any:
    """Two parallel nodes that both interrupt in the same step."""

    def ask_a(state: State) -> State:
        return {"steps": [f"a:{interrupt('question a')}"]}

    def ask_b(state: State) -> State:
        return {"steps": [f"b:{interrupt('question b')}"]}

    builder = StateGraph(State)
    builder.add_node("ask_a", ask_a)
    builder.add_node("ask_b", ask_b)
    builder.add_edge(START, "ask_a")
    builder.add_edge(START, "ask_b")
    return builder.compile(checkpointer=InMemorySaver())


def failing_graph() -> Any:
    def plan(state: State) -> State:
        return {"steps": ["planned"]}

    def boom(state: State) -> State:
        raise ValueError("kaboom")

    builder = StateGraph(State)
    builder.add_node("plan", plan)
    builder.add_node("boom", boom)
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "boom")
    return builder.compile(checkpointer=InMemorySaver())


def config(thread_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id}}


async def collect(graph: Any, graph_input: Any, thread_id: str, **kwargs: Any) -> list[StreamEvent]:
    return [event async for event in stream_run(graph, graph_input, config(thread_id), **kwargs)]


def triples(events: list[StreamEvent]) -> list[tuple[str, str | None, Any]]:
    return [(e.kind, e.node, e.data) for e in events]


# -- stream_run ----------------------------------------------------------------------------------------


async def test_updates_progress_and_tokens_arrive_in_order() -> None:
    events = await collect(simple_graph(), {"messages": []}, "t-simple")
    assert triples(events) == simple_expected("t-simple")
    assert all(e.namespace == () for e in events)
    json.dumps([e.to_json() for e in events])  # everything is JSON-able as is


async def test_tokens_false_streams_no_tokens() -> None:
    events = await collect(simple_graph(), {"messages": []}, "t-notokens", tokens=False)
    assert triples(events) == [t for t in simple_expected("t-notokens") if t[0] != "token"]


async def test_tokens_from_a_subgraph_carry_its_namespace() -> None:
    model = ScriptedChatModel.from_script(["hello streaming world"])

    async def talk(state: State) -> State:
        get_stream_writer()({"step": "talking"})
        return {"messages": [await model.ainvoke("hi")]}

    inner = StateGraph(State)
    inner.add_node("talk", talk)
    inner.add_edge(START, "talk")
    outer = StateGraph(State)
    outer.add_node("researcher", inner.compile())
    outer.add_edge(START, "researcher")
    graph = outer.compile(checkpointer=InMemorySaver())

    events = await collect(graph, {"messages": [HumanMessage("go")]}, "t-sub")

    tokens = [e for e in events if e.kind == "token"]
    assert "".join(e.data for e in tokens) == "hello streaming world"
    assert len(tokens) == 3
    for event in tokens:
        assert len(event.namespace) == 1
        assert event.namespace[0].startswith("researcher:")
        assert event.node == "talk"
    [progress] = [e for e in events if e.kind == "progress"]
    assert progress.namespace == tokens[0].namespace
    assert progress.data == {"step": "talking"}
    updates = [(e.namespace == (), e.node) for e in events if e.kind == "update"]
    assert updates == [(False, "talk"), (True, "researcher")]
    assert events[-1].data == {"thread_id": "t-sub", "interrupted": False, "next": []}


async def test_interrupt_then_resume() -> None:
    graph = ask_graph()
    first = await collect(graph, {"steps": []}, "t-ask")

    assert [e.kind for e in first] == ["start", "interrupt", "end"]
    [pending] = first[1].data
    assert pending["value"] == {"question": "approve?"}
    assert isinstance(pending["id"], str) and pending["id"]
    assert first[-1].data == {"thread_id": "t-ask", "interrupted": True, "next": ["ask"]}

    second = await collect(graph, Command(resume="yes"), "t-ask")
    assert triples(second) == [
        ("start", None, {"thread_id": "t-ask"}),
        ("update", "ask", {"steps": ["answer:yes"]}),
        ("end", None, {"thread_id": "t-ask", "interrupted": False, "next": []}),
    ]
    assert (await graph.aget_state(config("t-ask"))).values["steps"] == ["answer:yes"]


async def test_interrupt_inside_a_subgraph_is_reported_once_from_the_root() -> None:
    outer = StateGraph(State)
    outer.add_node("researcher", ask_graph())  # the subgraph's own checkpointer is replaced by the parent's
    outer.add_edge(START, "researcher")
    graph = outer.compile(checkpointer=InMemorySaver())

    events = await collect(graph, {"steps": []}, "t-subask")

    # LangGraph streams the interrupt twice with subgraphs=True (subgraph namespace, then root)
    assert [(e.kind, e.namespace) for e in events] == [("start", ()), ("interrupt", ()), ("end", ())]
    assert events[-1].data == {"thread_id": "t-subask", "interrupted": True, "next": ["researcher"]}
    resumed = await collect(graph, Command(resume="ok"), "t-subask")
    updates = [(e.namespace == (), e.node, e.data["steps"]) for e in resumed if e.kind == "update"]
    assert updates == [(False, "ask", ["answer:ok"]), (True, "researcher", ["answer:ok"])]
    assert resumed[-1].data["interrupted"] is False


async def test_two_interrupts_in_one_step_resumed_together() -> None:
    graph = two_asks_graph()
    first = await collect(graph, {"steps": []}, "t-two")

    pending = [item for e in first if e.kind == "interrupt" for item in e.data]
    assert sorted(p["value"] for p in pending) == ["question a", "question b"]
    assert first[-1].data["interrupted"] is True
    assert sorted(first[-1].data["next"]) == ["ask_a", "ask_b"]

    answers = {p["id"]: p["value"].replace("question ", "answer-") for p in pending}
    second = await collect(graph, Command(resume=answers), "t-two")
    assert sorted((e.node, tuple(e.data["steps"])) for e in second if e.kind == "update") == [
        ("ask_a", ("a:answer-a",)),
        ("ask_b", ("b:answer-b",)),
    ]
    assert second[-1].data == {"thread_id": "t-two", "interrupted": False, "next": []}


async def test_a_failing_graph_raises_from_stream_run() -> None:
    with pytest.raises(ValueError, match="kaboom"):
        await collect(failing_graph(), {"steps": []}, "t-fail")


async def test_a_graph_without_checkpointer_still_ends() -> None:
    builder = StateGraph(State)
    builder.add_node("ask", lambda state: {"steps": [str(interrupt("q"))]})
    builder.add_edge(START, "ask")
    events = await collect(builder.compile(), {"steps": []}, "t-nocp")
    assert [e.kind for e in events] == ["start", "interrupt", "end"]
    assert events[-1].data == {"thread_id": "t-nocp", "interrupted": True, "next": []}


def test_jsonable() -> None:
    class Plan(BaseModel):
        steps: list[str]

    @dataclasses.dataclass
    class Hit:
        doc: str
        score: float

    class Opaque:
        def __str__(self) -> str:
            return "opaque!"

    call = {"name": "search", "args": {"q": "x"}, "id": "c1", "type": "tool_call"}
    value = {
        "human": HumanMessage("hi"),
        "ai": AIMessage(content="", tool_calls=[call]),
        "plan": Plan(steps=["a"]),
        "hit": Hit("d", 0.5),
        "pair": ("a", 1),
        "set": {"only"},
        1: Opaque(),
    }
    assert jsonable(value) == {
        "human": {"type": "human", "content": "hi"},
        "ai": {"type": "ai", "content": "", "tool_calls": [call]},
        "plan": {"steps": ["a"]},
        "hit": {"doc": "d", "score": 0.5},
        "pair": ["a", 1],
        "set": ["only"],
        "1": "opaque!",
    }


async def test_sse_events_sends_keepalives_while_a_node_is_quiet() -> None:
    async def slow(state: State) -> State:
        await asyncio.sleep(0.3)
        return {"steps": ["slow"]}

    builder = StateGraph(State)
    builder.add_node("slow", slow)
    builder.add_edge(START, "slow")
    graph = builder.compile(checkpointer=InMemorySaver())

    chunks = [c async for c in sse_events(stream_run(graph, {"steps": []}, config("t-slow")), heartbeat=0.05)]
    kinds = [c.split(b"\n", 1)[0] for c in chunks]
    assert kinds[0] == b"event: start"
    assert kinds[-2:] == [b"event: update", b"event: end"]
    assert b": keep-alive" in kinds[1:-2]


async def test_closing_sse_events_cancels_the_run() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def stuck(state: State) -> State:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {"steps": ["never"]}

    builder = StateGraph(State)
    builder.add_node("stuck", stuck)
    builder.add_edge(START, "stuck")
    graph = builder.compile(checkpointer=InMemorySaver())

    chunks = sse_events(stream_run(graph, {"steps": []}, config("t-stuck")), heartbeat=None)
    assert (await anext(chunks)).startswith(b"event: start")
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.wait_for(chunks.aclose(), 5)  # what the server does when the client goes away
    await asyncio.wait_for(cancelled.wait(), 5)


# -- SSE over HTTP (real uvicorn where the socket matters) ---------------------------------------------------


@contextlib.asynccontextmanager
async def served(graph: Any, *, real_http: bool = False, **kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
    """`graph`'s sse_app mounted under /research, and a client for it: in-process (ASGI, milliseconds) or, with
    `real_http`, on a real uvicorn server (what a browser meets: headers, streaming over a socket)."""
    app = Starlette(routes=[Mount("/research", app=sse_app(graph, **kwargs))])
    if not real_http:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://agentstack/research") as client:
            yield client
        return
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                assert not task.done(), "uvicorn exited before it started"
                await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/research", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        await task


async def post_events(client: httpx.AsyncClient, body: Any) -> tuple[httpx.Response, list[tuple[str, Any]]]:
    """POST /runs/stream and parse the server-sent events as they arrive."""
    events: list[tuple[str, Any]] = []
    async with client.stream("POST", "/runs/stream", json=body) as response:
        assert response.status_code == 200, await response.aread()
        name, data = None, None
        async for line in response.aiter_lines():
            if line.startswith(":"):
                continue
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
            elif line == "":
                assert name is not None and data is not None
                events.append((name, data))
                name, data = None, None
    return response, events


async def test_sse_streams_the_same_events_as_stream_run() -> None:
    async with served(simple_graph(), real_http=True) as client:
        response, events = await post_events(client, {"input": {"messages": []}})

    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    thread_id = events[0][1]["data"]["thread_id"]
    assert uuid.UUID(hex=thread_id).version == 4 and len(thread_id) == 32  # a generated uuid4, as hex
    assert [(name, d["node"], d["data"]) for name, d in events] == simple_expected(thread_id)
    assert all(name == d["kind"] and d["namespace"] == [] for name, d in events)


async def test_sse_resume_and_thread_state() -> None:
    async with served(ask_graph(), real_http=True) as client:
        _, first = await post_events(client, {"input": {"steps": []}, "thread_id": "web-1"})
        assert [name for name, _ in first] == ["start", "interrupt", "end"]
        assert first[-1][1]["data"] == {"thread_id": "web-1", "interrupted": True, "next": ["ask"]}
        [pending] = first[1][1]["data"]

        waiting = (await client.get("/threads/web-1/state")).json()
        assert waiting["next"] == ["ask"] and waiting["interrupts"] == [pending]
        assert waiting["values"]["steps"] == []

        _, second = await post_events(client, {"thread_id": "web-1", "resume": "yes"})
        assert [(name, d["node"], d["data"]) for name, d in second] == [
            ("start", None, {"thread_id": "web-1"}),
            ("update", "ask", {"steps": ["answer:yes"]}),
            ("end", None, {"thread_id": "web-1", "interrupted": False, "next": []}),
        ]

        done = await client.get("/threads/web-1/state")
        assert done.status_code == 200
        assert done.json()["values"]["steps"] == ["answer:yes"]
        assert (done.json()["next"], done.json()["interrupts"], done.json()["thread_id"]) == ([], [], "web-1")

        again = await client.post("/runs/stream", json={"thread_id": "web-1", "resume": "yes"})
        assert again.status_code == 409
        assert "no interrupt" in again.json()["error"]
        missing = await client.get("/threads/nope/state")
        assert missing.status_code == 404
        assert set(missing.json()) == {"error", "fix"}


async def test_sse_resumes_two_interrupts_with_a_dict() -> None:
    async with served(two_asks_graph()) as client:
        _, first = await post_events(client, {"input": {"steps": []}, "thread_id": "web-2"})
        pending = [item for name, d in first if name == "interrupt" for item in d["data"]]
        assert len(pending) == 2
        answers = {p["id"]: p["value"].upper() for p in pending}
        _, second = await post_events(client, {"thread_id": "web-2", "resume": answers})

    assert second[-1][1]["data"] == {"thread_id": "web-2", "interrupted": False, "next": []}
    assert sorted(d["data"]["steps"][0] for name, d in second if name == "update") == ["a:QUESTION A", "b:QUESTION B"]


async def test_sse_passes_context_and_config_to_the_nodes() -> None:
    def who(state: State) -> State:
        return {"steps": [f"{get_runtime().context['user']}@{get_config()['configurable']['tenant']}"]}

    builder = StateGraph(State)
    builder.add_node("who", who)
    builder.add_edge(START, "who")
    bodies: list[dict] = []

    def context_factory(body: dict) -> dict[str, str]:
        bodies.append(body)
        return {"user": body["input"]["steps"][0]}

    body = {"input": {"steps": ["ada"]}, "config": {"tenant": "acme"}}
    async with served(builder.compile(checkpointer=InMemorySaver()), context_factory=context_factory) as client:
        _, events = await post_events(client, body)

    assert bodies == [body]
    assert [(name, d["data"]) for name, d in events if name == "update"] == [("update", {"steps": ["ada@acme"]})]


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[1, 2]",
        b"{}",
        b'{"input": {"steps": []}, "resume": "yes", "thread_id": "t"}',
        b'{"resume": "yes"}',
        b'{"input": {}, "thread_id": 7}',
        b'{"input": {}, "config": {"__pregel_checkpointer": 1}}',
    ],
)
async def test_sse_rejects_bad_bodies_with_a_fix(content: bytes) -> None:
    async with served(ask_graph()) as client:
        response = await client.post("/runs/stream", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"error", "fix"} and body["error"] and body["fix"]


async def test_sse_reports_a_failing_graph_as_an_error_event() -> None:
    async with served(failing_graph()) as client:
        _, events = await post_events(client, {"input": {"steps": []}, "thread_id": "web-fail"})
        assert [name for name, _ in events] == ["start", "update", "error"]
        assert events[-1][1] == {"error": "ValueError: kaboom"}
        # the server is still fine after the failed run
        state = await client.get("/threads/web-fail/state")
        assert state.status_code == 200 and state.json()["next"] == ["boom"]
