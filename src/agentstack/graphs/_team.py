"""The team graph: a coordinator routes the task to a researcher, a coder and a reviewer, then a synthesizer.

    coordinator --(structured route)--> researcher | coder | reviewer --> coordinator ... --> synthesizer --> END

The researcher is the research graph run as a subgraph (its checkpoints, interrupts and streamed tokens
nest under the team's thread). The coder writes a program and runs it in the sandbox (timeout, memory
limit, no network, a temporary directory). The reviewer accepts the latest work or sends it back with
feedback the coordinator sees. A step budget bounds the loop: when it is spent the synthesizer writes
the result from what exists, and the status says the budget ran out.

What the researcher answers stays grounded on the way out. It researches the coordinator's instruction only
when that is on the task's topic (a tiny coordinator's instructions are often not), else the task itself; each
research run's citations are renumbered after the ones before it, so [S3] means one passage in the whole run;
and with extractive answers (the small-model mode) the team researches first and its result is composed of the
work itself (research answers, then the latest program and its output), not a small model's rewrite of it. A
written result keeps only the citation marks that exist.

Like the research graph's, each step is a module-level function `(state, runtime, deps) -> update` with one
`TeamDeps`; the sandbox is one of the deps (`run_code`), so the routing logic can be tested without it.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from functools import partial
from typing import Annotated, Any, Literal, NotRequired, Protocol, TypeAlias

from langchain_core.language_models import BaseChatModel
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import Checkpointer, Command
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from agentstack._structured import StructuredCall
from agentstack.errors import GraphInputError, ModelOutputError
from agentstack.graphs._grounding import on_topic
from agentstack.graphs._knobs import read_knobs
from agentstack.graphs._metadata import run_metadata
from agentstack.graphs._registry import GraphEntry, GraphParts, ResultView
from agentstack.graphs._research import AnswerStyle, build_research_graph
from agentstack.graphs._research_state import Citation, Evidence, ResearchContext
from agentstack.graphs._sandbox import SandboxResult, run_python
from agentstack.graphs._support import Embedder
from agentstack.graphs._tools import format_sandbox_result
from agentstack.prompts import Prompt, PromptLibrary

__all__ = [
    "TEAM_GRAPH",
    "CodeDraft",
    "Review",
    "Route",
    "TeamContext",
    "TeamDeps",
    "TeamGraph",
    "TeamInput",
    "TeamPrompts",
    "TeamState",
    "WorkItem",
    "build_team_graph",
    "compose_team_graph",
]

Worker = Literal["researcher", "coder", "reviewer"]
_CITE = re.compile(r"\[(S\d+)\]")


class WorkItem(TypedDict):
    """One worker's contribution, as the coordinator and synthesizer see it."""

    role: Worker
    instruction: str
    content: str  # what the worker produced, in full
    summary: str  # a short form for the coordinator's prompt
    ok: bool


class TeamInput(TypedDict):
    """What a team run starts from."""

    task: str


class TeamState(TypedDict):
    """The team graph's state."""

    task: str
    steps: NotRequired[int]  # coordinator decisions taken
    instruction: NotRequired[str]
    work: NotRequired[Annotated[list[WorkItem], operator.add]]
    feedback: NotRequired[str]  # the reviewer's latest request for changes ("" once accepted)
    accepted: NotRequired[bool]
    citations: NotRequired[Annotated[list[Citation], operator.add]]
    cited_evidence: NotRequired[Annotated[list[Evidence], operator.add]]  # the cited passages, whole, same ids
    tokens_used: NotRequired[Annotated[int, operator.add]]
    output: NotRequired[str]
    status: NotRequired[Literal["done", "step_budget_exhausted"]]


class Route(BaseModel):
    next: Literal["researcher", "coder", "reviewer", "synthesize"]
    instruction: str = Field(default="", max_length=300, description="one short instruction for that worker")


class CodeDraft(BaseModel):
    code: str = Field(max_length=6000, description="a complete Python 3 program that prints its result")
    explanation: str = Field(default="", max_length=300, description="one line: what the program does")


class Review(BaseModel):
    verdict: Literal["accept", "revise"]
    feedback: str = Field(default="", max_length=500, description="what to change (revise)")


class FinalOutput(BaseModel):
    output: str = Field(max_length=2000)  # like every text field: a reply that always fits the token limit


@dataclass(frozen=True)
class TeamContext(ResearchContext):
    """The team's knobs; the research knobs (inherited) reach the researcher subgraph."""

    max_steps: int = 8  # coordinator decisions before the synthesizer must write
    code_timeout_s: float = 10.0
    code_memory_mb: int = 512


