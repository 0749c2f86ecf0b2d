"""The research graph: plan -> parallel search -> analyze -> refine while unsure -> cited answer.

    plan --Send per query--> search --> analyze --(confident or out of budget)--> answer --> [review] --> END
                               ^            |
                               +-- refine <-+ (confidence < threshold, iterations and tokens left)

A failed search (retriever down, a tool raising) is recorded in `failures` and the run goes on with what
the other searches found. Evidence gets short ids (S1, S2...) a small model can copy; the answer's
citations are checked against the evidence actually retrieved, and an invented id is removed, never shown.
Below `review_threshold` the answer waits for a human (`interrupt`): approve, edit, or reject with a
reason, which sends the research round again with the reason as its gap.
"""

from __future__ import annotations

import hashlib
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NotRequired, Protocol, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.tools import BaseTool
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Checkpointer, Command, Send
from pydantic import BaseModel, Field

from agentstack._structured import StructuredCall
from agentstack.errors import GraphInputError, ModelOutputError
from agentstack.graphs._decisions import Decision, ask_decision
from agentstack.graphs._metadata import run_metadata
from agentstack.prompts import PromptLibrary

__all__ = [
    "Analysis",
    "Citation",
    "Evidence",
    "FinalAnswer",
    "Plan",
    "ResearchContext",
    "ResearchInput",
    "ResearchState",
    "SearchFailure",
    "build_research_graph",
    "verify_citations",
]

PROMPTS = ("plan", "analyze", "refine", "answer", "revise")
_CITE = re.compile(r"\[([Ss]\d+)\]")


# -- state ------------------------------------------------------------------------------------------
class Evidence(TypedDict):
    """A passage (or graph paths, or a tool's output) one search found, under a short id the model can cite."""

    id: str  # "S1"...: assigned when merged into the state, in a deterministic order
    query: str
    kind: Literal["chunk", "graph", "tool"]
    source: str
    chunk_id: str | None
    text: str
    score: float


class SearchFailure(TypedDict):
    """A search that raised: kept in the state so the answer can say what could not be searched."""

    query: str
    searcher: str
    error: str


class Citation(TypedDict):
    """A citation of the final answer, resolved to the evidence (and chunk) it points at."""

    id: str
    source: str
    chunk_id: str | None
    kind: str
    quote: str


def merge_evidence(existing: list[Evidence], new: list[Evidence]) -> list[Evidence]:
    """Append what is new (by chunk, or by text for graph/tool evidence), numbering it S<n>."""
    merged = list(existing or [])
    seen = {_evidence_key(e) for e in merged}
    for item in new or []:
        key = _evidence_key(item)
        if key in seen:
            continue
        seen.add(key)
        merged.append({**item, "id": f"S{len(merged) + 1}"})
    return merged


def _evidence_key(item: Evidence) -> str:
    if item.get("chunk_id") and item["kind"] == "chunk":
        return f"chunk:{item['chunk_id']}"
    return f"{item['kind']}:{item['source']}:" + hashlib.sha1(item["text"].encode()).hexdigest()


class ResearchInput(TypedDict):
    """What a research run starts from."""

    question: str


class ResearchState(TypedDict):
    """The research graph's state; list fields with reducers accumulate across parallel searches and rounds."""

    question: str
    queries: NotRequired[list[str]]  # this round's sub-queries
    asked: NotRequired[Annotated[list[str], operator.add]]
    evidence: NotRequired[Annotated[list[Evidence], merge_evidence]]
    failures: NotRequired[Annotated[list[SearchFailure], operator.add]]
    iteration: NotRequired[int]  # search rounds done
    tokens_used: NotRequired[Annotated[int, operator.add]]
    draft: NotRequired[str]
    confidence: NotRequired[float]
    gaps: NotRequired[list[str]]
    feedback: NotRequired[str]  # a reviewer's reason for rejecting the last answer
    answer: NotRequired[str]
    citations: NotRequired[list[Citation]]
    removed_citations: NotRequired[list[str]]  # ids the model cited that no search returned
    status: NotRequired[Literal["answered", "budget_exhausted", "approved", "edited", "rejected"]]


class _SearchTask(TypedDict):
    query: str


# -- model outputs -----------------------------------------------------------------------------------
# Lengths are part of the JSON schema, so a grammar-constrained server stops a small model that rambles
# instead of letting it fill the context window.
Query = Annotated[str, Field(min_length=1, max_length=120)]
Phrase = Annotated[str, Field(max_length=160)]


class Plan(BaseModel):
    """The planner's (and refiner's) structured output."""

    queries: list[Query] = Field(description="short keyword search queries", min_length=1, max_length=5)


