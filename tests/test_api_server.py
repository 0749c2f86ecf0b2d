"""The agent server as LangGraph's own client sees it: `langgraph_sdk` against a real uvicorn server, on a real
Postgres (runs queue and checkpoints), with graphs that ask a human and graphs that take their time."""

from __future__ import annotations

import asyncio
import itertools
import operator
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import interrupt
from langgraph_sdk import get_client
from langgraph_sdk.errors import BadRequestError, ConflictError, NotFoundError, UnprocessableEntityError
from typing_extensions import TypedDict  # pydantic reads its schema on Python 3.11

from agentstack.api._app import app_on
from agentstack.api._runs import RunQueue
from agentstack.api._served import GRAPH_NAMESPACE, ServedGraph, ServedGraphs
from agentstack.checkpoint import PoolSaver, open_pool
from agentstack.testing import ScriptedChatModel
from api_helpers import samples, serving


class State(TypedDict):
    steps: Annotated[list[str], operator.add]


def asking(saver: PoolSaver) -> Any:
    """first -> ask (waits for a human) -> end."""

    def first(state: State) -> dict[str, list[str]]:
        return {"steps": ["first"]}

    def ask(state: State) -> dict[str, list[str]]:
        return {"steps": [f"human said {interrupt('go on?')}"]}

    graph = StateGraph(State)
    graph.add_node("first", first)
    graph.add_node("ask", ask)
    graph.add_edge(START, "first")
    graph.add_edge("first", "ask")
    graph.add_edge("ask", END)
    return graph.compile(checkpointer=saver)


def slow(saver: PoolSaver) -> Any:
    """One step that takes 30 s from an empty state, 0.3 s otherwise."""

    async def wait(state: State) -> dict[str, list[str]]:
        await asyncio.sleep(0.3 if state["steps"] else 30)
        return {"steps": ["slept"]}

    graph = StateGraph(State)
    graph.add_node("wait", wait)
    graph.add_edge(START, "wait")
    graph.add_edge("wait", END)
    return graph.compile(checkpointer=saver)


def chatty(saver: PoolSaver) -> Any:
    """One node that asks a chat model: its reply streams as messages-tuple events."""
    model = ScriptedChatModel.from_script(lambda _messages, _tools: AIMessage(content="hello there", id="reply-1"))

    async def talk(state: State) -> dict[str, list[str]]:
        reply = await model.ainvoke([HumanMessage(content="hi")])
        return {"steps": [str(reply.content)]}

    graph = StateGraph(State)
    graph.add_node("talk", talk)
    graph.add_edge(START, "talk")
    graph.add_edge("talk", END)
    return graph.compile(checkpointer=saver)


def nested(saver: PoolSaver) -> Any:
    """outer -> inner (a subgraph of two steps) -> end."""
    inner = StateGraph(State)
    inner.add_node("one", lambda state: {"steps": ["one"]})
    inner.add_node("two", lambda state: {"steps": ["two"]})
    inner.add_edge(START, "one")
    inner.add_edge("one", "two")
    inner.add_edge("two", END)
    graph = StateGraph(State)
    graph.add_node("outer", lambda state: {"steps": ["outer"]})
    graph.add_node("inner", inner.compile())
    graph.add_edge(START, "outer")
    graph.add_edge("outer", "inner")
    graph.add_edge("inner", END)
    return graph.compile(checkpointer=saver)


@pytest.fixture
async def url(saver: PoolSaver) -> AsyncIterator[str]:
    graphs = ServedGraphs(
        [
            ServedGraph("asking", asking(saver)),
            ServedGraph("slow", slow(saver)),
            ServedGraph("chatty", chatty(saver)),
            ServedGraph("nested", nested(saver)),
        ]
    )
    async with serving(app_on(RunQueue(saver.conn), graphs, workers=2, lease_s=1.0)) as base:
        yield base


