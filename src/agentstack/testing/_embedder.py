"""`HashingEmbedder`: a real, deterministic lexical embedder for graph-logic and evaluation tests.

Words (lower case) hashed into a fixed number of dimensions, counted, normalised: texts that share words are
close, texts that share none are orthogonal. It satisfies `agentstack.rag.Embedder`, so whatever embeds
(the research graph's sentence ranking, the support scorer, answer relevancy) runs its real code in
microseconds, without torch or a model download; the numbers differ from a neural embedder's, the logic not.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence

__all__ = ["HashingEmbedder"]

_WORD = re.compile(r"\w+")


class HashingEmbedder:
    """Bag of words in `dimension` hashed buckets (crc32), L2-normalised."""

    def __init__(self, dimension: int = 512) -> None:
        self._dimension = dimension

    @property
    def name(self) -> str:
        return f"hashing-{self._dimension}"

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def max_tokens(self) -> int:
        return 100_000

    def tokenize(self, text: str) -> list[int]:
        return [zlib.crc32(word.encode()) % self._dimension for word in _WORD.findall(text.lower())]

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors = []
        for text in texts:
            vector = [0.0] * self._dimension
            for bucket in self.tokenize(text):
                vector[bucket] += 1.0
            norm = math.sqrt(sum(v * v for v in vector)) or 1.0
            vectors.append([v / norm for v in vector])
        return vectors

    async def aembed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        return self.embed(texts)

    async def aembed_query(self, text: str) -> list[float]:
        return self.embed([text])[0]