class Analysis(BaseModel):
    """The analyst's structured output: a draft, how sure it is, and what is missing."""

    draft: str = Field(max_length=1500, description="an answer draft from the evidence, citing ids like [S1]")
    confidence: float = Field(description="0 to 1: how fully the evidence answers the question")
    gaps: list[Phrase] = Field(default_factory=list, max_length=3, description="what the evidence does not tell")
    cited: list[Annotated[str, Field(max_length=8)]] = Field(
        default_factory=list, max_length=20, description="evidence ids the draft relies on"
    )


class FinalAnswer(BaseModel):
    """The writer's structured output; its citations are checked against the evidence before anyone sees them."""

    answer: str = Field(max_length=2000, description="the answer, each claim followed by its evidence id like [S2]")
    citations: list[Annotated[str, Field(max_length=8)]] = Field(
        default_factory=list, max_length=20, description="the evidence ids cited"
    )


# -- knobs ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResearchContext:
    """Runtime knobs, passed per run as `context=ResearchContext(...)` (or a subclass, e.g. the team's)."""

    k: int = 5  # chunks per search
    max_queries: int = 3  # sub-queries per round
    max_iterations: int = 3  # search rounds
    confidence_threshold: float = 0.7  # answer once the analysis is at least this sure
    review_threshold: float | None = None  # below this confidence a human reviews the answer; None: never
    token_budget: int | None = None  # stop refining once the run used this many tokens
    evidence_chars: int = 6000  # evidence text shown to the model per step
    filters: dict[str, Any] = field(default_factory=dict)  # metadata filters for the retriever
    graph_hops: int = 2


def _knobs(runtime: Runtime[Any] | None) -> ResearchContext:
    context = getattr(runtime, "context", None)
    return context if isinstance(context, ResearchContext) else ResearchContext()


# -- what searches ------------------------------------------------------------------------------------
class Retriever(Protocol):
    async def aretrieve(self, query: str, k: int = ..., filters: Any = ...) -> Any: ...


class GraphSearcher(Protocol):
    async def aretrieve(self, query: str, hops: int = ...) -> Any: ...


