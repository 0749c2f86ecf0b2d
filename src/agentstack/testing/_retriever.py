"""`InMemoryRetriever`: a real, deterministic lexical retriever over given texts, for graph-logic tests.

It answers `aretrieve(query, k, filters)` with what `HybridRetriever` returns (a `RetrievalResult` of
`ScoredChunk`s: `.chunk.id`, `.chunk.source`, `.text`, `.score`, iteration), scored by BM25 over the
texts' words, so a graph searching it behaves as on the real index without an embedder, Milvus or a
temporary directory: a test's setup takes microseconds instead of seconds. A query that shares no word
with a text does not find it (the real index's dense leg would find something for any query).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from agentstack.errors import RetrievalError
from agentstack.rag._types import Chunk, Document, RetrievalResult, ScoredChunk

__all__ = ["InMemoryRetriever"]

_WORD = re.compile(r"\w+")
_K1, _B = 1.2, 0.75  # BM25's usual constants


class InMemoryRetriever:
    """One leaf chunk per document, ranked by BM25; `filters` match document metadata like the real index's."""

    def __init__(self, documents: Iterable[Document]) -> None:
        self.chunks = [
            Chunk(
                id=f"{doc.source}#0",
                doc_id=doc.doc_id,
                source=doc.source,
                text=doc.text,
                kind="leaf",
                position=0,
                metadata=dict(doc.metadata),
            )
            for doc in documents
        ]
        self._terms = [Counter(_words(c.text)) for c in self.chunks]
        self._average_length = sum(sum(t.values()) for t in self._terms) / max(1, len(self._terms))
        self.queries: list[str] = []  # every query asked, in order, for assertions

    @classmethod
    def from_texts(cls, texts: Mapping[str, str]) -> InMemoryRetriever:
        """From `{source: text}`."""
        return cls(Document(source=source, text=text) for source, text in texts.items())

    async def aretrieve(
        self, query: str, k: int = 10, filters: Mapping[str, Any] | None = None, *, expand_parents: bool = False
    ) -> RetrievalResult:
        """The `k` best chunks sharing a word with `query` (best first; ties in the order given).

        Each chunk is a whole document with no parent, so `expand_parents` changes nothing, as on the real
        index for chunks without a parent."""
        self.queries.append(query)
        wanted = set(_words(query))
        scored = [
            (self._bm25(wanted, i), i) for i, chunk in enumerate(self.chunks) if _matches(chunk.metadata, filters or {})
        ]
        ranked = sorted(((s, i) for s, i in scored if s > 0), key=lambda pair: (-pair[0], pair[1]))[:k]
        hits = [
            ScoredChunk(chunk=self.chunks[i], fused_score=score, legs={"bm25": rank}, bm25_score=score)
            for rank, (score, i) in enumerate(ranked, start=1)
        ]
        return RetrievalResult(query=query, chunks=hits, reranked=False)

    def _bm25(self, words: set[str], index: int) -> float:
        terms = self._terms[index]
        length = sum(terms.values())
        score = 0.0
        for word in words & terms.keys():
            having = sum(1 for t in self._terms if word in t)
            idf = math.log(1 + (len(self._terms) - having + 0.5) / (having + 0.5))
            tf = terms[word]
            score += idf * tf * (_K1 + 1) / (tf + _K1 * (1 - _B + _B * length / (self._average_length or 1)))
        return score


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _matches(metadata: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    """Equality, or membership for a list value: the real index's filter semantics."""
    for key, value in filters.items():
        if not key.replace("_", "").isalnum():
            raise RetrievalError(f"filter key {key!r} is not a plain name", fix="use letters, digits and _ only")
        if isinstance(value, Sequence) and not isinstance(value, str):
            if metadata.get(key) not in value:
                return False
        elif metadata.get(key) != value:
            return False
    return True
