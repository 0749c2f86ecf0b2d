"""What flows through the research graph: its state, the model's structured outputs, and its knobs.

The state types are `typing_extensions.TypedDict`s so that pydantic can publish their JSON Schema on
Python 3.11 too (`GraphEntry.json_schemas()`, for an agent server); LangGraph treats them like any TypedDict.
"""

from __future__ import annotations

import hashlib
import operator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NotRequired

from pydantic import BaseModel, Field
from typing_extensions import TypedDict

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
    "SearchTask",
    "merge_evidence",
]


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


class Suspicious(TypedDict):
    """Found evidence the injection screen flagged: where it came from, why, and whether it was kept."""

    query: str
    source: str
    score: float
    reasons: list[str]
    kept: bool  # `injection="flag"` keeps it (marked); "block" leaves it out of the evidence


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
    suspicious: NotRequired[Annotated[list[Suspicious], operator.add]]  # evidence that looked like an injection
    iteration: NotRequired[int]  # search rounds done
    tokens_used: NotRequired[Annotated[int, operator.add]]
    draft: NotRequired[str]
    left_out: NotRequired[int]  # the model's picks from low-ranked passages left out of the draft (doubt)
    confidence: NotRequired[float]
    gaps: NotRequired[list[str]]
    feedback: NotRequired[str]  # a reviewer's reason for rejecting the last answer
    answer: NotRequired[str]
    citations: NotRequired[list[Citation]]
    removed_citations: NotRequired[list[str]]  # ids the model cited that no search returned
    dropped_queries: NotRequired[Annotated[list[str], operator.add]]  # off-topic sub-queries, never searched
    unsupported: NotRequired[list[str]]  # sentences of the written answer no cited passage supports (removed)
    status: NotRequired[Literal["answered", "budget_exhausted", "approved", "edited", "rejected"]]


class SearchTask(TypedDict):
    """What one `Send` to the search node carries."""

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
    # One of eleven values, not any number: a grammar bounds a number's range but not its digits, and Gemma 270M
    # once wrote 1,600 tokens of a confidence's decimals. The node still clamps (not every server enforces enums).
    confidence: float = Field(
        description="0 to 1: how fully the evidence answers the question",
        json_schema_extra={"enum": [round(tenth / 10, 1) for tenth in range(11)]},
    )
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
    # "extractive": the answer is made of evidence sentences the model picks among the embedder's best
    # `candidates` (at most `max_sentences`), for a small model whose own prose is weak; "written": the model
    # writes it, and each sentence must pass the support check; "auto": what the graph was built with.
    answer_style: Literal["auto", "written", "extractive"] = "auto"
    candidates: int = 8
    max_sentences: int = 3
    # Found text that reads like a prompt injection (`agentstack.safety`), an indirect one: "flag" keeps it and
    # records it in `suspicious`, "block" leaves it out of the evidence (recorded too), "off" does not look.
    injection: Literal["off", "flag", "block"] = "flag"

    def __post_init__(self) -> None:
        for name in ("k", "max_queries", "max_iterations", "evidence_chars", "candidates", "max_sentences"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} is at least 1, got {getattr(self, name)}")