# -- the builder ------------------------------------------------------------------------------------
def build_research_graph(
    model: BaseChatModel,
    retriever: Retriever | None,
    *,
    graph_retriever: GraphSearcher | None = None,
    tools: Sequence[BaseTool] = (),
    prompts: PromptLibrary | None = None,
    checkpointer: Checkpointer = None,
    name: str = "research",
) -> Any:
    """Compile the research graph; `retriever` is a `HybridRetriever` (or anything with `aretrieve`).

    `tools` are searched too, each called with the sub-query as its one input. Leave `checkpointer` unset
    when this graph is a subgraph: it then saves through its parent's.
    """
    if retriever is None and graph_retriever is None and not tools:
        raise GraphInputError(
            "the research graph needs something to search", fix="pass a retriever, a graph_retriever or tools"
        )
    library = prompts or PromptLibrary()
    prompt = {n: library.get("research", n) for n in PROMPTS}
    plan_call = StructuredCall(model, Plan)
    analyze_call = StructuredCall(model, Analysis)
    answer_call = StructuredCall(model, FinalAnswer)

    async def plan(state: ResearchState, runtime: Runtime[ResearchContext]) -> dict[str, Any]:
        knobs = _knobs(runtime)
        question = _validated_question(state)
        reply, tokens = await plan_call(prompt["plan"], question=question, max_queries=knobs.max_queries)
        # The question itself is always searched: a weak planner then costs recall, never all of it.
        queries = _fresh([question, *reply.queries], [], knobs.max_queries)
        get_stream_writer()({"stage": "plan", "queries": queries})
        return {"queries": queries, "iteration": 1, "tokens_used": tokens}

    async def search(task: _SearchTask, runtime: Runtime[ResearchContext]) -> dict[str, Any]:
        knobs = _knobs(runtime)
        query = task["query"]
        found: list[Evidence] = []
        failures: list[SearchFailure] = []
        if retriever is not None:
            try:
                result = await retriever.aretrieve(query, k=knobs.k, filters=knobs.filters or None)
                found += [_chunk_evidence(query, hit) for hit in result]
            except Exception as exc:
                failures.append(_failure(query, "retriever", exc))
        if graph_retriever is not None:
            try:
                paths = await graph_retriever.aretrieve(query, hops=knobs.graph_hops)
                context = paths.as_context()
                if context:
                    found.append(_evidence(query, "graph", "knowledge graph", None, context, 0.0))
            except Exception as exc:
                failures.append(_failure(query, "knowledge graph", exc))
        for tool in tools:
            try:
                output = await tool.ainvoke(query)
                if str(output).strip():
                    found.append(_evidence(query, "tool", tool.name, None, str(output), 0.0))
            except Exception as exc:
                failures.append(_failure(query, tool.name, exc))
        get_stream_writer()({"stage": "search", "query": query, "found": len(found), "failed": len(failures)})
        return {"evidence": found, "failures": failures, "asked": [query]}

    async def analyze(state: ResearchState, runtime: Runtime[ResearchContext]) -> dict[str, Any]:
        knobs = _knobs(runtime)
        evidence = _shown(state.get("evidence", []), knobs.evidence_chars)
        reply, tokens = await analyze_call(prompt["analyze"], question=state["question"], evidence=evidence)
        confidence = min(1.0, max(0.0, float(reply.confidence)))
        if not state.get("evidence"):
            confidence = 0.0  # nothing was found: whatever the model says, it is not grounded
        get_stream_writer()({"stage": "analyze", "confidence": confidence, "gaps": reply.gaps})
        return {"draft": reply.draft, "confidence": confidence, "gaps": reply.gaps, "tokens_used": tokens}

    def after_analyze(state: ResearchState, runtime: Runtime[ResearchContext]) -> str:
        knobs = _knobs(runtime)
        if state.get("confidence", 0.0) >= knobs.confidence_threshold:
            return "answer"
        if state.get("iteration", 0) >= knobs.max_iterations:
            return "answer"
        if knobs.token_budget is not None and state.get("tokens_used", 0) >= knobs.token_budget:
            return "answer"
        return "refine"

    async def refine(state: ResearchState, runtime: Runtime[ResearchContext]) -> dict[str, Any]:
        knobs = _knobs(runtime)
        gaps = state.get("gaps") or []
        reply, tokens = await plan_call(
            prompt["refine"],
            question=state["question"],
            asked=state.get("asked", []),
            gaps=gaps,
            max_queries=knobs.max_queries,
        )
        queries = _fresh(reply.queries + gaps, state.get("asked", []), knobs.max_queries)
        get_stream_writer()({"stage": "refine", "queries": queries})
        return {"queries": queries, "iteration": state.get("iteration", 0) + 1, "tokens_used": tokens}

    def fan_out(state: ResearchState) -> list[Send] | str:
        queries = state.get("queries") or []
        return [Send("search", {"query": q}) for q in queries] if queries else "answer"

    async def answer(state: ResearchState, runtime: Runtime[ResearchContext]) -> dict[str, Any]:
        knobs = _knobs(runtime)
        evidence = state.get("evidence", [])
        shown = _shown(evidence, knobs.evidence_chars)
        reply, tokens = await answer_call(
            prompt["answer"],
            question=state["question"],
            draft=state.get("draft", ""),
            feedback=state.get("feedback", ""),
            evidence=shown,
        )
        text, citations, removed = verify_citations(reply.answer, reply.citations, evidence)
        if not citations and shown:  # nothing it says is backed by a passage: one revision
            try:
                revised, more = await answer_call(
                    prompt["revise"],
                    question=state["question"],
                    answer=text,
                    evidence=shown,
                    ids=[e["id"] for e in shown],
                )
            except ModelOutputError as exc:
                # The revision is an improvement, not the answer: when the model cannot finish it, the verified
                # first answer stands (uncited, which `citations == []` says) and the run is not lost.
                get_stream_writer()({"stage": "revise", "error": exc.problem})
                tokens += exc.tokens_used
            else:
                tokens += more
                text, citations, removed_again = verify_citations(revised.answer, revised.citations, evidence)
                removed += removed_again
        confident = state.get("confidence", 0.0) >= knobs.confidence_threshold
        get_stream_writer()({"stage": "answer", "citations": [c["id"] for c in citations], "removed": removed})
        return {
            "answer": text,
            "citations": citations,
            "removed_citations": removed,
            "status": "answered" if confident else "budget_exhausted",
            "tokens_used": tokens,
        }

    def after_answer(state: ResearchState, runtime: Runtime[ResearchContext]) -> str:
        threshold = _knobs(runtime).review_threshold
        return "review" if threshold is not None and state.get("confidence", 0.0) < threshold else END

    def review(state: ResearchState, runtime: Runtime[ResearchContext]) -> Command[Any]:
        decision = ask_decision(
            {
                "type": "review",
                "question": state["question"],
                "answer": state.get("answer", ""),
                "confidence": state.get("confidence", 0.0),
                "citations": state.get("citations", []),
                "resume_with": {"action": "approve | edit | reject", "value": "edit: the answer", "reason": "reject"},
            },
            what="the research answer",
            check=_answer_edit,
        )
        if decision.action == "approve":
            return Command(goto=END, update={"status": "approved"})
        if decision.action == "edit":
            text, citations, removed = verify_citations(decision.value, [], state.get("evidence", []))
            update = {"answer": text, "citations": citations, "removed_citations": removed, "status": "edited"}
            return Command(goto=END, update=update)
        if state.get("iteration", 0) < _knobs(runtime).max_iterations:
            return Command(goto="refine", update={"gaps": [decision.reason or ""], "feedback": decision.reason})
        return Command(goto=END, update={"status": "rejected", "feedback": decision.reason})

    builder = StateGraph(ResearchState, context_schema=ResearchContext, input_schema=ResearchInput)
    builder.add_node("plan", plan)
    builder.add_node("search", search)
    builder.add_node("analyze", analyze)
    builder.add_node("refine", refine)
    builder.add_node("answer", answer)
    builder.add_node("review", review, destinations=("refine", END))
    builder.add_edge(START, "plan")
    builder.add_conditional_edges("plan", fan_out, ["search", "answer"])
    builder.add_edge("search", "analyze")
    builder.add_conditional_edges("analyze", after_analyze, ["answer", "refine"])
    builder.add_conditional_edges("refine", fan_out, ["search", "answer"])
    builder.add_conditional_edges("answer", after_answer, ["review", END])
    graph = builder.compile(checkpointer=checkpointer, name=name)
    return graph.with_config(metadata=run_metadata("research", [prompt[n] for n in PROMPTS]))


