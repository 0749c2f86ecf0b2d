"""The team graph's logic: coordinator routing, the research subgraph, the coder, the reviewer loop, the budget.

A scripted model answers by schema, the coder's programs "run" in a fake sandbox (`FakeSandbox`: a result per
program), the researcher searches an in-memory retriever and threads live in an `InMemorySaver`, so each test
takes milliseconds. The real sandbox, index and Postgres run the same graph in test_graphs_real.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from agentstack.errors import GraphInputError
from agentstack.graphs import TeamContext, build_research_graph, build_team_graph, stream_run
from agentstack.graphs._team import TeamDeps, code, compose_team_graph, coordinate
from agentstack.testing import InMemoryRetriever, schema_model
from graph_helpers import DOCS, FakeSandbox, LengthFinishReasonError, ran, step_runtime, thread

CODE = {"code": "print(sum(range(10)))", "explanation": "adds"}
CRASH = {"code": "print(1/0)", "explanation": ""}
SANDBOX = {
    CODE["code"]: ran("45\n"),
    CRASH["code"]: ran(stderr="ZeroDivisionError: division by zero", exit_code=1),
    "while True:\n    pass": ran(exit_code=None, timed_out=True),
}


def coordinator(*route: str, instruction: str = "step") -> Any:
    """Route by how much work the prompt shows: the n-th decision is route[n]."""

    def decide(prompt: str) -> dict[str, str]:
        done = prompt.count("\n- ")
        return {"next": route[min(done, len(route) - 1)], "instruction": f"{instruction} {done}"}

    return decide


def team(model: Any, sandbox: FakeSandbox | None = None, *, checkpointer: Any = None) -> Any:
    deps = TeamDeps.create(model, researcher=None, run_code=sandbox or FakeSandbox(SANDBOX))
    return compose_team_graph(deps, checkpointer=checkpointer or InMemorySaver())


async def test_reviewer_sends_work_back_until_it_accepts() -> None:
    model = schema_model(
        Route=coordinator("coder", "reviewer", "coder", "reviewer", "synthesize"),
        CodeDraft=lambda prompt: CODE if "Fix this feedback" in prompt else CRASH,
        Review=lambda prompt: (
            {"verdict": "accept"} if "exit code 0" in prompt else {"verdict": "revise", "feedback": "it crashes"}
        ),
        FinalOutput={"output": "45"},
    )
    out = await team(model).ainvoke({"task": "sum 0..9"}, thread())
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
    out = await team(model).ainvoke({"task": "t"}, thread(), context=TeamContext(max_steps=3))
    assert out["steps"] == 3 and out["status"] == "step_budget_exhausted" and out["output"] == "partial"
    assert [w["role"] for w in out["work"]] == ["reviewer"] * 3


async def test_a_program_stopped_by_the_sandbox_is_failed_work_under_the_run_knobs() -> None:
    model = schema_model(
        Route=coordinator("coder", "synthesize"),
        CodeDraft={"code": "while True:\n    pass", "explanation": "spins"},
        FinalOutput={"output": "it timed out"},
    )
    sandbox = FakeSandbox(SANDBOX)
    knobs = TeamContext(code_timeout_s=1.0, code_memory_mb=64)
    out = await team(model, sandbox).ainvoke({"task": "t"}, thread(), context=knobs)
    (work,) = out["work"]
    assert work["ok"] is False and "timed out" in work["content"]
    assert sandbox.calls == [{"code": "while True:\n    pass", "timeout_s": 1.0, "memory_mb": 64}]


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
    graph = team(model)
    config = thread()
    progress = [e async for e in graph.astream({"task": "sum 0..9"}, config, stream_mode="custom")]
    assert any("team/coder@v1 hit its token limit" in e.get("error", "") for e in progress)
    out = (await graph.aget_state(config)).values
    first, second = out["work"]
    assert first["ok"] is False and "the coder wrote no usable program" in first["content"]
    assert second["ok"] is True and "45" in second["content"] and out["output"] == "45"
    assert out["tokens_used"] > 0


async def test_the_researcher_is_the_research_graph_as_a_subgraph() -> None:
    model = schema_model(
        Route=coordinator("researcher", "synthesize", instruction="how do threads resume from a postgres checkpoint?"),
        Plan={"queries": ["postgres checkpoint"]},
        Analysis={"draft": "d", "confidence": 0.9, "gaps": [], "cited": ["S1"]},
        FinalAnswer={"answer": "From Postgres [S1].", "citations": ["S1"]},
        FinalOutput={"output": "Threads resume from Postgres [S1]."},
    )
    researcher = build_research_graph(model, InMemoryRetriever.from_texts(DOCS))
    saver = InMemorySaver()
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


class Researcher:
    """A research graph's answers by question: each run cites its own S1 (as every research run does)."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def ainvoke(self, state: dict[str, str], *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.asked.append(state["question"])
        question = state["question"]
        cited = {"id": "S1", "source": "docs.md", "chunk_id": question, "kind": "chunk", "quote": "q"}
        found = [
            {"id": f"S{n}", "query": question, "kind": "chunk", "source": "docs.md", "chunk_id": f"{question}#{n}",
             "text": f"passage {n} for {question}", "score": 1.0}
            for n in (1, 2)
        ]  # fmt: skip
        return {"answer": f"{self.answers[question]} [S1].", "citations": [cited], "evidence": found, "tokens_used": 1}


