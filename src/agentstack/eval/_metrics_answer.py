"""Answer metrics that need no judge: exact match and token F1 (SQuAD's), and citations.

SQuAD normalisation: lower case, punctuation and the articles a/an/the removed, whitespace collapsed. Token F1
is the harmonic mean of the precision and recall of the normalised answer's tokens against the reference's.
"""

from __future__ import annotations

import re
import string
from abc import abstractmethod
from collections import Counter
from typing import TYPE_CHECKING

from agentstack.eval._metric import Metric
from agentstack.eval._metrics_retrieval import gold_ranking
from agentstack.eval._types import Sample, Score

if TYPE_CHECKING:
    from agentstack.eval._judge import Judge

__all__ = ["CitationValidity", "CitesGold", "ExactMatch", "TokenF1", "exact_match", "normalize_answer", "token_f1"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def exact_match(answer: str, reference: str) -> float:
    return float(normalize_answer(answer) == normalize_answer(reference))


def token_f1(answer: str, reference: str) -> float:
    predicted, gold = normalize_answer(answer).split(), normalize_answer(reference).split()
    if not predicted or not gold:
        return float(predicted == gold)
    same = sum((Counter(predicted) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(gold)
    return 2 * precision * recall / (precision + recall)


class _ReferenceMetric(Metric):
    async def score(self, sample: Sample, judge: Judge | None = None) -> Score:
        if sample.example.reference is None:
            return Score.not_applicable("the example has no reference answer")
        return Score(self.compare(sample.outcome.answer, sample.example.reference))

    @abstractmethod
    def compare(self, answer: str, reference: str) -> float:
        """The score of `answer` against `reference`."""


class ExactMatch(_ReferenceMetric):
    """1 when the answer equals the reference after SQuAD normalisation."""

    name = "exact_match"

    def compare(self, answer: str, reference: str) -> float:
        return exact_match(answer, reference)


class TokenF1(_ReferenceMetric):
    """SQuAD token F1 of the answer against the reference."""

    name = "token_f1"

    def compare(self, answer: str, reference: str) -> float:
        return token_f1(answer, reference)


class CitationValidity(Metric):
    """The share of the answer's citations that name a passage the run retrieved (invented ids count against)."""

    name = "citation_validity"

    async def score(self, sample: Sample, judge: Judge | None = None) -> Score:
        outcome = sample.outcome
        retrieved = {c.id for c in outcome.contexts}
        cited = [*outcome.cited, *outcome.removed_citations]
        if not cited:
            return Score.not_applicable("the answer cites nothing")
        valid = [i for i in cited if i in retrieved]
        return Score(len(valid) / len(cited), reason=f"{len(valid)} of {len(cited)} citation(s) were retrieved")


class CitesGold(Metric):
    """1 when the answer cites at least one gold passage (one that contains a reference context)."""

    name = "cites_gold"

    async def score(self, sample: Sample, judge: Judge | None = None) -> Score:
        ranking, relevant = gold_ranking(sample)
        if not relevant:
            return Score.not_applicable("the example names no reference contexts")
        labels = {c.id: label for c, label in zip(sample.outcome.contexts, ranking, strict=True)}
        gold = [i for i in sample.outcome.cited if labels.get(i) in relevant]
        if gold:
            return Score(1.0, reason=f"cites gold passage(s) {', '.join(gold)}")
        return Score(0.0, reason="cites no gold passage" if sample.outcome.cited else "cites nothing")
