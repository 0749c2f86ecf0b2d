"""`HybridRetriever`: dense + BM25 candidates, reciprocal rank fusion, optional rerank, parent expansion.

The two legs are separate Milvus searches in flight at once, fused here with the same formula as
Milvus's `RRFRanker(60)` (score = sum over legs of 1 / (60 + rank)). One `hybrid_search` would fuse in
the engine but return only the fused score; doing the fusion here costs nothing measurable (a few
hundred additions) and gives every result its provenance: which leg found it, at which rank, with
which raw score. That is what makes a bad answer debuggable.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from agentstack.errors import RetrievalError
from agentstack.rag._embeddings import Embedder
from agentstack.rag._index import FilterValue, LegHit, MilvusIndex, filter_expression
from agentstack.rag._rerank import Reranker
from agentstack.rag._types import Leg, RetrievalResult, ScoredChunk

__all__ = ["HybridRetriever", "reciprocal_rank_fusion"]

RRF_K = 60


def reciprocal_rank_fusion(legs: Mapping[Leg, list[LegHit]], k: int = RRF_K) -> list[ScoredChunk]:
    """Fuse ranked lists: each chunk scores sum(1 / (k + rank)) over the legs that found it."""
    fused: dict[str, ScoredChunk] = {}
    for leg, hits in legs.items():
        for rank, hit in enumerate(hits, start=1):
            scored = fused.get(hit.chunk.id)
            if scored is None:
                scored = fused[hit.chunk.id] = ScoredChunk(chunk=hit.chunk, fused_score=0.0, legs={})
            scored.fused_score += 1.0 / (k + rank)
            scored.legs[leg] = rank
            if leg == "dense":
                scored.dense_score = hit.score
            else:
                scored.bm25_score = hit.score
    return sorted(fused.values(), key=lambda s: (-s.fused_score, min(s.legs.values())))


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

        With expansion, a parent scores the sum of its leaves' scores (a passage several of whose pieces
        match outranks one with a single match) and lists those leaves in `children`.
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
        vector = await self.embedder.aembed_query(query) if "dense" in legs else None
        timings["embed"] = _ms(started)
        mark = time.perf_counter()
        dense, bm25 = await self.index.search_legs(
            query if "bm25" in legs else None, vector, candidates=max(self.candidates, k), expression=expression
        )
        timings["search"] = _ms(mark)
        found: dict[Leg, list[LegHit]] = {}
        if "dense" in legs:
            found["dense"] = dense
        if "bm25" in legs:
            found["bm25"] = bm25
        ranked = reciprocal_rank_fusion(found)
        if expand_parents:
            mark = time.perf_counter()
            ranked = await self._expand(ranked)
            timings["expand"] = _ms(mark)
        reranked = False
        if self.reranker is not None and ranked:
            mark = time.perf_counter()
            head = ranked[: max(self.rerank_candidates, k)]
            order = await self.reranker.arerank(query, [s.text for s in head], top_n=k)
            for index, score in order:
                head[index].rerank_score = score
            ranked = [head[index] for index, _ in order]
            reranked = True
            timings["rerank"] = _ms(mark)
        timings["total"] = _ms(started)
        return RetrievalResult(
            query=query,
            chunks=ranked[:k],
            reranked=reranked,
            reranker=self.reranker.name if self.reranker is not None else None,
            timings_ms=timings,
        )

    async def _expand(self, ranked: list[ScoredChunk]) -> list[ScoredChunk]:
        parent_ids = {s.chunk.parent_id for s in ranked if s.chunk.parent_id}
        parents = await self.index.get(sorted(parent_ids))  # type: ignore[arg-type]
        merged: dict[str, ScoredChunk] = {}
        for leaf in ranked:
            parent = parents.get(leaf.chunk.parent_id or "")
            if parent is None:  # a leaf without a parent (semantic chunks) stands for itself
                merged[leaf.chunk.id] = leaf
                continue
            entry = merged.get(parent.id)
            if entry is None:
                entry = merged[parent.id] = ScoredChunk(chunk=parent, fused_score=0.0, legs={}, parent=parent)
            entry.fused_score += leaf.fused_score
            entry.children.append(leaf.chunk)
            for leg, rank in leaf.legs.items():
                entry.legs[leg] = min(rank, entry.legs.get(leg, rank))
            entry.dense_score = max(filter(None, (entry.dense_score, leaf.dense_score)), default=None)
            entry.bm25_score = max(filter(None, (entry.bm25_score, leaf.bm25_score)), default=None)
        return sorted(merged.values(), key=lambda s: -s.fused_score)


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 2)