async def test_assistants_are_the_served_graphs_under_langgraphs_ids(url: str) -> None:
    client = get_client(url=url)
    found = await client.assistants.search(graph_id="asking")
    assert [a["assistant_id"] for a in found] == [str(uuid.uuid5(GRAPH_NAMESPACE, "asking"))]
    assert (await client.assistants.get(found[0]["assistant_id"]))["graph_id"] == "asking"
    assert await client.assistants.count() == 4
    with pytest.raises(NotFoundError):
        await client.assistants.get(str(uuid.uuid4()))
    with pytest.raises(UnprocessableEntityError, match="no graph is served as assistant 'nope'"):
        await client.assistants.get("nope")  # neither an id nor a graph's (the reference's 422)


@dataclass
class Tone:
    greeting: str = "hello"
    punctuation: str = "."


def greeter(saver: PoolSaver) -> Any:
    """One step that greets in the run's context."""

    def greet(state: State, runtime: Runtime[Tone]) -> dict[str, list[str]]:
        return {"steps": [runtime.context.greeting + runtime.context.punctuation]}

    graph = StateGraph(State, context_schema=Tone)
    graph.add_node("greet", greet)
    graph.add_edge(START, "greet")
    graph.add_edge("greet", END)
    return graph.compile(checkpointer=saver)


async def test_assistants_give_their_runs_defaults_and_keep_their_versions(saver: PoolSaver) -> None:
    app = app_on(RunQueue(saver.conn), ServedGraphs([ServedGraph("greeter", greeter(saver), context=Tone)]))
    async with serving(app) as base:
        client = get_client(url=base)
        loud = await client.assistants.create("greeter", context={"greeting": "HELLO"}, name="loud")
        assert loud["version"] == 1 and loud["context"] == {"greeting": "HELLO"}
        thread = (await client.threads.create())["thread_id"]
        said = await client.runs.wait(thread, loud["assistant_id"], input={"steps": []}, context={"punctuation": "!"})
        assert said == {"steps": ["HELLO!"]}  # the assistant's default, the run's own on top
        with pytest.raises(httpx.HTTPStatusError, match="has no knob volume") as refused:  # the graph's knobs
            await client.runs.wait(thread, loud["assistant_id"], input={"steps": []}, context={"volume": 11})
        assert refused.value.response.status_code == 422

        louder = await client.assistants.update(loud["assistant_id"], context={"greeting": "HEY"}, metadata={"v": 2})
        assert louder["version"] == 2 and louder["metadata"] == {"v": 2}
        versions = await client.assistants.get_versions(loud["assistant_id"])
        assert [v["version"] for v in versions] == [2, 1]
        back = await client.assistants.set_latest(loud["assistant_id"], 1)
        assert back["version"] == 1 and back["context"] == {"greeting": "HELLO"}
        found = await client.assistants.search(graph_id="greeter")
        assert {a["name"] for a in found} == {"greeter", "loud"}  # the system assistant and ours
        assert await client.assistants.count(name="LOUD") == 1

        with pytest.raises(ConflictError):
            await client.assistants.create("greeter", assistant_id=loud["assistant_id"])
        with pytest.raises(NotFoundError, match="graph 'nope' is not served here"):
            await client.assistants.create("nope")
        await client.assistants.delete(loud["assistant_id"], delete_threads=True)
        with pytest.raises(NotFoundError):
            await client.assistants.get(loud["assistant_id"])
        with pytest.raises(NotFoundError):
            await client.threads.get(thread)  # its threads went with it


async def test_a_human_in_the_loop_over_http(url: str) -> None:
    client = get_client(url=url)
    thread = await client.threads.create()
    waiting = await client.runs.wait(thread["thread_id"], "asking", input={"steps": []})
    assert waiting["steps"] == ["first"] and waiting["__interrupt__"][0]["value"] == "go on?"
    shown = await client.threads.get(thread["thread_id"])
    assert shown["status"] == "interrupted" and shown["values"] == {"steps": ["first"]}
    assert [i["value"] for found in shown["interrupts"].values() for i in found] == ["go on?"]
    state = await client.threads.get_state(thread["thread_id"])
    assert state["next"] == ["ask"] and state["checkpoint"]["thread_id"] == thread["thread_id"]
    done = await client.runs.wait(thread["thread_id"], "asking", command={"resume": "yes"})
    assert done == {"steps": ["first", "human said yes"]}
    assert (await client.threads.get(thread["thread_id"]))["status"] == "idle"
    runs = await client.runs.list(thread["thread_id"])
    assert [r["status"] for r in runs] == ["success", "success"]


