"""`agentstack ingest` and `agentstack search`: the hybrid index from the command line."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agentstack.config import Settings
from agentstack.errors import UserError
from agentstack.rag import ParentChildChunker, SemanticChunker, open_retrieval

__all__ = ["ingest_paths", "parse_filters", "search_index"]


def parse_filters(pairs: list[str]) -> dict[str, str | list[str]]:
    """`key=value` pairs; a key given twice matches any of its values."""
    filters: dict[str, list[str]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"filter {pair!r} is not key=value", fix="for example --filter file_type=md")
        filters.setdefault(key, []).append(value)
    return {k: v[0] if len(v) == 1 else v for k, v in filters.items()}


async def ingest_paths(settings: Settings, paths: list[Path], *, semantic: bool, console: Console) -> None:
    async with open_retrieval(settings) as retrieval:
        if semantic:
            retrieval.ingestor.chunker = SemanticChunker(retrieval.embedder)
        else:
            retrieval.ingestor.chunker = ParentChildChunker(retrieval.embedder)
        report = await retrieval.ingestor.aingest_paths(paths, progress=console.is_terminal)
        leaves = await retrieval.index.count("leaf")
    console.print(
        f"[green]ingested[/] {len(report.added)} new, {len(report.replaced)} changed, "
        f"{len(report.unchanged)} unchanged document(s): {report.chunks} chunks embedded in {report.seconds:.1f} s "
        f"({report.chunks_per_s:.1f} chunks/s); the index holds {leaves} chunks"
    )


async def search_index(
    settings: Settings, query: str, *, k: int, filters: dict[str, str | list[str]], parents: bool, console: Console
) -> None:
    async with open_retrieval(settings) as retrieval:
        result = await retrieval.retriever.aretrieve(query, k, filters or None, expand_parents=parents)
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
