"""Ingestion: load, chunk, embed in batches, and swap each document's chunks in the index.

A document's fingerprint covers its text, metadata, chunker and embedder: an unchanged document is
skipped without embedding anything; a changed one gets its new chunks written before the old ones go.
Everything that can fail on bad input (loading, chunking) happens before the first write.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from agentstack.errors import RetrievalError
from agentstack.rag._chunking import Chunker, ParentChildChunker
from agentstack.rag._embeddings import Embedder
from agentstack.rag._graph import GraphIngestor
from agentstack.rag._index import MilvusIndex
from agentstack.rag._loaders import expand_paths, load_document
from agentstack.rag._types import Chunk, Document

__all__ = ["IngestReport", "Ingestor"]


@dataclass
class IngestReport:
    """What an ingest did, by source."""

    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    chunks: int = 0  # leaves embedded and written
    seconds: float = 0.0

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds if self.seconds else 0.0


class Ingestor:
    """Writes documents into a `MilvusIndex` with one embedder and one chunker (default: parent/child)."""

    def __init__(
        self,
        index: MilvusIndex,
        embedder: Embedder,
        chunker: Chunker | None = None,
        *,
        graph: GraphIngestor | None = None,
        batch_size: int = 64,
    ) -> None:
        self.index = index
        self.embedder = embedder
        self.chunker = chunker or ParentChildChunker(embedder)
        self.graph = graph  # when set, new and changed documents are also extracted into the knowledge graph
        self.batch_size = batch_size

    @property
    def _pipeline(self) -> str:
        """Part of every fingerprint: changing the chunker (even after construction) re-ingests."""
        return f"title-headers|{self.chunker.signature}|{self.embedder.name}|{self.embedder.dimension}"

    async def aingest_paths(self, paths: Iterable[str | Path], *, progress: bool = False) -> IngestReport:
        """Files and directories; every file is read first, so one bad file stops the ingest before any write."""
        documents = [load_document(path) for path in expand_paths(paths)]
        return await self.aingest(documents, progress=progress)

    async def aingest(self, documents: Sequence[Document], *, progress: bool = False) -> IngestReport:
        report = IngestReport()
        started = time.perf_counter()
        pending: list[tuple[Document, str, list[Chunk], bool]] = []
        unique = list({d.doc_id: d for d in documents}.values())  # a source given twice: the last one wins
        for document in unique:
            if not document.text.strip():
                raise RetrievalError(f"document {document.source!r} has no text", fix="leave it out or give it text")
        indexed = await self.index.fingerprints([d.doc_id for d in unique])
        for document in unique:
            fingerprint = document.fingerprint(self._pipeline)
            current = indexed.get(document.doc_id)
            if current == fingerprint:
                report.unchanged.append(document.source)
                continue
            chunks = await self.chunker.achunk(document, fingerprint)
            pending.append((document, fingerprint, chunks, current is not None))
        leaves = sum(1 for _, _, chunks, _ in pending for c in chunks if c.kind == "leaf")
        with _progress(progress, leaves) as bar:
            task = bar.add_task("embedding", total=leaves)
            batch: list[tuple[Document, str, list[Chunk], bool]] = []
            size = 0
            for item in pending:
                batch.append(item)
                size += sum(1 for c in item[2] if c.kind == "leaf")
                if size >= self.batch_size * 4:
                    await self._write(batch, report, bar, task)
                    batch, size = [], 0
            if batch:
                await self._write(batch, report, bar, task)
        if pending:
            await self.index.flush()
        report.seconds = time.perf_counter() - started
        return report

    async def _write(
        self, batch: list[tuple[Document, str, list[Chunk], bool]], report: IngestReport, bar: Progress, task: int
    ) -> None:
        leaves = [c for _, _, chunks, _ in batch for c in chunks if c.kind == "leaf"]
        vectors: dict[str, list[float]] = {}
        for start in range(0, len(leaves), self.batch_size):
            part = leaves[start : start + self.batch_size]
            texts = [self._indexed_text(c) for c in part]
            for chunk, vector in zip(part, await self.embedder.aembed_documents(texts), strict=True):
                vectors[chunk.id] = vector
            bar.advance(task, len(part))
        rows: list[tuple[Chunk, str, list[float], str]] = []
        for _, fingerprint, chunks, _ in batch:
            children: dict[str, list[list[float]]] = {}
            for leaf in (c for c in chunks if c.kind == "leaf"):
                rows.append((leaf, fingerprint, vectors[leaf.id], self._indexed_text(leaf)))
                if leaf.parent_id:
                    children.setdefault(leaf.parent_id, []).append(vectors[leaf.id])
            for parent in (c for c in chunks if c.kind == "parent"):
                rows.append((parent, fingerprint, _mean(children.get(parent.id, []), self.embedder.dimension), ""))
        # The index write is the commit point: a crash before it leaves the old fingerprint, so the next ingest
        # redoes the whole document, graph included. Extraction can fail (a model down): it goes first.
        if self.graph is not None:
            await self.graph.aingest([c for _, _, chunks, _ in batch for c in chunks])
        # New versions first, then the old ones go: a crash in between leaves both, never neither.
        await self.index.insert(rows)
        for document, fingerprint, chunks, existed in batch:
            if existed:
                await self.index.delete_stale(document.doc_id, fingerprint)
            (report.replaced if existed else report.added).append(document.source)
            report.chunks += sum(1 for c in chunks if c.kind == "leaf")

    def _indexed_text(self, leaf: Chunk) -> str:
        """The leaf under its document's title, for both legs: a leaf cut from the middle of a document often
        does not name its subject ("it", "the method"), the title does. Left out when it would not fit the
        embedder's window (leaves are sized to fit, headers are not) or the leaf already starts with it."""
        title = str(leaf.metadata.get("title") or "").strip()
        if not title or leaf.text.startswith(title):
            return leaf.text
        text = f"{title}\n{leaf.text}"
        return text if len(self.embedder.tokenize(text)) <= self.embedder.max_tokens else leaf.text

    async def adelete(self, source: str | Path) -> None:
        """Remove a document's chunks. A `Path` is resolved as the loader did; a `str` is the source as ingested."""
        key = str(source.expanduser().resolve()) if isinstance(source, Path) else source  # noqa: ASYNC240
        doc_id = Document(source=key, text="").doc_id
        await self.index.delete_document(doc_id)
        await self.index.flush()
        if self.graph is not None:
            await self.graph.graph.delete_document(doc_id)


def _mean(vectors: list[list[float]], dimension: int) -> list[float]:
    if not vectors:  # a parent whose text had no leaf (cannot happen with llama-index's splitter; stay safe)
        return [1.0] + [0.0] * (dimension - 1)
    sums = [sum(column) for column in zip(*vectors, strict=True)]
    norm = sum(x * x for x in sums) ** 0.5 or 1.0
    return [x / norm for x in sums]


def _progress(enabled: bool, total: int) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not enabled or total == 0,
        transient=True,
    )