async def test_a_stream_sends_metadata_first_and_rejoins_after_the_last_event_id(url: str) -> None:
    client = get_client(url=url)
    thread = await client.threads.create()
    parts = [p async for p in client.runs.stream(thread["thread_id"], "asking", input={"steps": []})]
    assert parts[0].event == "metadata" and parts[0].id == "1"
    assert [p.event for p in parts[1:]] == ["values"] * (len(parts) - 1)
    assert parts[-1].data["__interrupt__"][0]["value"] == "go on?"
    run_id = parts[0].data["run_id"]
    rejoined = [p async for p in client.runs.join_stream(thread["thread_id"], run_id, last_event_id="2")]
    assert [p.id for p in rejoined] == [p.id for p in parts[2:]]  # the rest: no gap, no duplicate
    assert [p.data for p in rejoined] == [p.data for p in parts[2:]]


async def test_reject_refuses_a_second_run_and_cancel_stops_the_first(url: str) -> None:
    client = get_client(url=url)
    thread = await client.threads.create()
    first = await client.runs.create(thread["thread_id"], "slow", input={"steps": []})
    with pytest.raises(ConflictError, match="already running a task"):
        await client.runs.create(thread["thread_id"], "slow", input={"steps": []}, multitask_strategy="reject")
    await running(client, thread["thread_id"], first["run_id"])
    await client.runs.cancel(thread["thread_id"], first["run_id"])
    await client.runs.join(thread["thread_id"], first["run_id"])
    assert (await client.runs.get(thread["thread_id"], first["run_id"]))["status"] == "interrupted"


async def test_what_this_server_does_not_serve_is_refused_by_name(url: str) -> None:
    client = get_client(url=url)
    thread = await client.threads.create()
    with pytest.raises(UnprocessableEntityError, match="webhook"):
        await client.runs.create(thread["thread_id"], "asking", input={"steps": []}, webhook="http://example.invalid")
    with pytest.raises(UnprocessableEntityError, match="no graph is served as assistant 'nope'"):
        await client.runs.create(thread["thread_id"], "nope", input={})
    with pytest.raises(NotFoundError, match="there is no thread"):
        await client.runs.create(str(uuid.uuid4()), "asking", input={"steps": []})


async def test_a_database_that_goes_away_is_a_503_naming_it_not_a_traceback(agentstack_postgres_server: Any) -> None:
    url = agentstack_postgres_server.create_database()
    async with open_pool(url, max_size=4, acquire_timeout=3) as pool:
        app = app_on(RunQueue(pool), ServedGraphs([]), workers=0)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client,
        ):
            thread = (await client.post("/threads", json={})).json()
            agentstack_postgres_server.drop_database(url)  # the server ends every connection to it
            gone = await client.get(f"/threads/{thread['thread_id']}")
    assert gone.status_code == 503 and "the agent server's database failed" in gone.json()["detail"]