def _answer_edit(decision: Decision) -> None:
    if decision.action == "edit" and not isinstance(decision.value, str):
        raise GraphInputError(
            f"an edit of the research answer needs the new answer as text, got {decision.value!r}",
            fix='resume with {"action": "edit", "value": "the corrected answer [S1]"}',
        )


def verify_citations(
    text: str, listed: Sequence[str], evidence: Sequence[Evidence]
) -> tuple[str, list[Citation], list[str]]:
    """(text without invented markers, the citations that exist, the ids that were removed)."""
    by_id = {e["id"]: e for e in evidence}
    text = _CITE.sub(lambda m: f"[{m.group(1).upper()}]", text)  # small models write [s1] for [S1]
    listed = [i.strip().upper() for i in listed]
    marked = _CITE.findall(text)
    removed = list(dict.fromkeys(i for i in [*marked, *listed] if i not in by_id))
    for bad in removed:
        text = text.replace(f"[{bad}]", "")
    text = re.sub(r"[ \t]+([.,;:])", r"\1", re.sub(r"[ \t]{2,}", " ", text)).strip()
    kept = [i for i in dict.fromkeys([*marked, *listed]) if i in by_id]
    citations: list[Citation] = [
        {
            "id": i,
            "source": by_id[i]["source"],
            "chunk_id": by_id[i]["chunk_id"],
            "kind": by_id[i]["kind"],
            "quote": by_id[i]["text"][:240],
        }
        for i in kept
    ]
    return text, citations, removed


# -- helpers ------------------------------------------------------------------------------------------
def _validated_question(state: Any) -> str:
    question = state.get("question") if isinstance(state, dict) else None
    if not isinstance(question, str) or not question.strip():
        raise GraphInputError(
            f"the research graph needs a non-empty string `question`, got {question!r}",
            fix='invoke it with {"question": "..."}',
        )
    return question.strip()


def _fresh(candidates: Sequence[str], asked: Sequence[str], limit: int) -> list[str]:
    seen = {q.strip().lower() for q in asked}
    fresh: list[str] = []
    for query in candidates:
        query = query.strip()
        if query and query.lower() not in seen:
            seen.add(query.lower())
            fresh.append(query)
    return fresh[:limit]


def _evidence(
    query: str, kind: Literal["chunk", "graph", "tool"], source: str, chunk_id: str | None, text: str, score: float
) -> Evidence:
    return {
        "id": "",
        "query": query,
        "kind": kind,
        "source": source,
        "chunk_id": chunk_id,
        "text": text,
        "score": score,
    }


def _chunk_evidence(query: str, hit: Any) -> Evidence:
    return _evidence(query, "chunk", hit.chunk.source, hit.chunk.id, hit.text, float(hit.score))


def _failure(query: str, searcher: str, exc: Exception) -> SearchFailure:
    return {"query": query, "searcher": searcher, "error": f"{type(exc).__name__}: {exc}"[:500]}


def _shown(evidence: Sequence[Evidence], budget: int) -> list[Evidence]:
    """What fits the prompt: the best-scored chunks first (graph and tool evidence count as best), in id order."""
    ranked = sorted(evidence, key=lambda e: (e["kind"] == "chunk", -e["score"]))
    chosen: set[str] = set()
    used = 0
    for item in ranked:
        size = min(len(item["text"]), 1200)
        if used + size > budget and chosen:
            continue
        chosen.add(item["id"])
        used += size
    return [{**e, "text": e["text"][:1200]} for e in evidence if e["id"] in chosen]
