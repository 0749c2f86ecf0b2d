"""What a research graph is made of besides its state and knobs: its prompts, its searchers, its structured model
calls (`ResearchDeps`, built once per graph and handed to every step)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Protocol, TypeAlias

from langchain_core.language_models import BaseChatModel
from langchain_core.tools import BaseTool
from pydantic import BaseModel, Field, create_model

from agentstack._structured import StructuredCall
from agentstack.errors import GraphInputError
from agentstack.graphs._registry import Retriever
from agentstack.graphs._research_state import Analysis, FinalAnswer, Plan, ResearchContext
from agentstack.graphs._support import Embedder, EmbeddingSupport, SupportScorer
from agentstack.prompts import Prompt, PromptLibrary
from agentstack.safety._injection import InjectionScreen

__all__ = ["AnswerStyle", "GraphSearcher", "ResearchDeps", "ResearchPrompts"]

AnswerStyle: TypeAlias = Literal["written", "extractive"]


class GraphSearcher(Protocol):
    """A knowledge-graph retriever (`GraphRetriever`): paths from the query's entities."""

    async def aretrieve(self, query: str, hops: int = ...) -> Any: ...


@dataclass(frozen=True)
class ResearchPrompts:
    """The research prompts, each one version (recorded in the run's metadata)."""

    plan: Prompt
    analyze: Prompt
    refine: Prompt
    answer: Prompt
    revise: Prompt
    select: Prompt

    @classmethod
    def load(cls, library: PromptLibrary) -> ResearchPrompts:
        return cls(**{f.name: library.get("research", f.name) for f in fields(cls)})

    def all(self) -> list[Prompt]:
        return [getattr(self, f.name) for f in fields(self)]


@dataclass(frozen=True)
class ResearchDeps:
    """What the research steps call besides the state and the knobs: one object, built once per graph.

    `embedder` ranks evidence sentences for an extractive answer and tells an on-topic sub-query from noise;
    `support` checks a written answer's sentences (default: the embedder's `EmbeddingSupport`). Without an
    embedder the graph writes its answers and checks only that their citations exist.
    """

    prompts: ResearchPrompts
    planner: StructuredCall[Plan]
    analyst: StructuredCall[Analysis]
    writer: StructuredCall[FinalAnswer]
    model: BaseChatModel
    retriever: Retriever | None = None
    graph_retriever: GraphSearcher | None = None
    tools: tuple[BaseTool, ...] = ()
    embedder: Embedder | None = None
    support: SupportScorer | None = None
    answer_style: AnswerStyle = "written"
    screen: InjectionScreen = field(default_factory=InjectionScreen)  # found text that reads like an injection
    _selectors: dict[tuple[int, int], StructuredCall[Any]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.retriever is None and self.graph_retriever is None and not self.tools:
            raise GraphInputError(
                "the research graph needs something to search", fix="pass a retriever, a graph_retriever or tools"
            )
        if self.answer_style == "extractive" and self.embedder is None:
            raise GraphInputError(
                "an extractive research graph ranks evidence sentences with an embedder, and none was given",
                fix="pass embedder= (the retrieval's), or answer_style='written'",
            )

    def style(self, knobs: ResearchContext) -> AnswerStyle:
        """The run's answer style: the knob, or what the graph was built with ("auto")."""
        if knobs.answer_style == "auto":
            return self.answer_style
        if knobs.answer_style == "extractive" and self.embedder is None:
            raise GraphInputError(
                "answer_style=extractive needs an embedder, and this graph was built without one",
                fix="build the graph with embedder=, or run it with answer_style=written",
            )
        return knobs.answer_style

    def selector(self, candidates: int, picks: int) -> StructuredCall[Any]:
        """A call whose schema lets the model name only ids C1..C<candidates> (an enum under the grammar), at
        most `picks` of them."""
        call = self._selectors.get((candidates, picks))
        if call is None:
            schema = _selection_schema(candidates, picks)
            call = self._selectors[(candidates, picks)] = StructuredCall(self.model, schema)
        return call

    @classmethod
    def create(
        cls,
        model: BaseChatModel,
        retriever: Retriever | None,
        *,
        graph_retriever: GraphSearcher | None = None,
        tools: Sequence[BaseTool] = (),
        prompts: PromptLibrary | None = None,
        embedder: Embedder | None = None,
        support: SupportScorer | None = None,
        answer_style: AnswerStyle = "written",
    ) -> ResearchDeps:
        if support is None and embedder is not None:
            support = EmbeddingSupport(embedder)
        return cls(
            prompts=ResearchPrompts.load(prompts or PromptLibrary()),
            planner=StructuredCall(model, Plan),
            analyst=StructuredCall(model, Analysis),
            writer=StructuredCall(model, FinalAnswer),
            model=model,
            retriever=retriever,
            graph_retriever=graph_retriever,
            tools=tuple(tools),
            embedder=embedder,
            support=support,
            answer_style=answer_style,
        )


def _selection_schema(candidates: int, picks: int) -> type[BaseModel]:
    ids = tuple(f"C{n}" for n in range(1, candidates + 1))
    described = Field(min_length=1, max_length=picks, description="the ids of the sentences that answer")
    chosen = (list[Literal[ids]], described)  # type: ignore[valid-type]
    return create_model("Selection", __doc__="The evidence sentences that answer the question.", chosen=chosen)