async def test_threads_are_searched_patched_updated_walked_back_and_deleted(url: str) -> None:
    client = get_client(url=url)
    mine = await client.threads.create(metadata={"user": "ana", "team": "a"})
    await client.threads.create(metadata={"user": "bo"})
    found = await client.threads.search(metadata={"user": "ana"})
    assert [t["thread_id"] for t in found] == [mine["thread_id"]]
    assert await client.threads.count(metadata={"user": "bo"}) == 1
    patched = await client.threads.update(mine["thread_id"], metadata={"team": "b"})
    assert patched["metadata"] == {"user": "ana", "team": "b"}  # a shallow merge
    await client.runs.wait(mine["thread_id"], "asking", input={"steps": []})
    history = await client.threads.get_history(mine["thread_id"], limit=10)
    assert [h["next"] for h in history][:3] == [["ask"], ["first"], ["__start__"]]  # newest first
    assert history[0]["interrupts"][0]["value"] == "go on?"
    await client.threads.update_state(mine["thread_id"], {"steps": ["edited"]}, as_node="ask")
    state = await client.threads.get_state(mine["thread_id"])
    assert state["values"]["steps"] == ["first", "edited"] and state["next"] == []
    await client.threads.delete(mine["thread_id"])
    with pytest.raises(NotFoundError):
        await client.threads.get(mine["thread_id"])
    # a number JSON allows and Postgres keeps, beyond what orjson writes (found by the fuzz test)
    async with httpx.AsyncClient(base_url=url) as http:
        made = await http.post("/threads", content=b'{"metadata": {"big": 18446744073709551616}}')
        assert made.status_code == 200 and made.json()["metadata"]["big"] == pytest.approx(2.0**64)
        assert (await http.post("/threads/search", json={})).status_code == 200


async def test_a_run_from_an_earlier_checkpoint_replays_or_forks_the_thread_there(url: str) -> None:
    client = get_client(url=url)
    thread_id = (await client.threads.create())["thread_id"]
    await client.runs.wait(thread_id, "asking", input={"steps": []})
    before_first = (await client.threads.get_history(thread_id))[1]
    assert before_first["next"] == ["first"] and before_first["values"] == {"steps": []}
    at = before_first["checkpoint"]["checkpoint_id"]
    # a replay: "first" runs again from there, not on top of the thread's latest state
    replayed: Any = await client.runs.wait(thread_id, "asking", checkpoint_id=at)
    assert replayed["steps"] == ["first"] and replayed["__interrupt__"][0]["value"] == "go on?"
    history = await client.threads.get_history(thread_id, limit=20)
    assert history[1]["parent_checkpoint"]["checkpoint_id"] == at  # the new branch grows from it
    # a fork: the same checkpoint with a state update of its own (the command's), then on from there
    forked: Any = await client.runs.wait(
        thread_id, "asking", checkpoint={"checkpoint_id": at}, command={"update": {"steps": ["mine"]}}
    )
    assert forked["steps"] == ["mine", "first"]
    with pytest.raises(httpx.HTTPStatusError, match="404 Not Found") as missing:  # runs.wait raises httpx's
        await client.runs.wait(thread_id, "asking", checkpoint_id="1f000000-0000-6000-8000-000000000000")
    assert "has no checkpoint" in missing.value.response.text
    with pytest.raises(BadRequestError, match="needs its thread"):
        await client.runs.create(None, "asking", input={"steps": []}, checkpoint_id=at)


async def test_deleting_a_run_takes_its_steps_and_its_events(url: str) -> None:
    client = get_client(url=url)
    thread_id = (await client.threads.create())["thread_id"]
    first = await client.runs.create(thread_id, "asking", input={"steps": []})
    await client.runs.join(thread_id, first["run_id"])
    second = await client.runs.create(thread_id, "asking", command={"resume": "yes"})
    await client.runs.join(thread_id, second["run_id"])
    assert (await client.threads.get_state(thread_id))["values"]["steps"] == ["first", "human said yes"]
    await client.runs.delete(thread_id, second["run_id"])
    with pytest.raises(NotFoundError):
        await client.runs.get(thread_id, second["run_id"])
    state = await client.threads.get_state(thread_id)  # back to where the second run began: waiting
    assert state["values"]["steps"] == ["first"] and state["next"] == ["ask"]
    assert (await client.threads.get(thread_id))["status"] == "interrupted"
    assert [r["run_id"] for r in await client.runs.list(thread_id)] == [first["run_id"]]
    # what the deleted run's resume wrote went with it: the waiting step runs again, on the new answer
    again: Any = await client.runs.wait(thread_id, "asking", command={"resume": "no"})
    assert again["steps"] == ["first", "human said no"]
    slow_thread = (await client.threads.create())["thread_id"]
    running = await client.runs.create(slow_thread, "slow", input={"steps": []})
    with pytest.raises(ConflictError, match="deleting one of its runs"):
        await client.runs.delete(slow_thread, running["run_id"])
    await client.runs.cancel(slow_thread, running["run_id"], wait=True)


