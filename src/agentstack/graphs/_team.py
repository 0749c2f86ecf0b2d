"""The team graph: a coordinator routes the task to a researcher, a coder and a reviewer, then a synthesizer.

    coordinator --(structured route)--> researcher | coder | reviewer --> coordinator ... --> synthesizer --> END

The researcher is the research graph run as a subgraph (its checkpoints, interrupts and streamed tokens
nest under the team's thread). The coder writes a program and runs it in the sandbox (timeout, memory
limit, no network, a temporary directory). The reviewer accepts the latest work or sends it back with
feedback the coordinator sees. A step budget bounds the loop: when it is spent the synthesizer writes
the result from what exists, and the status says the budget ran out.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NotRequired, TypedDict

from langchain_core.language_models import BaseChatModel
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Checkpointer, Command
from pydantic import BaseModel, Field

from agentstack._structured import StructuredCall
from agentstack.errors import GraphInputError, ModelOutputError
from agentstack.graphs._metadata import run_metadata
from agentstack.graphs._research import Citation, ResearchContext
from agentstack.graphs._tools import format_sandbox_result
from agentstack.prompts import PromptLibrary

__all__ = ["CodeDraft", "Review", "Route", "TeamContext", "TeamInput", "TeamState", "WorkItem", "build_team_graph"]

PROMPTS = ("coordinator", "coder", "reviewer", "synthesizer")
Worker = Literal["researcher", "coder", "reviewer"]


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


def _knobs(runtime: Runtime[Any]) -> TeamContext:
    return runtime.context if isinstance(runtime.context, TeamContext) else TeamContext()


def build_team_graph(
    model: BaseChatModel,
    *,
    researcher: Any | None,
    prompts: PromptLibrary | None = None,
    checkpointer: Checkpointer = None,
    name: str = "team",
) -> Any:
    """Compile the team; `researcher` is a research graph compiled without a checkpointer (a subgraph), or None."""
    library = prompts or PromptLibrary()
    prompt = {n: library.get("team", n) for n in PROMPTS}
    route_call = StructuredCall(model, Route)
    code_call = StructuredCall(model, CodeDraft)
    review_call = StructuredCall(model, Review)
    final_call = StructuredCall(model, FinalOutput)

    async def coordinator(state: TeamState, runtime: Runtime[TeamContext]) -> Command[Any]:
        task = state.get("task")
        if not isinstance(task, str) or not task.strip():
            raise GraphInputError(
                f"the team graph needs a non-empty string `task`, got {task!r}", fix='invoke it with {"task": "..."}'
            )
        steps = state.get("steps", 0)
        if steps >= _knobs(runtime).max_steps:
            get_stream_writer()({"stage": "coordinator", "next": "synthesize", "why": "step budget spent"})
            return Command(goto="synthesizer", update={"status": "step_budget_exhausted"})
        route, tokens = await route_call(
            prompt["coordinator"], task=task, work=state.get("work", []), feedback=state.get("feedback", "")
        )
        target = "synthesizer" if route.next == "synthesize" else route.next
        get_stream_writer()({"stage": "coordinator", "next": route.next, "instruction": route.instruction})
        update = {"steps": steps + 1, "instruction": route.instruction or task, "tokens_used": tokens}
        return Command(goto=target, update=update)

    async def research(state: TeamState) -> dict[str, Any]:
        question = state.get("instruction") or state["task"]
        if researcher is None:  # tell the coordinator rather than fail the run: it can route elsewhere
            return {"work": [_work("researcher", question, "no researcher is configured for this team", ok=False)]}
        result = await researcher.ainvoke({"question": question})
        answer = str(result.get("answer", ""))
        item = _work("researcher", question, answer, ok=bool(result.get("citations")))
        return {"work": [item], "citations": result.get("citations", []), "tokens_used": result.get("tokens_used", 0)}

    async def code(state: TeamState, runtime: Runtime[TeamContext]) -> dict[str, Any]:
        from agentstack.graphs._sandbox import run_python

        knobs = _knobs(runtime)
        instruction = state.get("instruction") or state["task"]
        previous = next((w["content"] for w in reversed(state.get("work", [])) if w["role"] == "coder"), "")
        try:
            draft, tokens = await code_call(
                prompt["coder"],
                task=state["task"],
                instruction=instruction,
                feedback=state.get("feedback", ""),
                previous=previous[-2000:],
            )
        except ModelOutputError as exc:
            # Like a program that fails: the coordinator sees it and routes on (the coder again, or elsewhere)
            # rather than the whole run being lost to one reply the model could not finish.
            get_stream_writer()({"stage": "coder", "error": exc.problem})
            failed = _work("coder", instruction, f"the coder wrote no usable program: {exc.problem}", ok=False)
            return {"work": [failed], "tokens_used": exc.tokens_used}
        result = await run_python(draft.code, timeout_s=knobs.code_timeout_s, memory_mb=knobs.code_memory_mb)
        get_stream_writer()({"stage": "coder", "exit_code": result.exit_code, "timed_out": result.timed_out})
        content = f"```python\n{draft.code}\n```\n{format_sandbox_result(result)}"
        return {"work": [_work("coder", instruction, content, ok=result.ok)], "tokens_used": tokens}

    async def review(state: TeamState) -> dict[str, Any]:
        latest = next((w for w in reversed(state.get("work", [])) if w["role"] != "reviewer"), None)
        verdict, tokens = await review_call(
            prompt["reviewer"],
            task=state["task"],
            role=latest["role"] if latest else "nobody",
            work=latest["content"] if latest else "(nothing yet)",
        )
        accepted = verdict.verdict == "accept" and latest is not None
        feedback = "" if accepted else (verdict.feedback or "the work does not do the task yet")
        get_stream_writer()({"stage": "reviewer", "verdict": verdict.verdict, "feedback": feedback})
        item = _work(
            "reviewer", "review the latest work", "accepted" if accepted else f"revise: {feedback}", ok=accepted
        )
        return {"work": [item], "accepted": accepted, "feedback": feedback, "tokens_used": tokens}

    async def synthesize(state: TeamState) -> dict[str, Any]:
        work = [w for w in state.get("work", []) if w["role"] != "reviewer"]
        final, tokens = await final_call(prompt["synthesizer"], task=state["task"], work=work)
        return {"output": final.output, "status": state.get("status") or "done", "tokens_used": tokens}

    builder = StateGraph(TeamState, context_schema=TeamContext, input_schema=TeamInput)
    builder.add_node("coordinator", coordinator, destinations=("researcher", "coder", "reviewer", "synthesizer"))
    builder.add_node("researcher", research)
    builder.add_node("coder", code)
    builder.add_node("reviewer", review)
    builder.add_node("synthesizer", synthesize)
    builder.add_edge(START, "coordinator")
    for worker in ("researcher", "coder", "reviewer"):
        builder.add_edge(worker, "coordinator")
    builder.add_edge("synthesizer", END)
    graph = builder.compile(checkpointer=checkpointer, name=name)
    metadata = run_metadata("team", [prompt[n] for n in PROMPTS])
    nested = (getattr(researcher, "config", None) or {}).get("metadata", {}).get("agentstack_prompts")
    if nested:  # the researcher's prompt versions shape the result too
        metadata["agentstack_prompts"] = " ".join(sorted({*metadata["agentstack_prompts"].split(), *nested.split()}))
    return graph.with_config(metadata=metadata)


def _work(role: Worker, instruction: str, content: str, *, ok: bool) -> WorkItem:
    summary = content if len(content) <= 400 else content[:400] + "..."
    return {"role": role, "instruction": instruction, "content": content, "summary": summary, "ok": ok}
