"""Graph overhead: agentstack's research graph versus the same graph written by hand in LangGraph.

Both graphs have the same nodes and routing (plan -> Send per query -> search -> analyze -> refine ->
... -> answer), the same reducers, the same scripted chat model (instant replies, so the frameworks'
own work is as visible as it can be), the same in-memory keyword retriever, and the same checkpointer
(InMemorySaver). The hand-written one uses f-string prompts and a bare `with_structured_output`; ours
renders versioned Jinja2 prompts, counts tokens, checks citations and writes progress events. Runs of
the two alternate, so drift hits both alike. Ends with one JSON line; target: overhead_ratio <= 1.05.

A third side runs our graph observed as a server runs it: metrics, and every span exported by OTLP/HTTP to a
receiver in another process (`agentstack.testing.OtlpReceiver`, decoding the protobuf as a collector would). A
fourth runs it as agentstack runs a graph with observability off: `agentstack run` and the agent server never
run one without its usage counter (each run's tokens by model, for keys' limits and budgets and the usage rows),
a LangChain callback handler. `tracing_overhead_ratio` is the observed side (usage counted by the same handler)
against that one (target <= 1.05). `tracing_overhead_ratio_no_callbacks` is it against our graph run with no
handler at all, which no agentstack run is: any LangChain handler, even one that does nothing, cost a run
6-8% here when this was measured apart (LangChain's dispatch of the ~110 events a scripted run emitted, 56 of
them streamed tokens, which a real model spreads over seconds), so that ratio cannot reach 1.05 by anything a
handler does.

    python bench/graph_overhead.py [--quick | --smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import operator
import re
import statistics
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, NotRequired, TypedDict

from _otlp_process import ReceiverProcess, otlp_receiver_process
from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

from agentstack.graphs import Analysis, FinalAnswer, Plan, ResearchContext, build_research_graph
from agentstack.observability import Metrics, Observability, Tracing
from agentstack.observability._tracing import otlp_exporter
from agentstack.rag import Chunk, ScoredChunk
from agentstack.safety._usage import RunUsage
from agentstack.testing import ScriptedChatModel, schema_model

ITERATIONS = 2  # search rounds per run: plan, then one refine
QUERIES = 3
K = 5
CORPUS = [
    f"Passage {i}: agentstack {topic} {detail}."
    for i, (topic, detail) in enumerate(
        (t, d)
        for t in ("checkpoints", "fleet", "retrieval", "graphs", "safety", "streaming", "prompts", "sandbox")
        for d in ("survive crashes", "restart replicas", "fuse rankings", "route work", "mask secrets", "stream tokens")
    )
]


class KeywordRetriever:
    """Chunks ranked by shared words with the query: deterministic and cheap, so retrieval is not measured."""

    def __init__(self, texts: list[str]) -> None:
        self.chunks = [
            Chunk(id=f"c{i}", doc_id=f"d{i}", source=f"doc{i}.md", text=t, kind="leaf", position=0)
            for i, t in enumerate(texts)
        ]
        self.words = [set(t.lower().split()) for t in texts]

    async def aretrieve(self, query: str, k: int = K, filters: Any = None) -> list[ScoredChunk]:
        wanted = set(query.lower().split())
        ranked = sorted(range(len(self.chunks)), key=lambda i: -len(wanted & self.words[i]))[:k]
        return [ScoredChunk(chunk=self.chunks[i], fused_score=1.0 / (1 + r), legs={}) for r, i in enumerate(ranked)]


def scripted_model() -> ScriptedChatModel:
    """Replies by the schema asked for. The analysis is never confident, so every run refines once."""
    rounds = itertools.count(1)

    def plan(prompt: str) -> dict[str, Any]:
        n = next(rounds)
        return {"queries": [f"agentstack checkpoints crashes {n}", f"checkpoints survive crashes {n}"]}

    return schema_model(
        Plan=plan,
        Analysis={
            "draft": "Checkpoints survive crashes [S1].",
            "confidence": 0.5,
            "gaps": ["agentstack crash checkpoints"],
            "cited": ["S1"],
        },
        FinalAnswer={"answer": "Checkpoints survive crashes [S1], the fleet restarts replicas [S2].", "citations": []},
    )


# -- the same graph, written by hand --------------------------------------------------------------------
def merge_evidence(existing: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged = list(existing or [])
    seen = {e["chunk_id"] for e in merged}
    for item in new or []:
        if item["chunk_id"] not in seen:
            seen.add(item["chunk_id"])
            merged.append({**item, "id": f"S{len(merged) + 1}"})
    return merged


class HandState(TypedDict):
    question: str
    queries: NotRequired[list[str]]
    asked: NotRequired[Annotated[list[str], operator.add]]
    evidence: NotRequired[Annotated[list[dict[str, Any]], merge_evidence]]
    iteration: NotRequired[int]
    draft: NotRequired[str]
    confidence: NotRequired[float]
    gaps: NotRequired[list[str]]
    answer: NotRequired[str]
    citations: NotRequired[list[str]]


def handwritten_graph(model: ScriptedChatModel, retriever: KeywordRetriever) -> Any:
    planner = model.with_structured_output(Plan, method="json_schema")
    analyst = model.with_structured_output(Analysis, method="json_schema")
    writer = model.with_structured_output(FinalAnswer, method="json_schema")

    def evidence_text(state: HandState) -> str:
        return "\n".join(f"[{e['id']}] ({e['source']}) {e['text']}" for e in state.get("evidence", []))

    async def plan(state: HandState) -> dict[str, Any]:
        reply = await planner.ainvoke(
            [SystemMessage(f"Write at most {QUERIES} short search queries."), HumanMessage(state["question"])]
        )
        return {"queries": [state["question"], *reply.queries][:QUERIES], "iteration": 1}

    async def search(task: dict[str, str]) -> dict[str, Any]:
        hits = await retriever.aretrieve(task["query"], k=K)
        found = [{"id": "", "chunk_id": h.chunk.id, "source": h.chunk.source, "text": h.text} for h in hits]
        return {"evidence": found, "asked": [task["query"]]}

    async def analyze(state: HandState) -> dict[str, Any]:
        reply = await analyst.ainvoke(
            [SystemMessage("Draft an answer from the evidence; rate confidence 0-1; list gaps."),
             HumanMessage(f"Question: {state['question']}\nEvidence:\n{evidence_text(state)}")]
        )  # fmt: skip
        return {"draft": reply.draft, "confidence": reply.confidence, "gaps": reply.gaps}

    async def refine(state: HandState) -> dict[str, Any]:
        reply = await planner.ainvoke(
            [SystemMessage(f"Write at most {QUERIES} new search queries for the gaps."),
             HumanMessage(f"Question: {state['question']}\nAsked: {state['asked']}\nGaps: {state['gaps']}")]
        )  # fmt: skip
        asked = {q.lower() for q in state.get("asked", [])}
        queries = [q for q in [*reply.queries, *state["gaps"]] if q.lower() not in asked][:QUERIES]
        return {"queries": queries, "iteration": state["iteration"] + 1}

    async def answer(state: HandState) -> dict[str, Any]:
        reply = await writer.ainvoke(
            [SystemMessage("Answer from the evidence, citing ids like [S1]."),
             HumanMessage(f"Question: {state['question']}\nDraft: {state['draft']}\n{evidence_text(state)}")]
        )  # fmt: skip
        known = {e["id"] for e in state.get("evidence", [])}
        cited = [i for i in re.findall(r"\[(S\d+)\]", reply.answer) if i in known]
        return {"answer": reply.answer, "citations": cited}

    def fan_out(state: HandState) -> list[Send] | str:
        return [Send("search", {"query": q}) for q in state.get("queries", [])] or "answer"

    def after_analyze(state: HandState) -> str:
        return "answer" if state["confidence"] >= 0.7 or state["iteration"] >= ITERATIONS else "refine"

    builder = StateGraph(HandState)
    for name, node in (("plan", plan), ("search", search), ("analyze", analyze), ("refine", refine)):
        builder.add_node(name, node)
    builder.add_node("answer", answer)
    builder.add_edge(START, "plan")
    builder.add_conditional_edges("plan", fan_out, ["search", "answer"])
    builder.add_edge("search", "analyze")
    builder.add_conditional_edges("analyze", after_analyze, ["answer", "refine"])
    builder.add_conditional_edges("refine", fan_out, ["search", "answer"])
    builder.add_edge("answer", END)
    return builder.compile(checkpointer=InMemorySaver())


# -- the measurement ----------------------------------------------------------------------------------
@dataclass
class Side:
    name: str
    graph: Any
    context: Any
    times: list[float]
    observability: Observability | None = None
    usage: bool = False  # the usage counter the agent server runs every run with

    async def run(self) -> dict[str, Any]:
        thread_id = uuid.uuid4().hex
        config: dict[str, Any] = {"configurable": {"thread_id": thread_id}}
        counted = RunUsage() if self.usage else None
        config["callbacks"] = [counted] if counted is not None else []
        if self.observability is not None:
            run_id = str(uuid.uuid4())
            config["callbacks"] = self.observability.run_callbacks(
                config, graph="research", run_id=run_id, thread_id=thread_id, usage=counted
            )
            config["run_id"] = run_id
        started = time.perf_counter()
        out = await self.graph.ainvoke({"question": "How do agentstack checkpoints survive crashes?"}, config,
                                       context=self.context)  # fmt: skip
        self.times.append((time.perf_counter() - started) * 1000)
        return out


async def main(runs: int, warmup: int, receiver: ReceiverProcess) -> dict[str, Any]:
    retriever = KeywordRetriever(CORPUS)
    context = ResearchContext(k=K, max_queries=QUERIES, max_iterations=ITERATIONS)
    ours = Side("agentstack", build_research_graph(scripted_model(), retriever, checkpointer=InMemorySaver()),
                context, [])  # fmt: skip
    hand = Side("handwritten", handwritten_graph(scripted_model(), retriever), None, [])
    observing = Observability(Tracing.create([otlp_exporter(receiver.url)]), Metrics())
    traced = Side("agentstack_traced",
                  build_research_graph(scripted_model(), retriever, checkpointer=InMemorySaver()),
                  context, [], observing, usage=True)  # fmt: skip
    served = Side("agentstack_served", build_research_graph(scripted_model(), retriever, checkpointer=InMemorySaver()),
                  context, [], usage=True)  # fmt: skip
    sides = (ours, hand, traced, served)
    for side in sides:  # the same work on both sides, or the ratio means nothing
        out = await side.run()
        assert out["iteration"] == ITERATIONS and len(out["asked"]) == 2 * QUERIES, (side.name, out["asked"])
        assert len(out["citations"]) == 2, (side.name, out["citations"])
    for _ in range(warmup):
        for side in sides:
            await side.run()
    for side in sides:
        side.times.clear()
    for i in range(runs):
        for side in sides[i % len(sides) :] + sides[: i % len(sides)]:  # each side first in turn
            await side.run()
    observing.close()  # flushes
    exported = receiver.spans()
    result: dict[str, Any] = {}
    for side in sides:
        result[f"{side.name}_p50_ms"] = round(statistics.median(side.times), 3)
        print(f"{side.name}: p50 {statistics.median(side.times):.2f} ms, mean {statistics.fmean(side.times):.2f} ms")
    result["overhead_ratio"] = round(statistics.median(ours.times) / statistics.median(hand.times), 3)
    result["tracing_overhead_ratio"] = round(statistics.median(traced.times) / statistics.median(served.times), 3)
    result["tracing_overhead_ratio_no_callbacks"] = round(
        statistics.median(traced.times) / statistics.median(ours.times), 3
    )
    result["spans_exported"] = exported
    print(f"traced: {exported} spans exported to the OTLP receiver")
    result["runs"] = runs
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="50 runs per side instead of 300")
    size.add_argument("--smoke", action="store_true", help="3 runs per side: proves it runs, measures nothing")
    args = parser.parse_args()
    runs, warmup = (3, 1) if args.smoke else (50, 10) if args.quick else (300, 10)
    with otlp_receiver_process() as otlp:
        print(json.dumps(asyncio.run(main(runs, warmup, otlp))))
