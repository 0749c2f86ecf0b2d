"""`agentstack ingest` and `agentstack search`: the hybrid index from the command line."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agentstack.config import Settings
from agentstack.errors import UserError
from agentstack.rag import (
    GraphExtractor,
    GraphIngestor,
    GraphResult,
    GraphRetriever,
    SemanticChunker,
    open_knowledge_graph,
    open_retrieval,
)
from agentstack.rag._loaders import expand_paths, load_document
from agentstack.serving import Fleet

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

__all__ = ["ingest_paths", "parse_filters", "search_index"]

_EXTERNAL_CONCURRENCY = 8  # extraction requests in flight to an external server, whose batching we can't see


def parse_filters(pairs: list[str]) -> dict[str, str | list[str]]:
    """`key=value` pairs; a key given twice matches any of its values."""
    filters: dict[str, list[str]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"filter {pair!r} is not key=value", fix="for example --filter file_type=md")
        filters.setdefault(key, []).append(value)
    return {k: v[0] if len(v) == 1 else v for k, v in filters.items()}


async def ingest_paths(settings: Settings, paths: list[Path], *, semantic: bool, graph: bool, console: Console) -> None:
    # Every file is read, and (with --graph) the extraction model chosen, first: a missing, empty or unreadable
    # file or a wrong model name is reported before the embedder and the index take their seconds to start.
    documents = [load_document(path) for path in expand_paths(paths)]
    async with AsyncExitStack() as stack:
        extraction = await _extraction_model(settings, stack, console) if graph else None
        retrieval = await stack.enter_async_context(open_retrieval(settings))
        ingestor = retrieval.ingestor
        if semantic:
            ingestor.chunker = SemanticChunker(retrieval.embedder)
        if extraction is not None:
            model, concurrency = extraction
            knowledge_graph = await stack.enter_async_context(open_knowledge_graph(settings))
            ingestor.graph = GraphIngestor(knowledge_graph, GraphExtractor(model), concurrency=concurrency)
        report = await ingestor.aingest(documents, progress=console.is_terminal)
        leaves = await retrieval.index.count("leaf")
        entities = await ingestor.graph.graph.count_entities() if ingestor.graph is not None else None
    console.print(
        f"[green]ingested[/] {len(report.added)} new, {len(report.replaced)} changed, "
        f"{len(report.unchanged)} unchanged document(s): {report.chunks} chunks embedded in {report.seconds:.1f} s "
        f"({report.chunks_per_s:.1f} chunks/s); the index holds {leaves} chunks"
        + (f", the graph {entities} entities" if entities is not None else "")
    )


async def _extraction_model(settings: Settings, stack: AsyncExitStack, console: Console) -> tuple[BaseChatModel, int]:
    """The graph extractor's chat model and how many requests it takes at once: AGENTSTACK_LLM_BASE_URL's model,
    or the fleet's chat model (the fleet started here, stopped with `stack`)."""
    if settings.llm_base_url:
        from agentstack._stack import external_chat_model

        return external_chat_model(settings, temperature=0, max_tokens=400), _EXTERNAL_CONCURRENCY
    fleet = Fleet.from_settings(settings)
    name = fleet.chat_model_name()  # AGENTSTACK_LLM_MODEL, or the spec's first chat model
    with console.status(f"starting the model fleet ({name}) for graph extraction"):
        await stack.enter_async_context(fleet)
    return fleet.chat_model(name, temperature=0, max_tokens=400), fleet.slots(name)


async def search_index(
    settings: Settings,
    query: str,
    *,
    k: int,
    filters: dict[str, str | list[str]],
    parents: bool,
    graph: bool,
    console: Console,
) -> None:
    async with open_retrieval(settings) as retrieval:
        result = await retrieval.retriever.aretrieve(query, k, filters or None, expand_parents=parents)
        if graph:
            async with open_knowledge_graph(settings) as knowledge_graph:
                found = await GraphRetriever(knowledge_graph, index=retrieval.index).aretrieve(query, hops=2)
            _print_graph(found, console)
    ordered_by = f"reranked by {result.reranker}" if result.reranked else "fused order (no reranker configured)"
    table = Table(title=f"{escape(query)} — {ordered_by}, {result.timings_ms['total']:.0f} ms", show_lines=True)
    for column in ("#", "score", "found by", "source", "text"):
        table.add_column(column, overflow="fold")
    for rank, scored in enumerate(result, start=1):
        legs = ", ".join(f"{leg} #{r}" for leg, r in sorted(scored.legs.items()))
        text = scored.text if len(scored.text) <= 400 else scored.text[:400] + "…"
        table.add_row(str(rank), f"{scored.score:.4f}", legs, escape(scored.chunk.source), escape(text))
    console.print(table)
    if not result.chunks:
        console.print("[yellow]no results[/]: ingest documents first (agentstack ingest PATH...)")


def _print_graph(found: GraphResult, console: Console) -> None:
    if not found.entities:
        console.print("[yellow]graph:[/] no entity of the query is in the graph (agentstack ingest --graph PATH...)")
        return
    table = Table(title=f"graph paths from {', '.join(found.entities)}", show_lines=False)
    for column in ("path", "sources"):
        table.add_column(column, overflow="fold")
    for path in found.paths[:20]:
        sources = {found.chunks[s.chunk_id].source for s in path.steps if s.chunk_id in found.chunks}
        table.add_row(escape(str(path)), escape(", ".join(sorted(sources))))
    console.print(table)