async def test_an_assistant_shows_its_graph_and_schemas(url: str) -> None:
    client = get_client(url=url)
    drawn = await client.assistants.get_graph("asking")
    assert {n["id"] for n in drawn["nodes"]} == {"__start__", "first", "ask", "__end__"}
    assert {"source": "first", "target": "ask"} in drawn["edges"]
    schemas = await client.assistants.get_schemas(str(uuid.uuid5(GRAPH_NAMESPACE, "asking")))
    assert schemas["graph_id"] == "asking" and "steps" in schemas["input_schema"]["properties"]


async def test_a_stateless_run_answers_and_leaves_no_thread_behind(url: str) -> None:
    client = get_client(url=url)
    waited = await client.runs.wait(None, "asking", input={"steps": []})
    assert waited["steps"] == ["first"] and waited["__interrupt__"][0]["value"] == "go on?"
    parts = [p async for p in client.runs.stream(None, "asking", input={"steps": []})]
    assert parts[0].event == "metadata" and parts[-1].data["__interrupt__"][0]["value"] == "go on?"
    background = await client.runs.create(None, "asking", input={"steps": []})
    batch = await client.runs.create_batch([{"assistant_id": "asking", "input": {"steps": []}}] * 2)
    assert background["status"] == "pending" and len({r["thread_id"] for r in batch}) == 2
    with pytest.raises(UnprocessableEntityError, match="no graph is served as assistant 'nope'"):  # all or none
        await client.runs.create_batch([{"assistant_id": "asking", "input": {}}, {"assistant_id": "nope"}])
    for _ in range(100):  # deleted in the background once each run has ended
        if await client.threads.count() == 0:
            break
        await asyncio.sleep(0.1)
    assert await client.threads.count() == 0  # the temporary threads were deleted once their runs ended
    with pytest.raises(Exception, match="resuming needs a thread"):
        await client.runs.wait(None, "asking", command={"resume": "yes"})


async def test_a_models_reply_streams_as_messages_tuple_events_whole(url: str) -> None:
    client = get_client(url=url)
    thread = await client.threads.create()
    parts = [
        p
        async for p in client.runs.stream(
            thread["thread_id"], "chatty", input={"steps": []}, stream_mode="messages-tuple"
        )
    ]
    messages = [p.data for p in parts if p.event == "messages"]
    assert messages and all(len(m) == 2 for m in messages)  # [message chunk, metadata]
    text = "".join(m[0]["content"] for m in messages)
    assert text == "hello there" and messages[0][0]["id"] == "reply-1" and messages[0][1]["langgraph_node"] == "talk"
    # the older mode: the metadata once, then the message as it grew, its id and node kept
    parts = [
        p async for p in client.runs.stream(thread["thread_id"], "chatty", input={"steps": []}, stream_mode="messages")
    ]
    events = [p.event for p in parts if p.event.startswith("messages")]
    assert events[0] == "messages/metadata" and set(events[1:]) == {"messages/partial"} and len(events) > 2
    assert parts[1].data["reply-1"]["metadata"]["langgraph_node"] == "talk"
    grown = [p.data[0]["content"] for p in parts if p.event == "messages/partial"]
    assert grown[-1] == "hello there" and all(b.startswith(a) for a, b in itertools.pairwise(grown))
    assert all(
        p.data[0]["type"] == "ai" and p.data[0]["id"] == "reply-1" for p in parts if p.event == "messages/partial"
    )
    with pytest.raises(UnprocessableEntityError, match="stream_mode tokens is not served"):
        await client.runs.create(thread["thread_id"], "chatty", input={"steps": []}, stream_mode="tokens")


