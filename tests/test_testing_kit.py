"""The pytest plugin: fixtures (real Postgres per test, resume checker), the doubles, the model-request guard."""

from __future__ import annotations

import functools
import itertools
import operator
import subprocess
import sys
import textwrap
from typing import Annotated, Any, TypedDict

import psycopg
import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, ValidationError

from agentstack.errors import UserError
from agentstack.rag import Document
from agentstack.testing import InMemoryRetriever, ScriptedChatModel, ScriptExhaustedError, schema_model
from cli_helpers import clean_env


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


@pytest.mark.slow
async def test_hybrid_index_fixture_is_a_real_empty_index(hybrid_index, tmp_path):
    assert await hybrid_index.index.count("leaf") == 0
    (tmp_path / "note.md").write_text("The hybrid index fixture gives each test its own Milvus Lite directory.")
    await hybrid_index.ingestor.aingest_paths([tmp_path / "note.md"])
    result = await hybrid_index.retriever.aretrieve("own Milvus Lite directory", k=1)
    assert result.chunks[0].chunk.source.endswith("note.md") and (tmp_path / "milvus.db").exists()


# -- the scripted model takes production's structured-output path ------------------------------------------
async def test_structured_output_is_json_content_under_a_json_schema_response_format() -> None:
    model = ScriptedChatModel.from_script([Plan(steps=["a"], confidence=0.5)])
    raw = await model.with_structured_output(Plan).first.ainvoke("plan it")
    assert raw.content == '{"steps": ["a"], "confidence": 0.5}' and not raw.tool_calls


async def test_function_calling_and_include_raw_still_work() -> None:
    model = ScriptedChatModel.from_script([{"steps": ["a"], "confidence": 0.5}, "not json"])
    plan = await model.with_structured_output(Plan, method="function_calling").ainvoke("plan it")
    assert plan == Plan(steps=["a"], confidence=0.5)
    out = await model.with_structured_output(Plan, include_raw=True).ainvoke("again")
    assert out["parsed"] is None and out["raw"].content == "not json" and out["parsing_error"] is not None


async def test_schema_model_answers_by_the_requested_schema_and_prompt() -> None:
    class Verdict(BaseModel):
        ok: bool

    model = schema_model(Plan={"steps": ["s"], "confidence": 1.0}, Verdict=lambda prompt: {"ok": "yes" in prompt})
    assert (await model.with_structured_output(Verdict).ainvoke("yes please")).ok is True
    assert (await model.with_structured_output(Verdict).ainvoke("no")).ok is False
    assert (await model.with_structured_output(Plan).ainvoke("x")).steps == ["s"]
    assert len(model.calls) == 3 and model.remaining == 0

    class Other(BaseModel):
        x: int

    with pytest.raises(UserError, match="no reply for Other"):
        await model.with_structured_output(Other).ainvoke("x")
    with pytest.raises(UserError, match="without a structured-output schema"):
        await model.ainvoke("free text")


async def test_structured_replies_stream_as_json_tokens_with_their_usage() -> None:
    usage = {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}
    model = ScriptedChatModel.from_script(
        [AIMessage(content='{"steps": ["a b"], "confidence": 1}', usage_metadata=usage)]
    )
    chunks = [c async for c in model.astream("x")]
    assert [c.content for c in chunks if c.content] == ['{"steps": ', '["a ', 'b"], ', '"confidence": ', "1}"]
    assert functools.reduce(operator.add, chunks).usage_metadata == usage


# -- the in-memory retriever ------------------------------------------------------------------------------
async def test_in_memory_retriever_ranks_by_shared_words_with_the_real_hit_shape() -> None:
    retriever = InMemoryRetriever(
        [
            Document(source="a.md", text="Postgres keeps the checkpoints.", metadata={"team": "state"}),
            Document(
                source="b.md", text="The fleet restarts replicas; replicas serve models.", metadata={"team": "ml"}
            ),
            Document(source="c.md", text="Checkpoints and replicas.", metadata={"team": "ml"}),
        ]
    )
    result = await retriever.aretrieve("which replicas restart?", k=5)
    assert [h.chunk.source for h in result] == ["b.md", "c.md"] and len(result) == 2  # a.md shares no word
    best = result[0]
    assert best.text == best.chunk.text and best.score > result[1].score and best.chunk.id == "b.md#0"
    assert best.legs == {"bm25": 1} and result.reranked is False and result.query == "which replicas restart?"
    assert [h.chunk.source for h in await retriever.aretrieve("postgres checkpoints", k=1)] == ["a.md"]
    only_ml = await retriever.aretrieve("checkpoints", filters={"team": ["ml"]})
    assert [h.chunk.source for h in only_ml] == ["c.md"]
    assert retriever.queries == ["which replicas restart?", "postgres checkpoints", "checkpoints"]


