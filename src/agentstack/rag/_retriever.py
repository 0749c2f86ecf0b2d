"""`HybridRetriever`: dense + BM25 candidates, reciprocal rank fusion, optional rerank, parent expansion.

The two legs are separate Milvus searches in flight at once, fused here with the same formula as
Milvus's `RRFRanker(60)` (score = sum over legs of 1 / (60 + rank)). One `hybrid_search` would fuse in
the engine but return only the fused score; doing the fusion here costs nothing measurable (a few
hundred additions) and gives every result its provenance: which leg found it, at which rank, with
which raw score. That is what makes a bad answer debuggable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field

from agentstack.errors import RetrievalError
from agentstack.rag._embeddings import Embedder
from agentstack.rag._index import FilterValue, LegHit, MilvusIndex, filter_expression
from agentstack.rag._rerank import Reranker
from agentstack.rag._types import Leg, RetrievalResult, ScoredChunk

__all__ = ["Candidate", "HybridRetriever", "merge_into_parents", "reciprocal_rank_fusion"]

RRF_K = 60


@dataclass
class Candidate:
    """A fused candidate before its text is fetched: only the final few are ever read back."""

    id: str
    parent_id: str | None
    fused_score: float = 0.0
    legs: dict[Leg, int] = field(default_factory=dict)
    dense_score: float | None = None
    bm25_score: float | None = None
    children: list[str] = field(default_factory=list)


def reciprocal_rank_fusion(legs: Mapping[Leg, list[LegHit]], k: int = RRF_K) -> list[Candidate]:
    """Fuse ranked lists: each chunk scores sum(1 / (k + rank)) over the legs that found it."""
    fused: dict[str, Candidate] = {}
    for leg, hits in legs.items():
        for rank, hit in enumerate(hits, start=1):
            candidate = fused.get(hit.id)
            if candidate is None:
                candidate = fused[hit.id] = Candidate(hit.id, hit.parent_id)
            candidate.fused_score += 1.0 / (k + rank)
            candidate.legs[leg] = rank
            if leg == "dense":
                candidate.dense_score = hit.score
            else:
                candidate.bm25_score = hit.score
    return sorted(fused.values(), key=lambda c: (-c.fused_score, min(c.legs.values())))


def merge_into_parents(ranked: list[Candidate]) -> list[Candidate]:
    """Leaves grouped under their parent, which takes its best leaf's score and ranks: expansion adds
    context without reordering (summing leaf scores was tried: it favours long documents, nDCG fell)."""
    merged: dict[str, Candidate] = {}
    for leaf in ranked:
        if leaf.parent_id is None:  # a leaf without a parent (semantic chunks) stands for itself
            merged[leaf.id] = leaf
            continue
        parent = merged.get(leaf.parent_id)
        if parent is None:
            parent = merged[leaf.parent_id] = Candidate(leaf.parent_id, None, leaf.fused_score)
        parent.children.append(leaf.id)
        for leg, rank in leaf.legs.items():
            parent.legs[leg] = min(rank, parent.legs.get(leg, rank))
        parent.dense_score = max(filter(None, (parent.dense_score, leaf.dense_score)), default=None)
        parent.bm25_score = max(filter(None, (parent.bm25_score, leaf.bm25_score)), default=None)
    return list(merged.values())  # ranked leaves arrive best first, so parents already are


@dataclass
class HybridRetriever:
    """Retrieval over a `MilvusIndex`: pass the index, the embedder that built it, and optionally a reranker.

    `candidates` is each leg's limit (larger than k, so fusion has something to fuse); the reranker sees
    the top `rerank_candidates` fused chunks.
    """

    index: MilvusIndex
    embedder: Embedder
    reranker: Reranker | None = None
    candidates: int = 100
    rerank_candidates: int = 50

    async def aretrieve(
        self,
        query: str,
        k: int = 10,
        filters: Mapping[str, FilterValue] | None = None,
        *,
        expand_parents: bool = False,
        legs: tuple[Leg, ...] = ("dense", "bm25"),
    ) -> RetrievalResult:
        """The k best chunks for `query`; `expand_parents` merges leaves into their parent passages.

        With expansion, each parent passage takes the place of its best leaf and lists the matching leaves
        in `children`.
        """
        if k < 1:
            raise RetrievalError(f"k={k}: ask for at least one result", fix="pass k >= 1")
        if not set(legs) <= {"dense", "bm25"} or not legs:
            raise RetrievalError(f"legs={legs!r}: choose from 'dense' and 'bm25'", fix='legs=("dense", "bm25")')
        timings: dict[str, float] = {}
        started = time.perf_counter()
        expression = filter_expression(filters)
        if not query.strip():
            raise RetrievalError("the query is empty", fix="pass the text to search for")
        candidates = max(self.candidates, k)
        # Embed first, then both legs at once. Starting BM25 during the embedding was tried: Milvus Lite runs
        # in this process, its Python work holds the GIL, and the embedding tripled (p50 72 -> 84 ms).
        vector = await self.embedder.aembed_query(query) if "dense" in legs else None
        timings["embed"] = _ms(started)
        mark = time.perf_counter()
        jobs: dict[Leg, Awaitable[list[LegHit]]] = {}
        if vector is not None:
            jobs["dense"] = self.index.search_dense(vector, candidates=candidates, expression=expression)
        if "bm25" in legs:
            jobs["bm25"] = self.index.search_bm25(query, candidates=candidates, expression=expression)
        timed = [_timed(leg, job, timings) for leg, job in jobs.items()]  # each leg's own time, run together
        found: dict[Leg, list[LegHit]] = dict(zip(jobs, await asyncio.gather(*timed), strict=True))
        timings["search"] = _ms(mark)
        ranked = reciprocal_rank_fusion(found)
        if expand_parents:
            ranked = merge_into_parents(ranked)
        head = ranked[: max(self.rerank_candidates, k) if self.reranker is not None else k]
        mark = time.perf_counter()
        chunks = await self.index.get(sorted({c.id for c in head} | {i for c in head for i in c.children}))
        timings["fetch"] = _ms(mark)
        scored = [
            ScoredChunk(
                chunk=chunks[c.id],
                fused_score=c.fused_score,
                legs=c.legs,
                dense_score=c.dense_score,
                bm25_score=c.bm25_score,
                children=[chunks[i] for i in c.children if i in chunks],
            )
            for c in head
            if c.id in chunks  # deleted between search and fetch: drop it
        ]
        reranked = False
        if self.reranker is not None and scored:
            mark = time.perf_counter()
            order = await self.reranker.arerank(query, [s.text for s in scored], top_n=k)
            for index, score in order:
                scored[index].rerank_score = score
            scored = [scored[index] for index, _ in order]
            reranked = True
            timings["rerank"] = _ms(mark)
        timings["total"] = _ms(started)
        return RetrievalResult(
            query=query,
            chunks=scored[:k],
            reranked=reranked,
            reranker=self.reranker.name if self.reranker is not None else None,
            timings_ms=timings,
        )


async def _timed(leg: str, job: Awaitable[list[LegHit]], timings: dict[str, float]) -> list[LegHit]:
    started = time.perf_counter()
    try:
        return await job
    finally:
        timings[leg] = _ms(started)


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 2)
