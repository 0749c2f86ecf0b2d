"""The values that flow through ingestion and retrieval."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Chunk", "Document", "RetrievalResult", "ScoredChunk", "content_id"]

Leg = Literal["dense", "bm25"]


def content_id(*parts: str) -> str:
    """A stable 32-hex-digit id of some strings (ids and hashes in the index)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class Document:
    """A loaded source: `source` identifies it across re-ingestion (a resolved path, a URL, a corpus id)."""

    source: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def doc_id(self) -> str:
        return content_id("doc", self.source)

    def fingerprint(self, pipeline: str) -> str:
        """Changes when the text, the metadata or the chunking/embedding pipeline changes: then re-ingest."""
        return content_id(self.text, json.dumps(self.metadata, sort_keys=True, default=str), pipeline)


@dataclass(frozen=True)
class Chunk:
    """A piece of a document. Leaves are searched; parents hold the wider context of their leaves."""

    id: str
    doc_id: str
    source: str
    text: str
    kind: Literal["leaf", "parent", "meta"]
    position: int
    parent_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScoredChunk:
    """A retrieved chunk with where it came from and every score it got on the way."""

    chunk: Chunk
    fused_score: float
    legs: dict[Leg, int]  # leg -> 1-based rank in that leg's candidates
    dense_score: float | None = None
    bm25_score: float | None = None
    rerank_score: float | None = None
    children: list[Chunk] = field(default_factory=list)  # with parent expansion: the matching leaves

    @property
    def text(self) -> str:
        return self.chunk.text

    @property
    def score(self) -> float:
        """The score that ordered the final list: the reranker's when there was one."""
        return self.rerank_score if self.rerank_score is not None else self.fused_score


@dataclass
class RetrievalResult:
    """The ranked chunks, and whether a reranker ordered them (when not, the fused order stands)."""

    query: str
    chunks: list[ScoredChunk]
    reranked: bool
    reranker: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    def __iter__(self) -> Iterator[ScoredChunk]:
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> ScoredChunk:
        return self.chunks[index]
