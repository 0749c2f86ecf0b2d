"""Retrieval by ids: recall@k, precision@k, MRR, nDCG@k, hit rate@k, as TREC defines them.

The functions take a ranking (ids, best first) and graded relevance (id -> grade; a grade <= 0 is not
relevant) and agree with `pytrec_eval`, the reference TREC implementation, to 1e-6
(tests/test_eval_retrieval.py): precision divides by k even when fewer were retrieved, nDCG's gain is the grade
itself with a log2(rank + 1) discount, and a repeated id counts once, at its first rank.

`gold_ranking(sample)` turns what a graph retrieved into such a ranking: a passage whose text contains a
reference context (or whose chunk id is a reference id) is that gold item.
"""

from __future__ import annotations

import math
import re
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from difflib import SequenceMatcher
from typing import TYPE_CHECKING

from agentstack.errors import ConfigError
from agentstack.eval._metric import Metric
from agentstack.eval._types import Sample, Score

if TYPE_CHECKING:
    from agentstack.eval._judge import Judge

__all__ = [
    "HitRate",
    "MRR",
    "NDCG",
    "Precision",
    "Recall",
    "gold_ranking",
    "hit_rate_at_k",
    "ndcg_at_k",
    "precision_at_k",
    "recall_at_k",
    "reciprocal_rank",
]

# A gold text cut by a chunk boundary still counts when this much of it (in characters) is in one passage.
_PARTIAL_MATCH = 0.8
_SPACE = re.compile(r"\s+")


def _ranked(ranking: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(ranking))


def _hits(ranking: Sequence[str], relevant: Mapping[str, float], k: int | None) -> int:
    return sum(1 for doc in _ranked(ranking)[:k] if relevant.get(doc, 0) > 0)


def recall_at_k(ranking: Sequence[str], relevant: Mapping[str, float], k: int | None = None) -> float:
    """Relevant ids in the top k / all relevant ids."""
    total = sum(1 for grade in relevant.values() if grade > 0)
    return _hits(ranking, relevant, k) / total if total else 0.0


def precision_at_k(ranking: Sequence[str], relevant: Mapping[str, float], k: int) -> float:
    """Relevant ids in the top k / k."""
    return _hits(ranking, relevant, k) / k


def reciprocal_rank(ranking: Sequence[str], relevant: Mapping[str, float], k: int | None = None) -> float:
    """1 / the rank of the first relevant id in the top k (0 when there is none)."""
    for rank, doc in enumerate(_ranked(ranking)[:k], 1):
        if relevant.get(doc, 0) > 0:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranking: Sequence[str], relevant: Mapping[str, float], k: int) -> float:
    """DCG of the top k (gain = grade, discount log2(rank + 1)) / the DCG of the ideal order."""
    dcg = sum(max(relevant.get(doc, 0), 0) / math.log2(rank + 1) for rank, doc in enumerate(_ranked(ranking)[:k], 1))
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)[:k]
    idcg = sum(grade / math.log2(rank + 1) for rank, grade in enumerate(ideal, 1))
    return dcg / idcg if idcg else 0.0


def hit_rate_at_k(ranking: Sequence[str], relevant: Mapping[str, float], k: int) -> float:
    """1 when a relevant id is in the top k, else 0 (TREC's success@k)."""
    return 1.0 if _hits(ranking, relevant, k) else 0.0


def gold_ranking(sample: Sample) -> tuple[list[str], dict[str, float]]:
    """(the retrieved passages as ids, gold ones renamed `gold:<n>`; the gold ids, each relevant)."""
    example = sample.example
    golds = [_normal(text) for text in example.reference_contexts]
    relevant: dict[str, float] = {f"gold:{n}": 1.0 for n in range(len(golds))}
    relevant |= {chunk_id: 1.0 for chunk_id in example.reference_context_ids}
    ranking: list[str] = []
    for context in sample.outcome.contexts:
        label = context.chunk_id or context.id
        if label not in relevant:
            text = _normal(context.text)
            matched = next((n for n, gold in enumerate(golds) if _contains(text, gold)), None)
            label = f"gold:{matched}" if matched is not None else label
        ranking.append(label)
    return ranking, relevant


def _normal(text: str) -> str:
    return _SPACE.sub(" ", text).strip().lower()


def _contains(passage: str, gold: str) -> bool:
    if gold in passage:
        return True
    match = SequenceMatcher(None, passage, gold, autojunk=False).find_longest_match()
    return match.size >= _PARTIAL_MATCH * len(gold)


class _RankMetric(Metric):
    """A retrieval metric of `gold_ranking(sample)`; not applicable to an example with no gold passages."""

    label = ""

    def __init__(self, k: int | None = None) -> None:
        if k is not None and k < 1:
            raise ConfigError(f"{self.label}@k needs k of at least 1, got {k}", fix=f"{type(self).__name__}(5)")
        self.k = k
        self.name = self.label if k is None else f"{self.label}@{k}"

    async def score(self, sample: Sample, judge: Judge | None = None) -> Score:
        ranking, relevant = gold_ranking(sample)
        if not relevant:
            return Score.not_applicable("the example names no reference contexts")
        value = self.measure(ranking, relevant)
        found = sum(1 for doc in _ranked(ranking)[: self.k] if doc in relevant)
        return Score(value, reason=f"{found} of {len(relevant)} gold passage(s) in the top {self.k or len(ranking)}")

    @abstractmethod
    def measure(self, ranking: Sequence[str], relevant: Mapping[str, float]) -> float:
        """The metric of one ranking against graded relevance."""


class Recall(_RankMetric):
    """recall@k: the share of the gold passages retrieved in the top k."""

    label = "recall"

    def measure(self, ranking: Sequence[str], relevant: Mapping[str, float]) -> float:
        return recall_at_k(ranking, relevant, self.k)


class Precision(_RankMetric):
    """precision@k: the share of the top k that is gold (divided by k, as TREC does)."""

    label = "precision"

    def __init__(self, k: int) -> None:
        super().__init__(k)

    def measure(self, ranking: Sequence[str], relevant: Mapping[str, float]) -> float:
        return precision_at_k(ranking, relevant, self.k or 1)


class MRR(_RankMetric):
    """Reciprocal rank of the first gold passage (in the top k); its mean over a dataset is the MRR."""

    label = "mrr"

    def measure(self, ranking: Sequence[str], relevant: Mapping[str, float]) -> float:
        return reciprocal_rank(ranking, relevant, self.k)


class NDCG(_RankMetric):
    """nDCG@k with the grades as gains (all 1 for text references)."""

    label = "ndcg"

    def __init__(self, k: int) -> None:
        super().__init__(k)

    def measure(self, ranking: Sequence[str], relevant: Mapping[str, float]) -> float:
        return ndcg_at_k(ranking, relevant, self.k or 1)


class HitRate(_RankMetric):
    """hit_rate@k: 1 when any gold passage is in the top k."""

    label = "hit_rate"

    def __init__(self, k: int) -> None:
        super().__init__(k)

    def measure(self, ranking: Sequence[str], relevant: Mapping[str, float]) -> float:
        return hit_rate_at_k(ranking, relevant, self.k or 1)