TeamGraph: TypeAlias = CompiledStateGraph[TeamState, TeamContext, TeamInput, TeamState]


# -- dependencies -------------------------------------------------------------------------------------
class Researcher(Protocol):
    """The researcher: a research graph compiled without a checkpointer (so it saves through the team's)."""

    async def ainvoke(self, input: Any, config: Any = ..., **kwargs: Any) -> Any: ...


CodeRunner = Callable[..., Awaitable[SandboxResult]]  # (code, *, timeout_s, memory_mb), like `run_python`


@dataclass(frozen=True)
class TeamPrompts:
    coordinator: Prompt
    coder: Prompt
    reviewer: Prompt
    synthesizer: Prompt

    @classmethod
    def load(cls, library: PromptLibrary) -> TeamPrompts:
        return cls(**{f.name: library.get("team", f.name) for f in fields(cls)})

    def all(self) -> list[Prompt]:
        return [getattr(self, f.name) for f in fields(self)]


@dataclass(frozen=True)
class TeamDeps:
    """What the team's steps call: the model (one structured call per output), prompts, researcher, sandbox.

    `embedder` tells an on-topic instruction for the researcher from noise (without one, shared words do);
    `answer_style` is the researcher's; "extractive" (a small model) also has the team research first and
    compose its result from the work rather than have the model rewrite it.
    """

    prompts: TeamPrompts
    router: StructuredCall[Route]
    coder: StructuredCall[CodeDraft]
    reviewer: StructuredCall[Review]
    synthesizer: StructuredCall[FinalOutput]
    researcher: Researcher | None = None
    run_code: CodeRunner = run_python
    embedder: Embedder | None = None
    answer_style: AnswerStyle = "written"

    def style(self, knobs: ResearchContext) -> AnswerStyle:
        return self.answer_style if knobs.answer_style == "auto" else knobs.answer_style

    @classmethod
    def create(
        cls,
        model: BaseChatModel,
        *,
        researcher: Researcher | None,
        prompts: PromptLibrary | None = None,
        run_code: CodeRunner = run_python,
        embedder: Embedder | None = None,
        answer_style: AnswerStyle = "written",
    ) -> TeamDeps:
        return cls(
            prompts=TeamPrompts.load(prompts or PromptLibrary()),
            router=StructuredCall(model, Route),
            coder=StructuredCall(model, CodeDraft),
            reviewer=StructuredCall(model, Review),
            synthesizer=StructuredCall(model, FinalOutput),
            researcher=researcher,
            run_code=run_code,
            embedder=embedder,
            answer_style=answer_style,
        )


# -- steps --------------------------------------------------------------------------------------------
async def coordinate(state: TeamState, runtime: Runtime[TeamContext], deps: TeamDeps) -> Command[Any]:
    """Route to the next worker (structured output), or to the synthesizer once the step budget is spent."""
    task = state.get("task")
    if not isinstance(task, str) or not task.strip():
        raise GraphInputError(
            f"the team graph needs a non-empty string `task`, got {task!r}", fix='invoke it with {"task": "..."}'
        )
    steps = state.get("steps", 0)
    knobs = read_knobs(runtime, TeamContext)
    if steps >= knobs.max_steps:
        runtime.stream_writer({"stage": "coordinator", "next": "synthesize", "why": "step budget spent"})
        return Command(goto="synthesizer", update={"status": "step_budget_exhausted"})
    if deps.style(knobs) == "extractive" and deps.researcher is not None and not state.get("work"):
        # A small coordinator with nothing to go on routed docs questions to the coder ("python" was the
        # result); the facts come first, and it routes from them.
        runtime.stream_writer({"stage": "coordinator", "next": "researcher", "why": "extractive teams research first"})
        return Command(goto="researcher", update={"steps": steps + 1, "instruction": task})
    route, tokens = await deps.router(
        deps.prompts.coordinator, task=task, work=state.get("work", []), feedback=state.get("feedback", "")
    )
    target = "synthesizer" if route.next == "synthesize" else route.next
    runtime.stream_writer({"stage": "coordinator", "next": route.next, "instruction": route.instruction})
    update = {"steps": steps + 1, "instruction": route.instruction or task, "tokens_used": tokens}
    return Command(goto=target, update=update)


