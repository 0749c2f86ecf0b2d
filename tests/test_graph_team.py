"""The team graph: coordinator routing, the research subgraph, the sandboxed coder, the reviewer loop, the budget."""

from __future__ import annotations

from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from agentstack.errors import GraphInputError
from agentstack.graphs import TeamContext, build_research_graph, build_team_graph, stream_run
from agentstack.rag import Document
from agentstack.testing import schema_model
from graph_helpers import DOCS, LengthFinishReasonError, thread

CODE = {"code": "print(sum(range(10)))", "explanation": "adds"}


def coordinator(*route: str) -> Any:
    """Route by how much work the prompt shows: the n-th decision is route[n]."""

    def decide(prompt: str) -> dict[str, str]:
        done = prompt.count("\n- ")
        return {"next": route[min(done, len(route) - 1)], "instruction": f"step {done}"}

    return decide


async def test_reviewer_sends_work_back_until_it_accepts(saver: Any) -> None:
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


async def test_step_budget_forces_the_synthesizer() -> None:
    model = schema_model(
        Route={"next": "reviewer", "instruction": "again"},
        Review={"verdict": "revise", "feedback": "never good"},
        FinalOutput={"output": "partial"},
    )
    graph = build_team_graph(model, researcher=None, checkpointer=InMemorySaver())
    out = await graph.ainvoke({"task": "t"}, thread(), context=TeamContext(max_steps=3))
    assert out["steps"] == 3 and out["status"] == "step_budget_exhausted" and out["output"] == "partial"
    assert [w["role"] for w in out["work"]] == ["reviewer"] * 3


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


async def test_a_program_the_model_cannot_finish_is_failed_work_not_a_lost_run() -> None:
    drafts = iter([LengthFinishReasonError(), LengthFinishReasonError(), CODE])

    def draft(prompt: str) -> dict[str, str]:
        reply = next(drafts)
        if isinstance(reply, Exception):
            raise reply
        return reply

    model = schema_model(
        Route=coordinator("coder", "coder", "synthesize"), CodeDraft=draft, FinalOutput={"output": "45"}
    )
    graph = build_team_graph(model, researcher=None, checkpointer=InMemorySaver())
    config = thread()
    progress = [e async for e in graph.astream({"task": "sum 0..9"}, config, stream_mode="custom")]
    assert any("team/coder@v1 hit its token limit" in e.get("error", "") for e in progress)
    out = (await graph.aget_state(config)).values
    first, second = out["work"]
    assert first["ok"] is False and "the coder wrote no usable program" in first["content"]
    assert second["ok"] is True and "45" in second["content"] and out["output"] == "45"
    assert out["tokens_used"] > 0


async def test_the_researcher_is_the_research_graph_as_a_subgraph(hybrid_index: Any, saver: Any) -> None:
    await hybrid_index.ingestor.aingest([Document(source=n, text=t) for n, t in DOCS.items()])
    model = schema_model(
        Route=coordinator("researcher", "synthesize"),
        Plan={"queries": ["postgres checkpoint"]},
        Analysis={"draft": "d", "confidence": 0.9, "gaps": [], "cited": ["S1"]},
        FinalAnswer={"answer": "From Postgres [S1].", "citations": ["S1"]},
        FinalOutput={"output": "Threads resume from Postgres [S1]."},
    )
    researcher = build_research_graph(model, hybrid_index.retriever)
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


async def test_bad_task_is_refused() -> None:
    graph = build_team_graph(schema_model(), researcher=None, checkpointer=InMemorySaver())
    with pytest.raises(GraphInputError, match="non-empty string `task`"):
        await graph.ainvoke({"task": ""}, thread())


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