# -- the plugin: cheap to import, the guard, fixtures that read nothing ---------------------------------------
def test_importing_the_plugin_loads_no_langchain_langgraph_or_psycopg() -> None:
    code = (
        "import sys, agentstack.testing\n"
        "loaded = {m.split('.')[0] for m in sys.modules} | set(sys.modules)\n"
        "heavy = sorted(loaded & {'langchain_core', 'langgraph', 'psycopg', 'agentstack.rag'})\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr + out.stdout


_GUARDED = textwrap.dedent(
    """
    import threading

    import httpx
    import pytest
    from langchain_openai import ChatOpenAI

    from agentstack.graphs import build_approval_graph, workspace_tools
    from agentstack.testing import ModelRequestBlockedError, ScriptedChatModel

    def served():
        reply = {"id": "1", "object": "chat.completion", "created": 0, "model": "m",
                 "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}]}
        answer = lambda request: httpx.Response(200, json=reply)
        return ChatOpenAI(base_url="http://model/v1", api_key="none", model="m", max_retries=0,
                          http_client=httpx.Client(transport=httpx.MockTransport(answer)),
                          http_async_client=httpx.AsyncClient(transport=httpx.MockTransport(answer)))

    def test_a_real_model_is_refused():
        with pytest.raises(ModelRequestBlockedError, match="allow_model_requests"):
            served().invoke("hi")

    def test_also_in_a_thread_that_did_not_copy_the_context():
        errors = []
        call = lambda: errors.append(pytest.raises(ModelRequestBlockedError, served().invoke, "x"))
        thread = threading.Thread(target=call)
        thread.start(); thread.join()
        assert len(errors) == 1

    async def test_also_inside_a_graph(tmp_path):
        graph = build_approval_graph(served(), workspace_tools(tmp_path))
        with pytest.raises(ModelRequestBlockedError):
            await graph.ainvoke({"messages": [{"role": "user", "content": "hi"}]})

    async def test_even_where_the_code_under_test_catches_errors(tmp_path):
        # The research graph records a failing searcher and goes on; a searcher that asks a real model (graph
        # RAG's entity linking) must still stop the test.
        from agentstack.graphs import build_research_graph
        from agentstack.rag import GraphExtractor
        from agentstack.testing import schema_model

        class Linking:
            async def aretrieve(self, query, hops=2):
                return await GraphExtractor(served()).aquery_entities(query)

        model = schema_model(Plan={"queries": ["q"]})
        graph = build_research_graph(model, None, graph_retriever=Linking())
        with pytest.raises(ModelRequestBlockedError):
            await graph.ainvoke({"question": "who?"})

    def test_a_scripted_model_is_fine():
        assert ScriptedChatModel.from_script(["ok"]).invoke("hi").content == "ok"

    @pytest.mark.allow_model_requests
    async def test_a_marked_test_may_call_it():
        assert (await served().ainvoke("hi")).content == "hi"
    """
)


@pytest.mark.allow_model_requests  # the inner session's guard decides, not this test's
def test_the_guard_refuses_real_model_calls_unless_a_test_asks(pytester: pytest.Pytester) -> None:
    ini = "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    pytester.makeini(ini + "agentstack_block_model_requests = true\n")
    pytester.makepyfile(test_guarded=_GUARDED)
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=6)
    # with the option off (the default for users of the plugin), nothing is refused
    pytester.makeini(ini)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-k", "refused")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*DID NOT RAISE*"])


@pytest.fixture
def hostile_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings a fixture must not read: loading them fails (and the URL points nowhere)."""
    monkeypatch.setenv("AGENTSTACK_POSTGRES_URL", "postgresql://nobody@127.0.0.1:9/nowhere")
    monkeypatch.setenv("AGENTSTACK_CHECKPOINT_POOL_SIZE", "0")


async def test_the_saver_fixture_reads_no_environment(hostile_env: None, saver: Any) -> None:
    await saver.aget_tuple({"configurable": {"thread_id": "t"}})
