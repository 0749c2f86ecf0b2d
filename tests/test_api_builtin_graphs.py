"""The three built-in graphs behind the agent server, built by their registry entries as `agentstack api` builds
them, on scripted models and an in-memory retriever, called with `langgraph_sdk`: research answers with checked
citations, the team's researcher streams as a subgraph, and the approval agent's two waiting calls are decided
together by one `command.resume`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from langgraph_sdk import get_client

from agentstack.api._app import app_on
from agentstack.api._runs import RunQueue
from agentstack.api._served import ServedGraph, ServedGraphs
from agentstack.checkpoint import PoolSaver
from agentstack.graphs import BUILTIN_GRAPHS, GraphParts, workspace_tools
from agentstack.testing import InMemoryRetriever, schema_model
from api_helpers import serving
from graph_helpers import DOCS, tool_agent

QUESTION = "What restarts a crashed llama.cpp replica?"
RESEARCH = {
    "Plan": {"queries": ["crashed llama.cpp replica restart"]},
    "Analysis": {"draft": "The fleet restarts it [S1].", "confidence": 0.9, "gaps": [], "cited": ["S1"]},
    "FinalAnswer": {"answer": "The fleet restarts a crashed replica with backoff [S1].", "citations": ["S1"]},
}


def team_route(prompt: str) -> dict[str, str]:
    """The researcher first, then the synthesizer (once the prompt shows work done)."""
    return {"next": "synthesize" if "\n- " in prompt else "researcher", "instruction": QUESTION}


@pytest.fixture
async def url(saver: PoolSaver, tmp_path: Path) -> AsyncIterator[str]:
    retriever = InMemoryRetriever.from_texts(DOCS)
    models = {
        "research": schema_model(**RESEARCH),
        "team": schema_model(**RESEARCH, Route=team_route, FinalOutput={"output": "The fleet restarts it."}),
        "approval": tool_agent(
            [
                {"name": "write_file", "args": {"path": "one.txt", "content": "1"}},
                {"name": "write_file", "args": {"path": "two.txt", "content": "2"}},
            ]
        ),
    }
    served = []
    for entry in BUILTIN_GRAPHS:  # as Stack.graph builds them for `agentstack api`
        parts = GraphParts(
            model=models[entry.name],
            retriever=retriever,
            checkpointer=saver,
            default_tools=lambda: workspace_tools(tmp_path),
        )
        graph = entry.build(parts).with_config(metadata={"agentstack_graph": entry.name})
        served.append(ServedGraph(entry.name, graph, context=entry.context))
    async with serving(app_on(RunQueue(saver.conn), ServedGraphs(served), workers=2)) as base:
        yield base


async def test_research_answers_with_checked_citations(url: str) -> None:
    client = get_client(url=url)
    schemas = await client.assistants.get_schemas("research")
    assert "question" in schemas["input_schema"]["properties"] and "k" in schemas["context_schema"]["properties"]
    thread = await client.threads.create()
    values: Any = await client.runs.wait(
        thread["thread_id"], "research", input={"question": QUESTION}, context={"max_iterations": 1}
    )
    assert values["status"] == "answered" and values["answer"].startswith("The fleet restarts")
    assert [c["id"] for c in values["citations"]] == ["S1"] and "fleet.md" in values["citations"][0]["source"]


async def test_the_teams_researcher_streams_as_a_subgraph(url: str) -> None:
    client = get_client(url=url)
    thread = await client.threads.create()
    parts = [
        part
        async for part in client.runs.stream(
            thread["thread_id"], "team", input={"task": QUESTION}, stream_mode=["updates", "values"],
            stream_subgraphs=True,
        )
    ]  # fmt: skip
    events = [p.event for p in parts]
    assert events[0] == "metadata" and events[-1] == "values"
    assert any(e.startswith("updates|researcher") for e in events), events  # the research subgraph's steps
    final = parts[-1].data
    assert final["status"] == "done" and final["output"] == "The fleet restarts it."
    assert [w["role"] for w in final["work"]] == ["researcher"]


async def test_the_approval_agents_waiting_calls_are_decided_together(url: str, tmp_path: Path) -> None:
    client = get_client(url=url)
    thread_id = (await client.threads.create())["thread_id"]
    await client.runs.wait(thread_id, "approval", input={"messages": [{"role": "user", "content": "write both"}]})
    waiting = await client.threads.get(thread_id)
    assert waiting["status"] == "interrupted"
    interrupts = [i for pending in waiting["interrupts"].values() for i in pending]
    ids = {i["value"]["args"]["path"]: i["id"] for i in interrupts}
    assert set(ids) == {"one.txt", "two.txt"}
    decisions = {ids["one.txt"]: {"action": "approve"}, ids["two.txt"]: {"action": "reject", "reason": "no"}}
    values: Any = await client.runs.wait(thread_id, "approval", command={"resume": decisions})
    assert (tmp_path / "one.txt").read_text() == "1" and not (tmp_path / "two.txt").exists()
    assert sorted(d["action"] for d in values["decisions"]) == ["approve", "reject"]
    assert values["messages"][-1]["content"].startswith("done:")
    assert (await client.threads.get(thread_id))["status"] == "idle"
