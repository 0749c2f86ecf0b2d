"""The pytest plugin's fixtures: scripted model, resume checker, real Postgres per test."""

from __future__ import annotations

import itertools
import operator
from typing import Annotated, Any, TypedDict

import psycopg
import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, ValidationError

from agentstack.testing import ScriptedChatModel, ScriptExhaustedError


class Plan(BaseModel):
    steps: list[str]
    confidence: float


@tool
def search(query: str) -> str:
    """Search the corpus."""
    return f"results for {query}"


def test_postgres_fixture_gives_each_test_its_own_database(agentstack_postgres: str) -> None:
    with psycopg.connect(agentstack_postgres) as conn:
        conn.execute("CREATE TABLE only_here (x int)")
        name = conn.execute("SELECT current_database()").fetchone()
    assert name is not None and name[0].startswith("test_")


def test_postgres_fixture_database_is_fresh(agentstack_postgres: str) -> None:
    with psycopg.connect(agentstack_postgres) as conn:
        row = conn.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'only_here'").fetchone()
    assert row == (0,)


async def test_scripted_model_plain_and_structured_replies(scripted_model: Any) -> None:
    model = scripted_model(["hello there", {"steps": ["a", "b"], "confidence": 0.7}])
    first = await model.ainvoke([HumanMessage("hi")])
    assert first.content == "hello there"
    plan = await model.with_structured_output(Plan).ainvoke("plan it")
    assert plan == Plan(steps=["a", "b"], confidence=0.7)
    assert [m[-1].content for m in model.calls] == ["hi", "plan it"]
    with pytest.raises(ScriptExhaustedError, match="called 3 times but its script has 2 replies"):
        await model.ainvoke("again")


async def test_scripted_model_structured_reply_is_validated(scripted_model: Any) -> None:
    model = scripted_model([{"steps": "not a list", "confidence": 2}])
    with pytest.raises(ValidationError):
        await model.with_structured_output(Plan).ainvoke("plan it")


async def test_scripted_model_tool_calls_and_function_script(scripted_model: Any) -> None:
    def respond(messages: list[Any], tools: list[dict[str, Any]]) -> Any:
        assert [t["function"]["name"] for t in tools] == ["search"]
        if len(messages) == 1:
            return {"query": messages[0].content}
        return "done"

    model: ScriptedChatModel = scripted_model(respond).bind_tools([search])
    reply = await model.ainvoke([HumanMessage("milvus")])
    assert reply.tool_calls[0]["name"] == "search" and reply.tool_calls[0]["args"] == {"query": "milvus"}
    assert (await model.ainvoke([HumanMessage("x"), reply])).content == "done"


async def test_scripted_model_raises_scripted_errors_and_streams_tokens(scripted_model: Any) -> None:
    model = scripted_model([TimeoutError("model timed out"), "one two three"])
    with pytest.raises(TimeoutError):
        await model.ainvoke("x")
    chunks = [c.content async for c in model.astream("x") if c.content]
    assert chunks == ["one ", "two ", "three"]


class Counter(TypedDict):
    total: Annotated[int, operator.add]
    trail: Annotated[list[str], operator.add]


def _counting_graph(saver: Any, calls: list[str], *, leak: itertools.count | None = None) -> Any:
    def make(name: str) -> Any:
        async def node(state: Counter) -> dict[str, Any]:
            calls.append(name)
            bump = next(leak) if leak is not None else 1  # `leak` makes the node depend on outside state
            return {"total": bump, "trail": [name]}

        return node

    builder = StateGraph(Counter)
    names = ["a", "b", "c", "d"]
    for name in names:
        builder.add_node(name, make(name))
    builder.add_edge(START, "a")
    builder.add_edge("a", "b")
    builder.add_edge("a", "c")  # b and c run in the same superstep
    builder.add_edge(["b", "c"], "d")
    builder.add_edge("d", END)
    return builder.compile(checkpointer=saver)


async def test_resumable_passes_for_a_deterministic_graph(saver: Any, resumable: Any) -> None:
    calls: list[str] = []
    report = await resumable(_counting_graph(saver, calls), {"total": 0, "trail": []})
    assert report.final_state["total"] == 4
    assert sorted(report.final_state["trail"]) == ["a", "b", "c", "d"]
    assert report.interruptions >= 2  # after input, after a, after b+c


async def test_resumable_catches_a_graph_whose_result_depends_on_outside_state(saver: Any, resumable: Any) -> None:
    graph = _counting_graph(saver, [], leak=itertools.count(1))
    with pytest.raises(AssertionError, match="ended in a different state"):
        await resumable(graph, {"total": 0, "trail": []})


async def test_resumable_requires_a_checkpointer(resumable: Any) -> None:
    graph = _counting_graph(None, [])
    with pytest.raises(AssertionError, match="no checkpointer"):
        await resumable(graph, {"total": 0, "trail": []})


def test_scripted_model_bad_reply_type_is_explained() -> None:
    model = ScriptedChatModel.from_script([42])  # type: ignore[list-item]
    with pytest.raises(Exception, match="must be a str, AIMessage"):
        model.invoke("x")


def test_ai_message_replies_pass_through() -> None:
    message = AIMessage(content="", tool_calls=[{"name": "search", "args": {"query": "q"}, "id": "1"}])
    assert ScriptedChatModel.from_script([message]).invoke("x").tool_calls[0]["id"] == "1"


async def test_hybrid_index_fixture_is_a_real_empty_index(hybrid_index, tmp_path):
    assert await hybrid_index.index.count("leaf") == 0
    (tmp_path / "note.md").write_text("The hybrid index fixture gives each test its own Milvus Lite directory.")
    await hybrid_index.ingestor.aingest_paths([tmp_path / "note.md"])
    result = await hybrid_index.retriever.aretrieve("own Milvus Lite directory", k=1)
    assert result.chunks[0].chunk.source.endswith("note.md") and (tmp_path / "milvus.db").exists()