async def research(state: TeamState, runtime: Runtime[TeamContext], deps: TeamDeps) -> dict[str, Any]:
    """The research graph on the instruction (the task when the instruction is off its topic); its citations
    become the team's, numbered after those of earlier research."""
    task, instruction = state["task"], state.get("instruction") or state["task"]
    kept, _ = await on_topic([instruction], task, deps.embedder)
    question = instruction if kept else task
    if question != instruction:
        runtime.stream_writer({"stage": "researcher", "question": question, "off_topic_instruction": instruction})
    if deps.researcher is None:  # tell the coordinator rather than fail the run: it can route elsewhere
        return {"work": [_work("researcher", question, "no researcher is configured for this team", ok=False)]}
    result = await deps.researcher.ainvoke({"question": question})
    citations: list[Citation] = result.get("citations", [])
    # every research run numbers its evidence from S1: the team's continue after the citations it has
    ids = {c["id"]: f"S{len(state.get('citations', [])) + n}" for n, c in enumerate(citations, 1)}
    answer = _CITE.sub(lambda m: f"[{ids.get(m.group(1), m.group(1))}]", str(result.get("answer", "")))
    cited = [{**e, "id": ids[e["id"]]} for e in result.get("evidence", []) if e["id"] in ids]
    return {
        "work": [_work("researcher", question, answer, ok=bool(citations))],
        "citations": [{**c, "id": ids[c["id"]]} for c in citations],
        "cited_evidence": cited,
        "tokens_used": result.get("tokens_used", 0),
    }


async def code(state: TeamState, runtime: Runtime[TeamContext], deps: TeamDeps) -> dict[str, Any]:
    """A program for the instruction, run in the sandbox; a reply the model cannot finish is failed work."""
    knobs = read_knobs(runtime, TeamContext)
    instruction = state.get("instruction") or state["task"]
    previous = next((w["content"] for w in reversed(state.get("work", [])) if w["role"] == "coder"), "")
    try:
        draft, tokens = await deps.coder(
            deps.prompts.coder,
            task=state["task"],
            instruction=instruction,
            feedback=state.get("feedback", ""),
            previous=previous[-2000:],
        )
    except ModelOutputError as exc:
        # Like a program that fails: the coordinator sees it and routes on (the coder again, or elsewhere)
        # rather than the whole run being lost to one reply the model could not finish.
        runtime.stream_writer({"stage": "coder", "error": exc.problem})
        failed = _work("coder", instruction, f"the coder wrote no usable program: {exc.problem}", ok=False)
        return {"work": [failed], "tokens_used": exc.tokens_used}
    result = await deps.run_code(draft.code, timeout_s=knobs.code_timeout_s, memory_mb=knobs.code_memory_mb)
    runtime.stream_writer({"stage": "coder", "exit_code": result.exit_code, "timed_out": result.timed_out})
    content = f"```python\n{draft.code}\n```\n{format_sandbox_result(result)}"
    return {"work": [_work("coder", instruction, content, ok=result.ok)], "tokens_used": tokens}


async def review(state: TeamState, runtime: Runtime[TeamContext], deps: TeamDeps) -> dict[str, Any]:
    """Accept the latest work, or send it back with feedback the coordinator reads."""
    latest = next((w for w in reversed(state.get("work", [])) if w["role"] != "reviewer"), None)
    verdict, tokens = await deps.reviewer(
        deps.prompts.reviewer,
        task=state["task"],
        role=latest["role"] if latest else "nobody",
        work=latest["content"] if latest else "(nothing yet)",
    )
    accepted = verdict.verdict == "accept" and latest is not None
    feedback = "" if accepted else (verdict.feedback or "the work does not do the task yet")
    runtime.stream_writer({"stage": "reviewer", "verdict": verdict.verdict, "feedback": feedback})
    item = _work("reviewer", "review the latest work", "accepted" if accepted else f"revise: {feedback}", ok=accepted)
    return {"work": [item], "accepted": accepted, "feedback": feedback, "tokens_used": tokens}


async def synthesize(state: TeamState, runtime: Runtime[TeamContext], deps: TeamDeps) -> dict[str, Any]:
    """The result from the workers' contributions (the reviews left out). With extractive answers (a small
    model) it is composed of the work itself: the research answers, then the latest program that ran and its
    output (one that failed only when nothing else is there to show: the CPU Gemma's coder, sent a question,
    wrote `code` and appended its NameError to a cited answer); a 270M model's rewrite of them lost their
    grounding ("python", "output_0000.txt" as a team's result). Written, the synthesizer writes it, keeping only
    the citation marks of passages the research cited."""
    status = state.get("status") or "done"
    work = [w for w in state.get("work", []) if w["role"] != "reviewer"]
    if deps.style(read_knobs(runtime, TeamContext)) == "extractive" and work:
        researched = [w["content"] for w in work if w["role"] == "researcher" and w["ok"]]
        programs = [w for w in work if w["role"] == "coder"]
        failed = programs[-1] if programs and not researched else None
        program = next((w for w in reversed(programs) if w["ok"]), failed)
        parts = [*dict.fromkeys(researched), *([program["content"]] if program else [])]
        if parts:
            runtime.stream_writer({"stage": "synthesizer", "composed_from": len(parts)})
            return {"output": "\n\n".join(parts), "status": status}
    final, tokens = await deps.synthesizer(deps.prompts.synthesizer, task=state["task"], work=work)
    cited = {c["id"] for c in state.get("citations", [])}
    output = _CITE.sub(lambda m: m.group(0) if m.group(1) in cited else "", final.output)
    return {"output": re.sub(r"[ \t]+([.,;:])", r"\1", output).strip(), "status": status, "tokens_used": tokens}


