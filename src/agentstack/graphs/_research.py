"""The research graph: plan -> parallel search -> analyze -> refine while unsure -> cited answer.

    plan --Send per query--> search --> analyze --(confident or out of budget)--> answer --> [review] --> END
                               ^            |
                               +-- refine <-+ (confidence < threshold, iterations and tokens left)

A failed search (retriever down, a tool raising) is recorded in `failures` and the run goes on with what
the other searches found. Evidence gets short ids (S1, S2...) a small model can copy; the answer's
citations are checked against the evidence actually retrieved, and an invented id is removed, never shown.
Below `review_threshold` the answer waits for a human (`interrupt`): approve, edit, or reject with a
reason, which sends the research round again with the reason as its gap.

Each step is a module-level function `(state, runtime, deps) -> update`: `deps` (`ResearchDeps`) holds what
the step calls (structured model calls, prompts, searchers), `runtime.context` the run's knobs, and
`runtime.stream_writer` where progress goes, so a step can be run and checked alone, without a graph.
`compose_research_graph` binds them to `deps` and wires the edges.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from functools import partial
from typing import Any, Literal, TypeAlias

from langchain_core.language_models import BaseChatModel
from langchain_core.tools import BaseTool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import Checkpointer, Command, Send

from agentstack.errors import GraphInputError, ModelOutputError
from agentstack.graphs._decisions import Decision, ask_decision
from agentstack.graphs._grounding import (
    Candidate,
    candidate_sentences,
    ground,
    on_topic,
    verify_citations,
    with_citations,
)
from agentstack.graphs._knobs import read_knobs
from agentstack.graphs._metadata import run_metadata
from agentstack.graphs._registry import GraphEntry, GraphParts, ResultView, Retriever
from agentstack.graphs._research_deps import AnswerStyle, GraphSearcher, ResearchDeps, ResearchPrompts
from agentstack.graphs._research_state import (
    Evidence,
    ResearchContext,
    ResearchInput,
    ResearchState,
    SearchFailure,
    SearchTask,
    Suspicious,
)
from agentstack.graphs._support import Embedder, SupportScorer, cited_sentences, sentences
from agentstack.observability._events import report_retrieval
from agentstack.prompts import PromptLibrary
from agentstack.safety._injection import InjectionScreen

__all__ = [
    "RESEARCH_GRAPH",
    "ResearchDeps",
    "ResearchGraph",
    "ResearchPrompts",
    "build_research_graph",
    "compose_research_graph",
]

ResearchGraph: TypeAlias = CompiledStateGraph[ResearchState, ResearchContext, ResearchInput, ResearchState]
# Extractive confidence from the chosen sentences' mean cosine with the question (all-MiniLM-L6-v2): 0.15 and
# below is unrelated (0), 0.6 and above answers it (1); the default threshold 0.7 is then a mean of about 0.47.
# The answer's confidence is that times the share of its sentences from the search's top `_TOP_RANKED` passages.
_UNRELATED, _ANSWERS = 0.15, 0.6
_TOP_RANKED = 3
_FAR = 0.8  # a pick from below the top passages stays when its cosine is this share of the best one's
_NO_ANSWER = "The documents found do not answer this question."


# -- steps --------------------------------------------------------------------------------------------
async def plan(state: ResearchState, runtime: Runtime[ResearchContext], deps: ResearchDeps) -> dict[str, Any]:
    """Sub-queries for the question; the question itself is always searched too."""
    knobs = read_knobs(runtime, ResearchContext)
    question = _validated_question(state)
    reply, tokens = await deps.planner(deps.prompts.plan, question=question, max_queries=knobs.max_queries)
    # The question itself is always searched: a weak planner then costs recall, never all of it.
    proposed, dropped = await on_topic(reply.queries, question, deps.embedder)
    queries = _fresh([question, *proposed], [], knobs.max_queries)
    runtime.stream_writer({"stage": "plan", "queries": queries, "dropped": dropped})
    return {"queries": queries, "iteration": 1, "tokens_used": tokens, "dropped_queries": dropped}


async def search(task: SearchTask, runtime: Runtime[ResearchContext], deps: ResearchDeps) -> dict[str, Any]:
    """One query against every searcher; a searcher that raises is a recorded failure, not a failed run."""
    knobs = read_knobs(runtime, ResearchContext)
    query = task["query"]
    found: list[Evidence] = []
    failures: list[SearchFailure] = []
    if deps.retriever is not None:
        try:
            result = await deps.retriever.aretrieve(query, k=knobs.k, filters=knobs.filters or None)
            found += [_chunk_evidence(query, hit) for hit in result]
            await report_retrieval(result, k=knobs.k)  # a span in the trace, each leg's time in the metrics
        except Exception as exc:
            failures.append(_failure(query, "retriever", exc))
    if deps.graph_retriever is not None:
        try:
            paths = await deps.graph_retriever.aretrieve(query, hops=knobs.graph_hops)
            context = paths.as_context()
            if context:
                found.append(_evidence(query, "graph", "knowledge graph", None, context, 0.0))
        except Exception as exc:
            failures.append(_failure(query, "knowledge graph", exc))
    for tool in deps.tools:
        try:
            output = await tool.ainvoke(query)
            if str(output).strip():
                found.append(_evidence(query, "tool", tool.name, None, str(output), 0.0))
        except Exception as exc:
            failures.append(_failure(query, tool.name, exc))
    found, suspicious = _screened(found, knobs.injection, deps.screen)
    runtime.stream_writer({"stage": "search", "query": query, "found": len(found), "failed": len(failures)})
    if suspicious:
        runtime.stream_writer({"stage": "screen", "query": query, "suspicious": len(suspicious)})
    return {"evidence": found, "failures": failures, "asked": [query], "suspicious": suspicious}


def _screened(found: list[Evidence], mode: str, screen: InjectionScreen) -> tuple[list[Evidence], list[Suspicious]]:
    """The evidence a prompt-injection screen lets through, and what it flagged (documents and tools' output are
    where an indirect injection comes in: a page that tells the model what to do)."""
    if mode == "off":
        return found, []
    kept: list[Evidence] = []
    suspicious: list[Suspicious] = []
    for evidence in found:
        screening = screen.screen(evidence["text"])
        if screening.flagged:
            suspicious.append(
                Suspicious(
                    query=evidence["query"], source=evidence["source"], score=screening.score,
                    reasons=list(screening.reasons), kept=mode == "flag",
                )
            )  # fmt: skip
            if mode == "block":
                continue
        kept.append(evidence)
    return kept, suspicious


async def analyze(state: ResearchState, runtime: Runtime[ResearchContext], deps: ResearchDeps) -> dict[str, Any]:
    """A draft from the evidence, how sure it is (0 when nothing was found), and what is missing.

    Extractive: the draft is the evidence sentences the model picks (`select`), the confidence how close they
    are to the question. Written: the model drafts and rates itself (checked again once the answer is written).
    """
    knobs = read_knobs(runtime, ResearchContext)
    if deps.style(knobs) == "extractive":
        return await select(state, runtime, deps)
    evidence = _shown(state.get("evidence", []), knobs.evidence_chars)
    reply, tokens = await deps.analyst(deps.prompts.analyze, question=state["question"], evidence=evidence)
    confidence = min(1.0, max(0.0, float(reply.confidence)))
    if not state.get("evidence"):
        confidence = 0.0  # nothing was found: whatever the model says, it is not grounded
    runtime.stream_writer({"stage": "analyze", "confidence": confidence, "gaps": reply.gaps})
    return {"draft": reply.draft, "confidence": confidence, "gaps": reply.gaps, "tokens_used": tokens}


async def select(state: ResearchState, runtime: Runtime[ResearchContext], deps: ResearchDeps) -> dict[str, Any]:
    """The model picks, among the embedder's best evidence sentences, those that answer: the draft is them,
    with the best-ranked one (see `_chosen`).

    The ids it may name are an enum of the candidates' (the grammar allows nothing else); a pick that ranks far
    below the best candidate is dropped.
    """
    knobs = read_knobs(runtime, ResearchContext)
    assert deps.embedder is not None  # `ResearchDeps.style` refuses extractive without one
    question = state["question"]
    candidates = await candidate_sentences(question, state.get("evidence", []), deps.embedder, knobs.candidates)
    if not candidates:
        runtime.stream_writer({"stage": "select", "confidence": 0.0, "chosen": []})
        return {"draft": "", "confidence": 0.0, "gaps": [question], "left_out": 0}
    reply, tokens = await deps.selector(len(candidates), knobs.max_sentences)(
        deps.prompts.select, question=question, candidates=candidates, max_sentences=knobs.max_sentences
    )
    chosen, left_out = _chosen(candidates, reply.chosen, knobs.max_sentences, _top_ranked(state.get("evidence", [])))
    mean = sum(c.score for c in chosen) / len(chosen)
    confidence = round(min(1.0, max(0.0, (mean - _UNRELATED) / (_ANSWERS - _UNRELATED))), 2)
    # each sentence cited, a candidate's sentence before the one pointing back at it too
    draft = " ".join(with_citations(part, [c.evidence_id]) for c in chosen for part in sentences(c.text) or [c.text])
    runtime.stream_writer({"stage": "select", "confidence": confidence, "chosen": [c.id for c in chosen]})
    return {"draft": draft, "confidence": confidence, "gaps": [], "left_out": left_out, "tokens_used": tokens}


def _chosen(
    candidates: Sequence[Candidate], picked: Sequence[str], limit: int, top: Collection[str]
) -> tuple[list[Candidate], int]:
    """(the best-ranked candidate and the model's picks, in rank order; how many picks were left out for coming
    from a passage outside `top` with a cosine under `_FAR` of the best one's).

    The first always stands: on the docs dataset (docs/eval/) that took the CPU Gemma's answers from citing a
    gold passage in 19 of 30 questions to 21 (it often passed over a gold first candidate). A pick whose cosine
    is under half the best one's is not chosen, nor one whose text another chosen one already holds (a sentence
    offered alone and again before the one after it that points back at it). A pick from a passage the search
    ranked low that is also well under the best is the model filling its quota: "Which file types can
    agentstack ingest?" took `StrictSerializer`'s allow-list from the fifth passage. Leaving those out changed
    6 of the docs dataset's 30 answers, each losing its last sentence or two (five off the point, one on it):
    token F1 0.332 -> 0.358, gold citations 0.867 held.
    """
    best = max(c.score for c in candidates)
    ids = {*picked, candidates[0].id}
    chosen: list[Candidate] = []
    left_out = 0
    for candidate in candidates:
        if len(chosen) == limit:
            break
        if candidate.id not in ids or candidate.score < best / 2:
            continue
        if any(candidate.text in other.text or other.text in candidate.text for other in chosen):
            continue
        if chosen and top and candidate.evidence_id not in top and candidate.score < _FAR * best:
            left_out += 1
            continue
        chosen.append(candidate)
    return chosen, left_out


async def refine(state: ResearchState, runtime: Runtime[ResearchContext], deps: ResearchDeps) -> dict[str, Any]:
    """New queries for the gaps (the gaps themselves are searched too), never one already asked."""
    knobs = read_knobs(runtime, ResearchContext)
    gaps = state.get("gaps") or []
    reply, tokens = await deps.planner(
        deps.prompts.refine,
        question=state["question"],
        asked=state.get("asked", []),
        gaps=gaps,
        max_queries=knobs.max_queries,
    )
    proposed, dropped = await on_topic(reply.queries + gaps, state["question"], deps.embedder)
    queries = _fresh(proposed, state.get("asked", []), knobs.max_queries)
    runtime.stream_writer({"stage": "refine", "queries": queries, "dropped": dropped})
    update = {"queries": queries, "iteration": state.get("iteration", 0) + 1, "tokens_used": tokens}
    return update | {"dropped_queries": dropped}


async def answer(state: ResearchState, runtime: Runtime[ResearchContext], deps: ResearchDeps) -> dict[str, Any]:
    """The answer with verified citations. Extractive: the selected sentences. Written: an answer citing
    nothing is revised once, then every sentence its cited passages do not support is removed."""
    knobs = read_knobs(runtime, ResearchContext)
    evidence = state.get("evidence", [])
    confident = state.get("confidence", 0.0) >= knobs.confidence_threshold
    if deps.style(knobs) == "extractive":
        text, citations, removed = verify_citations(state.get("draft") or _NO_ANSWER, [], evidence)
        share = _ranked_high(text, evidence, state.get("left_out", 0))
        confidence = round(state.get("confidence", 0.0) * share, 2)
        runtime.stream_writer({"stage": "answer", "citations": [c["id"] for c in citations], "removed": removed})
        return {
            "answer": text,
            "citations": citations,
            "removed_citations": removed,
            "unsupported": [],
            "confidence": confidence,  # the status still says how the search loop ended
            "status": "answered" if confident else "budget_exhausted",
        }
    shown = _shown(evidence, knobs.evidence_chars)
    reply, tokens = await deps.writer(
        deps.prompts.answer,
        question=state["question"],
        draft=state.get("draft", ""),
        feedback=state.get("feedback", ""),
        evidence=shown,
    )
    text, citations, removed = verify_citations(reply.answer, reply.citations, evidence)
    if not citations and shown:  # nothing it says is backed by a passage: one revision
        try:
            revised, more = await deps.writer(
                deps.prompts.revise,
                question=state["question"],
                answer=text,
                evidence=shown,
                ids=[e["id"] for e in shown],
            )
        except ModelOutputError as exc:
            # The revision is an improvement, not the answer: when the model cannot finish it, the verified
            # first answer stands (uncited, which `citations == []` says) and the run is not lost.
            runtime.stream_writer({"stage": "revise", "error": exc.problem})
            tokens += exc.tokens_used
        else:
            tokens += more
            text, citations, removed_again = verify_citations(revised.answer, revised.citations, evidence)
            removed += removed_again
    update: dict[str, Any] = {}
    if deps.support is not None and evidence:
        grounded = await ground(text, evidence, deps.support)
        text, citations, _ = verify_citations(grounded.text or _NO_ANSWER, [], evidence)
        confidence = min(state.get("confidence", 0.0), grounded.supported_share)  # measured, not only said
        confident = confidence >= knobs.confidence_threshold
        update = {"unsupported": grounded.removed, "confidence": confidence}
    runtime.stream_writer({"stage": "answer", "citations": [c["id"] for c in citations], "removed": removed})
    return update | {
        "answer": text,
        "citations": citations,
        "removed_citations": removed,
        "status": "answered" if confident else "budget_exhausted",
        "tokens_used": tokens,
    }


def _ranked_high(answer: str, evidence: Sequence[Evidence], left_out: int = 0) -> float:
    """The share of the answer's sentences that cite one of the passages the search ranked highest (the evidence
    comes in search order, the question's own search first): how an extractive answer's confidence learns what
    the cosine cannot tell it.

    The cosine alone was near 1 for right and wrong answers alike: over 150 docs-dataset answers, 0.92 for those
    citing a gold passage and 0.93 for those citing none (AUROC 0.53). Sentences from passages the search ranked
    lower are wrong more often; times this share, 0.84 against 0.57 (AUROC 0.70), and the answers at 0.7 or
    more cited a gold passage in 87% of cases, those under it in 59%. It is measured on the answer, not in the
    refine loop: later rounds' passages come after the first search's, so refining could not raise it.
    The picks `_chosen` left out count as sentences not ranked high: that the model reached that far is doubt
    (without them, "Which file types can agentstack ingest?", answered off the point, went from 0.65 to 1.0).
    """
    claims = cited_sentences(answer)
    top = _top_ranked(evidence)
    high = sum(1 for _, cited in claims if top.intersection(cited))
    return high / (len(claims) + left_out) if claims else 0.0


def _top_ranked(evidence: Sequence[Evidence]) -> set[str]:
    """The ids of the passages the search ranked highest (evidence comes in search order)."""
    return {item["id"] for item in evidence[:_TOP_RANKED]}


def review(state: ResearchState, runtime: Runtime[ResearchContext]) -> Command[Any]:
    """A human approves, edits (the answer) or rejects (the reason becomes the next round's gap)."""
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
    if state.get("iteration", 0) < read_knobs(runtime, ResearchContext).max_iterations:
        return Command(goto="refine", update={"gaps": [decision.reason or ""], "feedback": decision.reason})
    return Command(goto=END, update={"status": "rejected", "feedback": decision.reason})


# -- routing ------------------------------------------------------------------------------------------
def fan_out(state: ResearchState) -> list[Send] | str:
    """One search task per query of this round; no queries left: answer with what there is."""
    queries = state.get("queries") or []
    return [Send("search", {"query": q}) for q in queries] if queries else "answer"


def after_analyze(state: ResearchState, runtime: Runtime[ResearchContext]) -> Literal["answer", "refine"]:
    knobs = read_knobs(runtime, ResearchContext)
    if state.get("confidence", 0.0) >= knobs.confidence_threshold:
        return "answer"
    if state.get("iteration", 0) >= knobs.max_iterations:
        return "answer"
    if knobs.token_budget is not None and state.get("tokens_used", 0) >= knobs.token_budget:
        return "answer"
    return "refine"


def after_answer(state: ResearchState, runtime: Runtime[ResearchContext]) -> str:
    threshold = read_knobs(runtime, ResearchContext).review_threshold
    return "review" if threshold is not None and state.get("confidence", 0.0) < threshold else END


# -- the graph ----------------------------------------------------------------------------------------
def compose_research_graph(
    deps: ResearchDeps, *, checkpointer: Checkpointer = None, name: str = "research"
) -> ResearchGraph:
    """The steps bound to `deps`, wired; leave `checkpointer` unset for a subgraph (it saves through its parent)."""
    builder = StateGraph(ResearchState, context_schema=ResearchContext, input_schema=ResearchInput)
    builder.add_node("plan", partial(plan, deps=deps))
    builder.add_node("search", partial(search, deps=deps), input_schema=SearchTask)
    builder.add_node("analyze", partial(analyze, deps=deps))
    builder.add_node("refine", partial(refine, deps=deps))
    builder.add_node("answer", partial(answer, deps=deps))
    builder.add_node("review", review, destinations=("refine", END))
    builder.add_edge(START, "plan")
    builder.add_conditional_edges("plan", fan_out, ["search", "answer"])
    builder.add_edge("search", "analyze")
    builder.add_conditional_edges("analyze", after_analyze, ["answer", "refine"])
    builder.add_conditional_edges("refine", fan_out, ["search", "answer"])
    builder.add_conditional_edges("answer", after_answer, ["review", END])
    graph = builder.compile(checkpointer=checkpointer, name=name)
    return graph.with_config(metadata=run_metadata("research", deps.prompts.all()))


def build_research_graph(
    model: BaseChatModel,
    retriever: Retriever | None,
    *,
    graph_retriever: GraphSearcher | None = None,
    tools: Sequence[BaseTool] = (),
    prompts: PromptLibrary | None = None,
    checkpointer: Checkpointer = None,
    name: str = "research",
    embedder: Embedder | None = None,
    support: SupportScorer | None = None,
    answer_style: AnswerStyle = "written",
) -> ResearchGraph:
    """Compile the research graph; `retriever` is a `HybridRetriever` (or anything with `aretrieve`).

    `tools` are searched too, each called with the sub-query as its one input. Leave `checkpointer` unset
    when this graph is a subgraph: it then saves through its parent's. `embedder` (the retrieval's) grounds the
    answers: it ranks evidence sentences for `answer_style="extractive"` (small models: the answer is made of
    the evidence sentences the model picks) and checks a written answer's sentences (`support` replaces that
    check, e.g. `JudgeSupport(judge_model)`).
    """
    deps = ResearchDeps.create(
        model,
        retriever,
        graph_retriever=graph_retriever,
        tools=tools,
        prompts=prompts,
        embedder=embedder,
        support=support,
        answer_style=answer_style,
    )
    return compose_research_graph(deps, checkpointer=checkpointer, name=name)


def _build_from_parts(parts: GraphParts, **options: Any) -> ResearchGraph:
    options = {"embedder": parts.embedder, "answer_style": parts.answer_style} | options
    return build_research_graph(parts.model, parts.retriever, checkpointer=parts.checkpointer, **options)


def _render(values: Mapping[str, Any]) -> ResultView:
    failures = values.get("failures") or []
    warnings = [f"{len(failures)} search(es) failed: {failures}"] if failures else []
    if suspicious := values.get("suspicious") or []:
        sources = sorted({s["source"] for s in suspicious})
        kept = "kept, marked" if all(s["kept"] for s in suspicious) else "left out"
        warnings.append(f"{len(suspicious)} passage(s) read like a prompt injection ({kept}): {', '.join(sources)}")
    return ResultView(
        title="answer",
        detail=f"{values.get('status')}, confidence {values.get('confidence', 0):.2f}",
        text=str(values.get("answer", "")),
        citations=values.get("citations", []),
        warnings=warnings,
        contexts=values.get("evidence", []),
        removed_citations=values.get("removed_citations", []),
    )


RESEARCH_GRAPH: GraphEntry[ResearchState, ResearchContext, ResearchInput] = GraphEntry(
    name="research",
    description="Answers a question from the indexed documents, with checked citations.",
    build=_build_from_parts,
    state=ResearchState,
    context=ResearchContext,
    input=ResearchInput,
    input_from_task=lambda task: {"question": task},
    render=_render,
    searches_documents=True,
)


# -- helpers ------------------------------------------------------------------------------------------
def _answer_edit(decision: Decision) -> None:
    if decision.action == "edit" and not isinstance(decision.value, str):
        raise GraphInputError(
            f"an edit of the research answer needs the new answer as text, got {decision.value!r}",
            fix='resume with {"action": "edit", "value": "the corrected answer [S1]"}',
        )


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
