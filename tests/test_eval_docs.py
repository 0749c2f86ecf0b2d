"""The shipped docs dataset through the research graph on the scripted model: CI's deterministic quality gate.

The graph is the real one (extractive answers, grounded by construction) over agentstack's docs, split into
sections, searched by `InMemoryRetriever` and ranked by `HashingEmbedder`; the model is scripted (it plans the
question itself and picks the embedder's best sentence). Every number is deterministic, so the gates below are
exact regressions checks of the pipeline around the model: retrieval, sentence ranking, citations, grounding.
The same dataset on the CPU Gemma is `agentstack eval run docs/eval/agentstack-docs.jsonl` (README).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from agentstack.eval import CitationValidity, CitesGold, Recall, TokenF1
from agentstack.eval._judge import Judge
from agentstack.eval._metrics_judged import ContextRecall, Faithfulness
from agentstack.eval._runner import GraphTarget, run_experiment
from agentstack.graphs import build_research_graph
from agentstack.graphs._research import RESEARCH_GRAPH
from agentstack.rag import Document
from agentstack.testing import HashingEmbedder, InMemoryRetriever, assert_quality, schema_model

DOCS = Path(__file__).resolve().parents[1] / "docs"


def sections() -> list[Document]:
    found = []
    for path in sorted(DOCS.glob("*.md")):
        for n, part in enumerate(re.split(r"\n(?=## )", path.read_text())):
            found.append(Document(source=f"{path.name}#{n}", text=part))
    return found


@pytest.mark.slow  # 7-12 s: pure-Python hashing embeddings of every section's sentences, 50 times
async def test_the_docs_dataset_on_the_scripted_model_meets_its_gates(eval_dataset: Any) -> None:
    dataset = eval_dataset("docs/eval/agentstack-docs.jsonl")
    model = schema_model(Plan={"queries": ["agentstack"]}, Selection={"chosen": ["C1"]})
    embedder = HashingEmbedder()
    graph = build_research_graph(
        model,
        InMemoryRetriever(sections()),
        checkpointer=InMemorySaver(),
        embedder=embedder,
        answer_style="extractive",
    )
    metrics = [Recall(5), TokenF1(), CitationValidity(), CitesGold(), Faithfulness(), ContextRecall()]
    result = await run_experiment(
        GraphTarget(graph, RESEARCH_GRAPH),
        dataset,
        metrics,
        name="scripted",
        graph="research",
        judge=Judge(embedder=embedder),
    )
    # measured 2026-12-01 (50 questions): recall@5 0.790, cites_gold 0.560, context_recall 0.540, token_f1 0.340;
    # the gates leave room for edits to the docs, which are the corpus here. Quoting sentences of up to 600
    # characters instead of 400 took cites_gold here from 0.640 to 0.560 (the hashing embedder and the word
    # overlap both favour long sentences) and on the CPU Gemma with all-MiniLM-L6-v2 from 0.820 to 0.860.
    gates = {"faithfulness": 1.0, "citation_validity": 1.0, "recall@5": 0.75, "cites_gold": 0.52, "context_recall": 0.5}
    assert_quality(result, gates)
