"""The built-in graphs on real components: the hybrid index (Milvus Lite, the local embedder), Postgres
checkpoints (resume after every superstep, metadata, another process), the coder's real sandbox.

The graphs' logic is tested on in-memory doubles in test_graph_research.py, test_graph_team.py and
test_graph_approval.py; these tests show the same graphs hold on what production runs them on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from agentstack.graphs import (
    ApprovalPolicy,
    ResearchContext,
    TeamContext,
    build_approval_graph,
    build_research_graph,
    build_team_graph,
    stream_run,
    workspace_tools,
)
from agentstack.rag import Document
from agentstack.testing import schema_model
from graph_helpers import DOCS, thread, tool_agent

pytestmark = pytest.mark.slow

QUESTION = "How does a thread survive a crash?"
# on topic: the graph searches only sub-queries that share most of their words with the question
PLAN = {"queries": ["thread crash checkpoint", "how threads survive crashes"]}
CONFIDENT = {"draft": "It resumes from Postgres [S1].", "confidence": 0.9, "gaps": [], "cited": ["S1"]}
UNSURE = {"draft": "Unclear.", "confidence": 0.2, "gaps": ["retrieval fusion"], "cited": []}
ANSWER = {
    "answer": "Threads resume from the last Postgres checkpoint [S1], as the docs say [S99].",
    "citations": ["S1"],
}
CODE = {"code": "print(sum(range(10)))", "explanation": "adds"}
POLICY = ApprovalPolicy.of(["write_file"])


@pytest.fixture
async def retrieval(hybrid_index: Any) -> Any:
    await hybrid_index.ingestor.aingest([Document(source=name, text=text) for name, text in DOCS.items()])
    return hybrid_index


def coordinator(*route: str) -> Any:
    """Route by how much work the prompt shows: the n-th decision is route[n]."""

    def decide(prompt: str) -> dict[str, str]:
        done = prompt.count("\n- ")
        return {"next": route[min(done, len(route) - 1)], "instruction": f"step {done}"}

    return decide


# -- research ----------------------------------------------------------------------------------------------
async def test_research_on_the_hybrid_index_with_postgres_checkpoints(retrieval: Any, saver: Any) -> None:
    model = schema_model(Plan=PLAN, Analysis=CONFIDENT, FinalAnswer=ANSWER)
    graph = build_research_graph(model, retrieval.retriever, checkpointer=saver)
    config = thread()
    out = await graph.ainvoke({"question": QUESTION}, config)

    assert out["status"] == "answered" and out["iteration"] == 1
    assert sorted(out["asked"]) == sorted([QUESTION, *PLAN["queries"]])
    assert {e["id"] for e in out["evidence"]} == {f"S{i}" for i in range(1, len(out["evidence"]) + 1)}
    assert "[S99]" not in out["answer"] and out["removed_citations"] == ["S99"]
    assert [c["id"] for c in out["citations"]] == ["S1"]
    cited = out["citations"][0]
    first = out["evidence"][0]
    assert cited["chunk_id"] == first["chunk_id"] and cited["source"] == first["source"]
    # the sources are the ingested documents, and the evidence text is theirs
    assert all(e["source"] in DOCS and e["text"] in DOCS[e["source"]] for e in out["evidence"])
    # the prompt versions used are in the run's checkpoint metadata, in Postgres
    saved = await saver.aget_tuple(config)
    assert saved.metadata["agentstack_graph"] == "research"
    assert "research/plan@v1" in saved.metadata["agentstack_prompts"].split()


async def test_a_closed_index_is_a_recorded_failure_and_the_answer_has_zero_confidence(retrieval: Any) -> None:
    await retrieval.index.aclose()  # the index is gone: every retrieval raises
    model = schema_model(Plan=PLAN, Analysis=CONFIDENT, FinalAnswer={"answer": "No idea [S1].", "citations": []})
    graph = build_research_graph(model, retrieval.retriever, checkpointer=InMemorySaver())
    out = await graph.ainvoke({"question": QUESTION}, thread(), context=ResearchContext(max_iterations=1))
    assert len(out["failures"]) == 3 and out["failures"][0]["searcher"] == "retriever"
    assert out["confidence"] == 0.0 and out["citations"] == [] and out["removed_citations"] == ["S1"]


async def test_research_graph_is_resumable_on_postgres(retrieval: Any, saver: Any, resumable: Any) -> None:
    model = schema_model(
        Plan=lambda prompt: {"queries": ["fusion"]} if "Already asked" in prompt else PLAN,
        Analysis=UNSURE,
        FinalAnswer=ANSWER,
    )
    graph = build_research_graph(model, retrieval.retriever, checkpointer=saver)
    report = await resumable(graph, {"question": "q?"})
    assert report.interruptions >= 4 and report.final_state["status"] == "budget_exhausted"


# -- team --------------------------------------------------------------------------------------------------
async def test_the_coder_runs_its_programs_in_the_real_sandbox(saver: Any) -> None:
    model = schema_model(
        Route=coordinator("coder", "reviewer", "coder", "reviewer", "synthesize"),
        CodeDraft=lambda prompt: CODE if "Fix this feedback" in prompt else {"code": "print(1/0)", "explanation": ""},
        Review=lambda prompt: (
            {"verdict": "accept"} if "exit code 0" in prompt else {"verdict": "revise", "feedback": "it crashes"}
        ),
        FinalOutput={"output": "45"},
    )
    graph = build_team_graph(model, researcher=None, checkpointer=saver)
    out = await graph.ainvoke({"task": "sum 0..9"}, thread())
    roles = [(w["role"], w["ok"]) for w in out["work"]]
    assert roles == [("coder", False), ("reviewer", False), ("coder", True), ("reviewer", True)]
    assert "ZeroDivisionError" in out["work"][0]["content"] and "45" in out["work"][2]["content"]
    assert out["output"] == "45" and out["status"] == "done" and out["accepted"] is True


async def test_the_sandbox_stops_a_program_that_never_ends() -> None:
    model = schema_model(
        Route=coordinator("coder", "synthesize"),
        CodeDraft={"code": "while True:\n    pass", "explanation": "spins"},
        FinalOutput={"output": "it timed out"},
    )
    graph = build_team_graph(model, researcher=None, checkpointer=InMemorySaver())
    out = await graph.ainvoke({"task": "t"}, thread(), context=TeamContext(code_timeout_s=1.0))
    (work,) = out["work"]
    assert work["ok"] is False and "timed out" in work["content"]


async def test_the_research_subgraph_on_the_hybrid_index_with_postgres_checkpoints(retrieval: Any, saver: Any) -> None:
    model = schema_model(
        Route=coordinator("researcher", "synthesize"),
        Plan={"queries": ["postgres checkpoint"]},
        Analysis={"draft": "d", "confidence": 0.9, "gaps": [], "cited": ["S1"]},
        FinalAnswer={"answer": "From Postgres [S1].", "citations": ["S1"]},
        FinalOutput={"output": "Threads resume from Postgres [S1]."},
    )
    researcher = build_research_graph(model, retrieval.retriever)
    graph = build_team_graph(model, researcher=researcher, checkpointer=saver)
    config = thread()
    events = [e async for e in stream_run(graph, {"task": "how do threads resume?"}, config)]
    nested = [e for e in events if e.namespace and e.kind == "progress"]
    assert {e.data["stage"] for e in nested} >= {"plan", "search", "analyze", "answer"}  # streamed from the subgraph
    state = await graph.aget_state(config)
    assert state.values["output"] == "Threads resume from Postgres [S1]."
    assert state.values["citations"][0]["source"] in DOCS and state.values["work"][0]["role"] == "researcher"
    saved = await saver.aget_tuple(config)
    assert {"team/coordinator@v1", "research/plan@v1"} <= set(saved.metadata["agentstack_prompts"].split())


async def test_team_graph_is_resumable_on_postgres(saver: Any, resumable: Any) -> None:
    model = schema_model(
        Route=coordinator("coder", "reviewer", "synthesize"),
        CodeDraft=CODE,
        Review={"verdict": "accept"},
        FinalOutput={"output": "45"},
    )
    graph = build_team_graph(model, researcher=None, checkpointer=saver)
    report = await resumable(graph, {"task": "sum"})
    assert report.interruptions >= 3 and report.final_state["output"] == "45"


# -- approval ----------------------------------------------------------------------------------------------
async def test_an_approved_call_waits_in_postgres_with_the_graph_and_prompts_recorded(
    tmp_path: Path, saver: Any
) -> None:
    from langgraph.types import Command

    model = tool_agent([{"name": "write_file", "args": {"path": "a.txt", "content": "A"}}])
    graph = build_approval_graph(model, workspace_tools(tmp_path), policy=POLICY, checkpointer=saver)
    config = thread()
    paused = await graph.ainvoke({"messages": [{"role": "user", "content": "write a"}]}, config)
    assert paused["__interrupt__"][0].value["tool"] == "write_file" and not (tmp_path / "a.txt").exists()
    out = await graph.ainvoke(Command(resume={"action": "approve"}), config)
    assert (tmp_path / "a.txt").read_text() == "A" and out["decisions"][0]["action"] == "approve"
    saved = await saver.aget_tuple(config)
    assert (
        saved.metadata["agentstack_graph"] == "approval" and "approval/agent@v1" in saved.metadata["agentstack_prompts"]
    )


async def test_approval_graph_is_resumable_on_postgres(tmp_path: Path, saver: Any, resumable: Any) -> None:
    model = tool_agent([{"name": "list_files", "args": {}}, {"name": "read_file", "args": {"path": "x"}}])
    graph = build_approval_graph(model, workspace_tools(tmp_path), policy=POLICY, checkpointer=saver)

    def without_ids(values: dict[str, Any]) -> Any:  # message ids are random per run
        return [(type(m).__name__, m.content) for m in values["messages"]], values["decisions"], values["steps"]

    report = await resumable(graph, {"messages": [{"role": "user", "content": "look around"}]}, normalize=without_ids)
    assert report.interruptions >= 1 and report.final_state["messages"][-1].content.startswith("done:")


_PROCESS = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from langgraph.types import Command
    from agentstack import open_saver
    from agentstack.graphs import ApprovalPolicy, build_approval_graph, workspace_tools
    sys.path.insert(0, {tests!r})
    from graph_helpers import tool_agent

    async def main(step):
        model = tool_agent([{{"name": "write_file", "args": {{"path": "a.txt", "content": "from process 1"}}}}])
        async with open_saver({url!r}) as saver:
            graph = build_approval_graph(
                model, workspace_tools(Path({root!r})), policy=ApprovalPolicy.of(["write_file"]), checkpointer=saver
            )
            config = {{"configurable": {{"thread_id": "cross-process"}}}}
            if step == "start":
                out = await graph.ainvoke({{"messages": [{{"role": "user", "content": "write"}}]}}, config)
                print(json.dumps([i.value for i in out["__interrupt__"]]))
            else:
                out = await graph.ainvoke(Command(resume={{"action": "approve"}}), config)
                print(json.dumps(out["messages"][-1].content))

    asyncio.run(main(sys.argv[1]))
    """
)


def test_start_in_one_process_approve_from_another(tmp_path: Path, agentstack_postgres: str) -> None:
    script = tmp_path / "run.py"
    root = tmp_path / "workspace"
    script.write_text(_PROCESS.format(tests=str(Path(__file__).parent), url=agentstack_postgres, root=str(root)))
    first = subprocess.run([sys.executable, str(script), "start"], capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout.strip().splitlines()[-1])[0]["tool"] == "write_file"
    assert not (root / "a.txt").exists()
    second = subprocess.run([sys.executable, str(script), "resume"], capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert (root / "a.txt").read_text() == "from process 1"
    assert json.loads(second.stdout.strip().splitlines()[-1]).startswith("done: wrote")
