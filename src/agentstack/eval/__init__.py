"""Evaluation: datasets, metrics (retrieval, answer, judged), experiments stored in Postgres, CI gates."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentstack._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "CitationValidity": "agentstack.eval._metrics_answer",
    "CitesGold": "agentstack.eval._metrics_answer",
    "Context": "agentstack.eval._types",
    "Dataset": "agentstack.eval._dataset",
    "Example": "agentstack.eval._dataset",
    "ExactMatch": "agentstack.eval._metrics_answer",
    "HitRate": "agentstack.eval._metrics_retrieval",
    "MRR": "agentstack.eval._metrics_retrieval",
    "Metric": "agentstack.eval._metric",
    "NDCG": "agentstack.eval._metrics_retrieval",
    "Outcome": "agentstack.eval._types",
    "Precision": "agentstack.eval._metrics_retrieval",
    "Recall": "agentstack.eval._metrics_retrieval",
    "Sample": "agentstack.eval._types",
    "Score": "agentstack.eval._types",
    "TokenF1": "agentstack.eval._metrics_answer",
}
__all__ = [
    "CitationValidity",
    "CitesGold",
    "Context",
    "Dataset",
    "Example",
    "ExactMatch",
    "HitRate",
    "MRR",
    "Metric",
    "NDCG",
    "Outcome",
    "Precision",
    "Recall",
    "Sample",
    "Score",
    "TokenF1",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)

if TYPE_CHECKING:
    from agentstack.eval._dataset import Dataset, Example
    from agentstack.eval._metric import Metric
    from agentstack.eval._metrics_answer import CitationValidity, CitesGold, ExactMatch, TokenF1
    from agentstack.eval._metrics_retrieval import MRR, NDCG, HitRate, Precision, Recall
    from agentstack.eval._types import Context, Outcome, Sample, Score