async def test_subgraph_events_stream_under_their_namespace_and_rejoin_with_the_rest(url: str) -> None:
    """Upstream's rejoin drops subgraph events (langgraph#7778); here they are stored like the others."""
    client = get_client(url=url)
    thread = await client.threads.create()
    parts = [
        p
        async for p in client.runs.stream(
            thread["thread_id"], "nested", input={"steps": []}, stream_mode="updates", stream_subgraphs=True
        )
    ]
    names = [p.event for p in parts]
    inner = [n for n in names if n.startswith("updates|inner:")]
    assert len(inner) == 2 and names.index(inner[0]) > names.index("updates")  # one, two, under the parent node
    run_id = parts[0].data["run_id"]
    rejoined = [p async for p in client.runs.join_stream(thread["thread_id"], run_id, last_event_id="2")]
    assert [p.event for p in rejoined] == names[2:]


async def running(client: Any, thread_id: str, run_id: str) -> None:
    while (await client.runs.get(thread_id, run_id))["status"] == "pending":  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # a client sees the run start only by asking


async def test_each_multitask_strategy_with_two_clients_on_one_thread(url: str) -> None:
    alice, bob = get_client(url=url), get_client(url=url)
    thread = (await alice.threads.create())["thread_id"]
    # enqueue: bob's run waits for alice's and sees what it wrote
    first = await alice.runs.create(thread, "slow", input={"steps": ["a"]})
    second = await bob.runs.create(thread, "slow", input={"steps": ["b"]}, multitask_strategy="enqueue")
    assert await bob.runs.join(thread, second["run_id"]) == {"steps": ["a", "slept", "b", "slept"]}
    assert (await alice.runs.get(thread, first["run_id"]))["status"] == "success"
    # interrupt: alice's long run (on a fresh thread: the state is empty) stops where it is, bob's runs
    thread = (await alice.threads.create())["thread_id"]
    long = await alice.runs.create(thread, "slow", input={"steps": []})
    await running(alice, thread, long["run_id"])
    cutting = await bob.runs.create(thread, "slow", input={"steps": ["c"]}, multitask_strategy="interrupt")
    assert await bob.runs.join(thread, cutting["run_id"]) == {"steps": ["c", "slept"]}
    assert (await alice.runs.get(thread, long["run_id"]))["status"] == "interrupted"
    assert long["run_id"] in await saved_by(alice, thread)  # what the interrupted run saved is kept
    # rollback: alice's long run is cancelled and deleted, with what it saved
    thread = (await alice.threads.create())["thread_id"]
    doomed = await alice.runs.create(thread, "slow", input={"steps": []})
    await running(alice, thread, doomed["run_id"])
    redo = await bob.runs.create(thread, "slow", input={"steps": ["d"]}, multitask_strategy="rollback")
    assert await bob.runs.join(thread, redo["run_id"]) == {"steps": ["d", "slept"]}
    with pytest.raises(NotFoundError):
        await alice.runs.get(thread, doomed["run_id"])
    assert doomed["run_id"] not in await saved_by(alice, thread)
    assert redo["run_id"] in await saved_by(alice, thread)


async def saved_by(client: Any, thread_id: str) -> set[str]:
    """The runs that saved the thread's checkpoints."""
    return {s["metadata"].get("run_id") for s in await client.threads.get_history(thread_id, limit=100)}


async def test_metrics_report_the_queue_from_postgres(url: str) -> None:
    client = get_client(url=url)
    thread = await client.threads.create()
    await client.runs.wait(thread["thread_id"], "asking", input={"steps": []})
    async with httpx.AsyncClient(base_url=url) as http:
        scraped = await http.get("/metrics")
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    found = samples(scraped.text)
    assert found[("agentstack_api_runs", (("status", "success"),))] >= 1
    assert found[("agentstack_api_threads", (("status", "interrupted"),))] >= 1
    assert found[("agentstack_api_workers", (("state", "alive"),))] == 2
    assert ("agentstack_api_queue_depth", ()) in found and ("agentstack_api_lapsed_leases", ()) in found