def researched_team(researcher: Researcher, route: Any, **knobs: Any) -> tuple[Any, TeamContext]:
    model = schema_model(Route=route, FinalOutput={"output": "Written [S1], and invented [S7]."}, CodeDraft=CODE)
    deps = TeamDeps.create(model, researcher=researcher, run_code=FakeSandbox(SANDBOX), answer_style="extractive")
    return compose_team_graph(deps, checkpointer=InMemorySaver()), TeamContext(**knobs)


TASK = "how do threads resume after a crash?"
FOLLOW_UP = "how do threads resume from postgres?"
ANSWERS = {TASK: "From the last checkpoint", FOLLOW_UP: "Postgres holds it"}


def research_twice(prompt: str) -> dict[str, str]:
    done = prompt.count("\n- ")
    return {"next": "researcher", "instruction": [TASK, FOLLOW_UP][done]} if done < 2 else {"next": "synthesize"}


async def test_research_runs_are_numbered_apart_and_an_extractive_result_is_their_answers() -> None:
    researcher = Researcher(ANSWERS)
    graph, context = researched_team(researcher, research_twice)
    out = await graph.ainvoke({"task": TASK}, thread(), context=context)
    assert researcher.asked == [TASK, FOLLOW_UP]  # extractive: the task is researched first, without asking
    assert [c["id"] for c in out["citations"]] == ["S1", "S2"]
    assert [c["chunk_id"] for c in out["citations"]] == [TASK, FOLLOW_UP]  # S2 is the second run's own S1
    assert out["work"][1]["content"] == "Postgres holds it [S2]."
    # the passages cited, whole, under the team's ids (what evaluation checks the result against)
    assert [(e["id"], e["text"]) for e in out["cited_evidence"]] == [
        ("S1", f"passage 1 for {TASK}"),
        ("S2", f"passage 1 for {FOLLOW_UP}"),
    ]
    # extractive: the answers themselves, not the synthesizer's rewrite
    assert out["output"] == "From the last checkpoint [S1].\n\nPostgres holds it [S2]."
    # written: the coordinator decides from the start, the synthesizer writes, and a mark of no passage goes
    researcher = Researcher(ANSWERS)
    graph, context = researched_team(researcher, research_twice, answer_style="written")
    written = await graph.ainvoke({"task": TASK}, thread(), context=context)
    assert researcher.asked == [TASK, FOLLOW_UP] and written["output"] == "Written [S1], and invented."


async def test_an_extractive_result_with_a_program_is_the_research_then_the_program() -> None:
    graph, context = researched_team(Researcher(ANSWERS), coordinator("coder", "coder", "synthesize"))
    out = await graph.ainvoke({"task": TASK}, thread(), context=context)
    assert [w["role"] for w in out["work"]] == ["researcher", "coder"]
    research, program = out["output"].split("\n\n", 1)
    assert research == "From the last checkpoint [S1]." and program == out["work"][1]["content"]
    assert "print(sum(range(10)))" in program and "45" in program