# -- the graph ----------------------------------------------------------------------------------------
def compose_team_graph(deps: TeamDeps, *, checkpointer: Checkpointer = None, name: str = "team") -> TeamGraph:
    """The steps bound to `deps`, wired: every worker reports back to the coordinator."""
    builder = StateGraph(TeamState, context_schema=TeamContext, input_schema=TeamInput)
    workers = ("researcher", "coder", "reviewer")
    builder.add_node("coordinator", partial(coordinate, deps=deps), destinations=(*workers, "synthesizer"))
    builder.add_node("researcher", partial(research, deps=deps))
    builder.add_node("coder", partial(code, deps=deps))
    builder.add_node("reviewer", partial(review, deps=deps))
    builder.add_node("synthesizer", partial(synthesize, deps=deps))
    builder.add_edge(START, "coordinator")
    for worker in workers:
        builder.add_edge(worker, "coordinator")
    builder.add_edge("synthesizer", END)
    graph = builder.compile(checkpointer=checkpointer, name=name)
    return graph.with_config(metadata=_metadata(deps))


def build_team_graph(
    model: BaseChatModel,
    *,
    researcher: Researcher | None,
    prompts: PromptLibrary | None = None,
    checkpointer: Checkpointer = None,
    name: str = "team",
    embedder: Embedder | None = None,
    answer_style: AnswerStyle = "written",
) -> TeamGraph:
    """Compile the team; `researcher` is a research graph compiled without a checkpointer (a subgraph), or None.
    `embedder` and `answer_style` are the researcher's (see `TeamDeps`)."""
    deps = TeamDeps.create(model, researcher=researcher, prompts=prompts, embedder=embedder, answer_style=answer_style)
    return compose_team_graph(deps, checkpointer=checkpointer, name=name)


def _metadata(deps: TeamDeps) -> dict[str, str]:
    metadata = run_metadata("team", deps.prompts.all())
    nested = (getattr(deps.researcher, "config", None) or {}).get("metadata", {}).get("agentstack_prompts")
    if nested:  # the researcher's prompt versions shape the result too
        metadata["agentstack_prompts"] = " ".join(sorted({*metadata["agentstack_prompts"].split(), *nested.split()}))
    return metadata


def _build_from_parts(parts: GraphParts, **options: Any) -> TeamGraph:
    # No retriever (a stack opened with retrieval=False): a team without a researcher, which the coordinator
    # is told about, rather than a research graph that cannot search. The researcher saves through the team.
    prompts = options.get("prompts")
    researcher = (
        build_research_graph(
            parts.model, parts.retriever, prompts=prompts, embedder=parts.embedder, answer_style=parts.answer_style
        )
        if parts.retriever is not None
        else None
    )
    options = {"embedder": parts.embedder, "answer_style": parts.answer_style} | options
    return build_team_graph(parts.model, researcher=researcher, checkpointer=parts.checkpointer, **options)


def _render(values: Mapping[str, Any]) -> ResultView:
    return ResultView(
        title="result",
        detail=str(values.get("status")),
        text=str(values.get("output", "")),
        citations=values.get("citations", []),
        # the team keeps only the passages its researcher cited (whole): evaluation ranks and checks those
        contexts=values.get("cited_evidence", []),
    )


TEAM_GRAPH: GraphEntry[TeamState, TeamContext, TeamInput] = GraphEntry(
    name="team",
    description="A coordinator routes a task to a researcher, a sandboxed coder and a reviewer.",
    build=_build_from_parts,
    state=TeamState,
    context=TeamContext,
    input=TeamInput,
    input_from_task=lambda task: {"task": task},
    render=_render,
    searches_documents=True,
)


def _work(role: Worker, instruction: str, content: str, *, ok: bool) -> WorkItem:
    summary = content if len(content) <= 400 else content[:400] + "..."
    return {"role": role, "instruction": instruction, "content": content, "summary": summary, "ok": ok}
