"""Metrics by name, as the CLI and gates spell them: `recall@5`, `ndcg@10`, `mrr`, `faithfulness`...

`--judge none` scores what needs no judge; `embedder` adds faithfulness and context recall checked by the
embedder's support scorer (free, deterministic); `model` adds the metrics that ask the judge model and checks
support with it too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from agentstack.errors import ConfigError
from agentstack.eval._metric import Metric
from agentstack.eval._metrics_answer import CitationValidity, CitesGold, ExactMatch, TokenF1
from agentstack.eval._metrics_judged import AnswerRelevancy, ContextPrecision, ContextRecall, Faithfulness
from agentstack.eval._metrics_retrieval import MRR, NDCG, HitRate, Precision, Recall

__all__ = ["JudgeKind", "default_metrics", "metric_from_name"]

JudgeKind = Literal["none", "embedder", "model"]

_AT_K: dict[str, Callable[[int], Metric]] = {
    "recall": Recall,
    "precision": Precision,
    "ndcg": NDCG,
    "hit_rate": HitRate,
    "mrr": MRR,
    "context_precision": ContextPrecision,
}
_PLAIN: dict[str, Callable[[], Metric]] = {
    "mrr": MRR,
    "exact_match": ExactMatch,
    "token_f1": TokenF1,
    "citation_validity": CitationValidity,
    "cites_gold": CitesGold,
    "faithfulness": Faithfulness,
    "answer_relevancy": AnswerRelevancy,
    "context_recall": ContextRecall,
    "context_precision": ContextPrecision,
}
_DEFAULTS: dict[JudgeKind, tuple[str, ...]] = {
    "none": ("recall@5", "mrr", "ndcg@5", "token_f1", "citation_validity", "cites_gold"),
    "embedder": ("faithfulness", "context_recall"),
    "model": ("answer_relevancy", "context_precision"),
}


def metric_from_name(name: str) -> Metric:
    """`recall@5` -> Recall(5), `faithfulness` -> Faithfulness()..."""
    base, at, k = name.strip().partition("@")
    if at:
        if base in _AT_K and k.isdigit() and int(k) >= 1:
            return _AT_K[base](int(k))
    elif base in _PLAIN:
        return _PLAIN[base]()
    known = sorted({*(f"{m}@K" for m in _AT_K), *_PLAIN})
    raise ConfigError(f"there is no metric {name!r}", fix=f"use one of: {', '.join(known)}")


def default_metrics(judge: JudgeKind) -> list[Metric]:
    """What `agentstack eval run` scores with this kind of judge."""
    kinds: Sequence[JudgeKind] = {"none": ["none"], "embedder": ["none", "embedder"]}.get(
        judge, ["none", "embedder", "model"]
    )
    return [metric_from_name(name) for kind in kinds for name in _DEFAULTS[kind]]
