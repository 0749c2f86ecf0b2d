"""The graph registry: one entry per graph, read by everything that runs or serves graphs.

A `GraphEntry` says all that the CLI (`agentstack run | resume`), `Stack.graph(name)`, the deployable
modules in `graphs/` and an agent server need to know about a graph: how to build it from the running
parts (`GraphParts`), its input, context and state types (and their JSON schemas), how a task typed on
the command line becomes its input, and how its final values read (`ResultView`). Nothing else switches on
a graph's name, so adding a graph is its module (state, nodes, builder, entry) plus one line in
`BUILTIN_GRAPHS`, or `registry.add(entry)` for a registry of your own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.tools import BaseTool
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer

from agentstack.errors import UserError
from agentstack.graphs._knobs import context_from_knobs

__all__ = ["GraphEntry", "GraphParts", "GraphRegistry", "ResultView", "Retriever"]

StateT = TypeVar("StateT")
ContextT = TypeVar("ContextT")
InputT = TypeVar("InputT")


class Retriever(Protocol):
    """What the graphs search: `HybridRetriever`, `agentstack.testing.InMemoryRetriever`, or your own."""

    async def aretrieve(self, query: str, k: int = ..., filters: Any = ...) -> Any: ...


def _no_tools() -> Sequence[BaseTool]:
    return ()


@dataclass(frozen=True)
class GraphParts:
    """The running parts a registered graph is built from; `Stack.parts()` hands out its own.

    `default_tools` is called only by a graph whose agent uses tools and was given none (the approval
    agent), so building another graph never creates the workspace those tools work in.
    """

    model: BaseChatModel
    retriever: Retriever | None = None
    checkpointer: Checkpointer = None
    default_tools: Callable[[], Sequence[BaseTool]] = _no_tools
    embedder: Any = None  # the retrieval's: grounds research answers (see `build_research_graph`)
    answer_style: Literal["written", "extractive"] = "written"  # the model's: see `ModelSpec.answer_style`


@dataclass(frozen=True)
class ResultView:
    """How a finished run reads, whatever shows it (the CLI prints it; a console could render it)."""

    title: str  # "answer", "result"
    text: str
    detail: str = ""  # "answered, confidence 0.90"
    citations: Sequence[Mapping[str, Any]] | None = None  # None: this graph does not cite
    warnings: Sequence[str] = ()
    # What evaluation reads: the passages the run retrieved, best first ({"id", "text", "source", "chunk_id"}),
    # and the ids the model cited that no search returned (removed from `text`).
    contexts: Sequence[Mapping[str, Any]] = ()
    removed_citations: Sequence[str] = ()


@dataclass(frozen=True)
class GraphEntry(Generic[StateT, ContextT, InputT]):
    """One graph: its builder, its types, and how the CLI talks to it.

    `build(parts, **options)` returns the compiled graph; `options` are the builder's own keyword arguments
    (`prompts=`, `tools=`, `policy=`...). `searches_documents`: the CLI ingests `--docs` before a run.
    """

    name: str
    description: str
    build: Callable[..., CompiledStateGraph[StateT, ContextT, InputT, StateT]]
    state: type[StateT]
    context: type[ContextT]
    input: type[InputT]
    input_from_task: Callable[[str], InputT]
    render: Callable[[Mapping[str, Any]], ResultView]
    searches_documents: bool = False

    def context_from(self, knobs: Mapping[str, Any]) -> ContextT:
        """The run context with these knobs set (the rest at their defaults); an unknown knob is refused."""
        return context_from_knobs(self.context, knobs, graph=self.name)

    def json_schemas(self) -> dict[str, dict[str, Any]]:
        """JSON Schemas of the input, context and state, as an agent server publishes them."""
        from pydantic import TypeAdapter

        kinds = {"input": self.input, "context": self.context, "state": self.state}
        return {part: TypeAdapter(kind).json_schema() for part, kind in kinds.items()}


@dataclass(frozen=True)
class GraphRegistry:
    """Graphs by name. Immutable: `add` returns a new registry, so a test or an app never changes another's."""

    entries: tuple[GraphEntry[Any, Any, Any], ...] = ()

    def __post_init__(self) -> None:
        names = [e.name for e in self.entries]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise UserError(f"two graphs are registered as {', '.join(twice)}", fix="give every graph its own name")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __iter__(self) -> Iterator[GraphEntry[Any, Any, Any]]:
        return iter(self.entries)

    def get(self, name: str) -> GraphEntry[Any, Any, Any]:
        """The entry called `name`, or a `UserError` listing the graphs there are."""
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise UserError(f"there is no graph named {name!r}", fix=f"use one of: {', '.join(self.names)}")

    def add(self, entry: GraphEntry[Any, Any, Any]) -> GraphRegistry:
        """A new registry with `entry` too (this one is unchanged)."""
        return GraphRegistry((*self.entries, entry))