async def test_a_thread_started_outside_the_server_is_adopted_with_its_status(url: str, saver: PoolSaver) -> None:
    graph = asking(saver).with_config(metadata={"agentstack_graph": "asking"})  # what `Stack.graph` records
    for thread_id in ("research-cli-1", "research-cli-2"):  # the CLI's ids are not UUIDs
        await graph.ainvoke({"steps": []}, {"configurable": {"thread_id": thread_id}})  # waits for a human
    client = get_client(url=url)
    first = await client.threads.get("research-cli-1")  # by id
    assert first["status"] == "interrupted" and first["values"] == {"steps": ["first"]}
    assert first["metadata"] == {"graph_id": "asking"}
    found = await client.threads.search(metadata={"graph_id": "asking"}, status="interrupted")
    assert {"research-cli-1", "research-cli-2"} <= {t["thread_id"] for t in found}  # by search
    done = await client.runs.wait("research-cli-2", "asking", command={"resume": "yes"})
    assert done == {"steps": ["first", "human said yes"]}
    assert (await client.threads.get("research-cli-2"))["status"] == "idle"


async def test_a_copied_thread_has_the_history_and_goes_its_own_way(url: str) -> None:
    client = get_client(url=url)
    source = await client.threads.create(metadata={"user": "ana"})
    await client.runs.wait(source["thread_id"], "asking", input={"steps": []})  # waits at the interrupt
    copy = await client.threads.copy(source["thread_id"])
    assert copy["thread_id"] != source["thread_id"] and copy["metadata"]["user"] == "ana"  # type: ignore[index]
    assert copy["status"] == "interrupted" and copy["values"] == {"steps": ["first"]}  # type: ignore[index]
    history = await client.threads.get_history(copy["thread_id"], limit=10)  # type: ignore[index]
    assert [h["checkpoint"]["checkpoint_id"] for h in history] == [
        h["checkpoint"]["checkpoint_id"] for h in await client.threads.get_history(source["thread_id"], limit=10)
    ]
    done = await client.runs.wait(copy["thread_id"], "asking", command={"resume": "copy"})  # type: ignore[index]
    assert done == {"steps": ["first", "human said copy"]}
    assert (await client.threads.get(source["thread_id"]))["status"] == "interrupted"  # the source still waits
    with pytest.raises(NotFoundError):
        await client.threads.copy(str(uuid.uuid4()))


async def test_a_client_that_leaves_cancels_its_run_when_it_asked_to(url: str) -> None:
    client = get_client(url=url)
    thread = (await client.threads.create())["thread_id"]
    async for part in client.runs.stream(thread, "slow", input={"steps": []}, on_disconnect="cancel"):
        run_id = part.data["run_id"]
        break  # the client leaves during the 30 s step
    async with asyncio.timeout(30):  # the server notices at its next write (a heartbeat at most 5 s later)
        while (await client.runs.get(thread, run_id))["status"] != "interrupted":  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    kept = client.runs.stream(thread, "slow", input={"steps": []}, stream_mode="values")
    first = await anext(kept)
    await kept.aclose()  # "continue" (the default): the run goes on without its client
    await asyncio.sleep(0.5)
    assert (await client.runs.get(thread, first.data["run_id"]))["status"] == "running"


async def test_an_ended_runs_stream_is_joinable_until_its_events_are_deleted(saver: PoolSaver) -> None:
    app = app_on(RunQueue(saver.conn), ServedGraphs([ServedGraph("slow", slow(saver))]), event_retention_s=1.0)
    async with serving(app) as base:  # events of runs ended over 1 s ago are deleted every 0.1 s
        client = get_client(url=base)
        thread = (await client.threads.create())["thread_id"]
        run = await client.runs.create(thread, "slow", input={"steps": ["x"]})  # a step of 0.3 s
        assert (await client.runs.join(thread, run["run_id"]))["steps"][-1] == "slept"
        events = [p.event async for p in client.runs.join_stream(thread, run["run_id"])]
        assert events[0] == "metadata" and events[-1] == "values"
        await asyncio.sleep(2.0)
        with pytest.raises(httpx.HTTPStatusError, match="its stream events were deleted") as gone:
            await client.runs.join(thread, run["run_id"])  # the SDK's join raises httpx's own error
        assert gone.value.response.status_code == 404
        assert (await client.runs.get(thread, run["run_id"]))["status"] == "success"  # the run stays
