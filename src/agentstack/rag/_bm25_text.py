"""The text the BM25 leg indexes and queries: lowercased word tokens, English stop words out, stemmed.

Milvus Lite's analyzer only splits and lowercases, so "treatments" would never match "treatment".
Stemming here, on both sides, makes recall the same on Milvus Lite, a Milvus server and a cluster,
whatever analyzers they offer; the original text is stored untouched next to it.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from agentstack._optional import require

__all__ = ["bm25_text"]

_WORD = re.compile(r"\w+", re.UNICODE)
# Lucene's English stop set: frequent enough that BM25's idf gives them ~0 anyway; dropping them shrinks the index.
STOP_WORDS = frozenset(
    (
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "if",
        "in",
        "into",
        "is",
        "it",
        "no",
        "not",
        "of",
        "on",
        "or",
        "such",
        "that",
        "the",
        "their",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "was",
        "will",
        "with",
    )
)


@lru_cache(maxsize=1)
def _stemmer() -> Any:
    stemmer = require("Stemmer", extra="local", feature="BM25 stemming").Stemmer("english")
    stemmer.maxCacheSize = 100_000
    return stemmer


def bm25_text(text: str) -> str:
    """Space-separated stems of `text`, for the sparse (BM25) field and for BM25 queries."""
    words = [w for w in _WORD.findall(text.lower()) if w not in STOP_WORDS]
    return " ".join(_stemmer().stemWords(words))