async def test_an_extractive_result_leaves_out_a_failed_program_unless_it_is_all_there_is() -> None:
    """The CPU Gemma's coder, sent a question, wrote `code`: its NameError is no part of a cited answer."""
    route = coordinator("coder", "coder", "synthesize")
    model = schema_model(Route=route, CodeDraft=CRASH, FinalOutput={"output": "w"})
    deps = TeamDeps.create(model, researcher=Researcher(ANSWERS), run_code=FakeSandbox(SANDBOX))
    graph = compose_team_graph(deps, checkpointer=InMemorySaver())
    out = await graph.ainvoke({"task": TASK}, thread(), context=TeamContext(answer_style="extractive"))
    assert [w["role"] for w in out["work"]] == ["researcher", "coder"] and not out["work"][1]["ok"]
    assert out["output"] == "From the last checkpoint [S1]."
    alone = team(schema_model(Route=coordinator("coder", "synthesize"), CodeDraft=CRASH, FinalOutput={"output": "w"}))
    out = await alone.ainvoke({"task": "divide"}, thread(), context=TeamContext(answer_style="extractive"))
    assert "ZeroDivisionError" in out["output"]  # the failure is the result when nothing else is


async def test_an_instruction_off_the_tasks_topic_researches_the_task() -> None:
    researcher = Researcher(ANSWERS)
    route = coordinator("researcher", "synthesize", instruction="G a b l e")
    graph, context = researched_team(researcher, route, answer_style="written")
    out = await graph.ainvoke({"task": TASK}, thread(), context=context)
    assert researcher.asked == [TASK] and out["work"][0]["content"] == "From the last checkpoint [S1]."


async def test_without_a_researcher_the_coordinator_is_told_so() -> None:
    model = schema_model(Route=coordinator("researcher", "synthesize"), FinalOutput={"output": "no research"})
    out = await team(model).ainvoke({"task": "look it up"}, thread())
    (work,) = out["work"]
    assert work["role"] == "researcher" and work["ok"] is False and "no researcher" in work["content"]


async def test_bad_task_is_refused() -> None:
    graph = build_team_graph(schema_model(), researcher=None, checkpointer=InMemorySaver())
    with pytest.raises(GraphInputError, match="non-empty string `task`"):
        await graph.ainvoke({"task": ""}, thread())


async def test_team_graph_is_resumable(resumable: Any) -> None:
    model = schema_model(
        Route=coordinator("coder", "reviewer", "synthesize"),
        CodeDraft=CODE,
        Review={"verdict": "accept"},
        FinalOutput={"output": "45"},
    )
    report = await resumable(team(model), {"task": "sum"})
    assert report.interruptions >= 3 and report.final_state["output"] == "45"


# -- one step at a time -----------------------------------------------------------------------------------
async def test_the_coordinator_alone_stops_routing_once_the_budget_is_spent() -> None:
    deps = TeamDeps.create(schema_model(), researcher=None)  # no Route reply: the model must not be asked
    runtime, events = step_runtime(TeamContext(max_steps=2))
    command = await coordinate({"task": "t", "steps": 2}, runtime, deps)
    assert command.goto == "synthesizer" and command.update == {"status": "step_budget_exhausted"}
    assert events == [{"stage": "coordinator", "next": "synthesize", "why": "step budget spent"}]


async def test_the_coder_alone_shows_its_previous_program_and_the_feedback() -> None:
    model = schema_model(CodeDraft=CODE)
    sandbox = FakeSandbox(SANDBOX)
    runtime, events = step_runtime(TeamContext())
    earlier = {"role": "coder", "instruction": "i", "content": "print(1/0) crashed", "summary": "", "ok": False}
    state = {"task": "sum", "instruction": "fix it", "feedback": "it crashes", "work": [earlier]}
    update = await code(state, runtime, TeamDeps.create(model, researcher=None, run_code=sandbox))
    sent = model.calls[0][-1].content
    assert "print(1/0) crashed" in sent and "it crashes" in sent
    (work,) = update["work"]
    assert work["ok"] is True and work["instruction"] == "fix it" and "45" in work["content"]
    assert sandbox.calls[0]["timeout_s"] == 10.0 and events == [{"stage": "coder", "exit_code": 0, "timed_out": False}]
